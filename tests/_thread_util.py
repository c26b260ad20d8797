"""Helpers for the thread tests: inbound messages and invariant checks."""

from __future__ import annotations

from datetime import datetime, timezone

import convthread as ct
from convthread.ports import Store
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


def check_store_invariants(store: Store) -> None:
    """One live thread per customer and topic; NS_OPEN names exactly the live threads;
    the query index holds each thread once, with its current status; seqs gap-free."""
    states = [
        core.decode_thread_state(it.value) for _k, it in store.scan(core.NS_THREAD, limit=10**6)
    ]
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
    active = [k for k, _ in store.scan(core.NS_TACTIVE, limit=10**6)]
    assert sorted(active) == sorted(core.activity_key(s) for s in states)
