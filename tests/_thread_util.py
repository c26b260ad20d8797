"""Helpers for the thread tests: inbound messages and invariant checks."""

from __future__ import annotations

from datetime import datetime, timezone

import convthread as ct
from convthread._heads import state_of
from convthread.domain.thread import ThreadState
from convthread.ports import HeadQuery, Store, ThreadHead
from convthread.service import _core as core

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def who(n: int | str = 1) -> ct.SenderIdentifier:
    """An asserted phone number per customer number (or a raw handle string)."""
    if isinstance(n, str):
        return ct.SenderIdentifier(ct.handle("twitter", n), ct.Trust.ASSERTED)
    return ct.SenderIdentifier(ct.phone(f"+1415555{n:04d}"), ct.Trust.ASSERTED)


def msg(
    pid: str,
    *,
    customer: int | str = 1,
    channel: str = "sms",
    text: str = "hi",
    at: datetime = T0,
    **kw: object,
) -> ct.Inbound:
    return ct.Inbound(
        channel=channel,
        provider_message_id=pid,
        sender=(who(customer),),
        content=ct.Content(text=text),
        sent_at=at,
        **kw,  # type: ignore[arg-type]
    )


def all_heads(store: Store, **filters: object) -> list[ThreadHead]:
    """Every thread head of the service's tenant (matching ``filters``, HeadQuery fields)."""
    return store.find_heads(HeadQuery(tenant=core.TENANT, limit=10**6, **filters))  # type: ignore[arg-type]


def all_states(store: Store) -> list[ThreadState]:
    """The state of every thread in ``store``."""
    return [state_of(h) for h in all_heads(store)]


def check_store_invariants(store: Store) -> None:
    """One live thread per customer and topic; NS_OPEN names exactly the live threads;
    the status index holds each thread once, with its current status; seqs gap-free."""
    states = all_states(store)
    pointers = {k: it.value.decode() for k, it in store.scan(core.NS_OPEN, limit=10**6)}
    live: dict[str, str] = {}
    for s in states:
        if s.is_open:
            key = core.open_key(s.customer_id, s.topic)
            assert key not in live, f"two live threads for {key}: {live[key]} and {s.id}"
            live[key] = s.id
        assert store.version(s.id) == s.version, f"{s.id}: cached state behind its stream"
        assert [r.seq for r in store.read(s.id)] == list(range(1, s.version + 1))
    assert pointers == live, f"open pointers {pointers} != live threads {live}"
    by_status = sorted(
        (h.status, h.thread_id)
        for status in ct.ThreadStatus
        for h in all_heads(store, statuses=(status.value,))
    )
    assert by_status == sorted((s.status.value, s.id) for s in states)
