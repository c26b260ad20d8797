"""Ingest in one pass: load once, decide in the domain, write one batch.

A steady-state message on a store that offers ``get_multi_heads`` makes one read call
and one commit; an automatic merge is committed in the same batch as the message that
caused it; :func:`~convthread.domain.ingest.decide_ingest` is pure and says what the
batch writes, or which thread it needs loaded first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import convthread as ct
from convthread.domain.continuity import Choice, ContinuityContext, ContinuityPolicy
from convthread.domain.events import Decision, MessageReceived, ThreadStarted, ThreadStatus
from convthread.domain.ingest import (
    ANY_VERSION,
    NEW,
    IngestContext,
    IngestDecision,
    NeedMore,
    PointerWrite,
    decide_ingest,
)
from convthread.domain.thread import ThreadState, evolve, start_state
from convthread.ports import Batch, Item, ThreadHead
from convthread.stores import MemoryStore, SQLiteStore

from .test_load import MultiGetStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
READS = ("get", "get_many", "get_multi", "get_heads", "find_heads", "read", "version", "scan")


class Counting:
    """Counts the calls made to a store, passing each through (``get_multi_heads`` only
    where the wrapped store has it)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            return attr(*args)

        return call


class CountingMulti(Counting):
    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        self.calls["get_multi_heads"] += 1
        result: tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]
        result = self.inner.get_multi_heads(keys, tenant, thread_ids)
        return result


def sms(i: int, customer: int, minutes: int = 0) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=f"m{i}",
        sender=(ct.SenderIdentifier(ct.phone(f"+1415555{customer:04d}"), ct.Trust.ASSERTED),),
        content=ct.Content(text=f"message {i}"),
        sent_at=T0 + timedelta(minutes=minutes),
    )


def test_a_steady_state_message_makes_one_read_and_one_commit_on_sqlite(tmp_path: Path) -> None:
    store = CountingMulti(SQLiteStore(tmp_path / "one.db"))
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    for i in range(6):
        convs.ingest(sms(i, i % 3))
    store.calls.clear()
    r = convs.ingest(sms(6, 0, minutes=1))
    assert not r.new_thread and not r.new_customer
    assert store.calls == Counter(get_multi_heads=1, commit=1)
    convs.close()


def test_a_steady_state_message_makes_one_read_and_one_commit_through_the_kv_adapter() -> None:
    """The old protocol (a key-value store offering get_multi) behind the adapter."""
    store = MultiGetStore()
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    for i in range(4):
        convs.ingest(sms(i, i % 2))
    store.calls.clear()
    convs.ingest(sms(4, 1, minutes=1))
    assert store.calls == Counter(get_multi=1, commit=1)


def test_a_batch_of_returning_customers_makes_one_read_and_one_commit(tmp_path: Path) -> None:
    store = CountingMulti(SQLiteStore(tmp_path / "many.db"))
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    convs.ingest_many([sms(i, i % 10) for i in range(10)])
    store.calls.clear()
    results = convs.ingest_many([sms(i, i % 10, minutes=1) for i in range(10, 110)])
    assert len(results) == 100 and not any(r.new_thread for r in results)
    assert store.calls == Counter(get_multi_heads=1, commit=1)
    convs.close()


def _merge_case(convs: ct.Conversations) -> ct.IngestResult:
    phone = ct.phone("+14155550001")
    mail = ct.email("ann@example.com")
    convs.ingest(
        ct.Inbound(
            channel="sms",
            provider_message_id="a",
            sender=(ct.SenderIdentifier(phone, ct.Trust.VERIFIED),),
            sent_at=T0,
        )
    )
    convs.ingest(
        ct.Inbound(
            channel="email",
            provider_message_id="b",
            sender=(ct.SenderIdentifier(mail, ct.Trust.VERIFIED),),
            sent_at=T0,
        )
    )
    both = ct.Inbound(
        channel="webchat",
        provider_message_id="c",
        sender=(
            ct.SenderIdentifier(phone, ct.Trust.VERIFIED),
            ct.SenderIdentifier(mail, ct.Trust.VERIFIED),
        ),
        sent_at=T0 + timedelta(minutes=1),
    )
    return convs.ingest(both)


class Commits(MemoryStore):
    """The memory store, keeping every batch it commits."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []

    def commit(self, batch: Batch) -> None:
        super().commit(batch)
        self.batches.append(batch)


def test_an_automatic_merge_is_committed_with_its_message_in_one_batch() -> None:
    store = Commits()
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    before = len(store.batches)
    phone = ct.phone("+14155550001")
    mail = ct.email("ann@example.com")
    first = _merge_case(convs)
    assert "merged" in first.resolution.reason
    assert convs.find_customer(phone) == convs.find_customer(mail) == first.customer_id
    # two plain messages, then the merging one: three commits in all
    batches = store.batches[before:]
    assert len(batches) == 3
    last = batches[-1]
    streams = {a.stream for a in last.appends}
    # the message's thread, both customers' streams (the merge) in that one batch
    assert first.thread_id in streams
    assert len([s for s in streams if s.startswith("cu")]) >= 2


def test_an_automatic_merge_comes_out_the_same_in_one_batch_on_every_store(
    tmp_path: Path,
) -> None:
    results = []
    for store in (MemoryStore(), SQLiteStore(tmp_path / "m.db"), MultiGetStore()):
        convs = ct.Conversations(store, clock=ct.ManualClock(T0), ids=ct.SequentialIds())
        r = _merge_case(convs)
        results.append((r, convs.customer(r.customer_id)))
        convs.close()
    assert results[0] == results[1] == results[2]


# --------------------------------------------------------------------------- decide_ingest


def _ids() -> Any:
    made: list[str] = []

    def new_id(prefix: str) -> str:
        made.append(prefix)
        return f"{prefix}_{len(made)}"

    new_id.made = made  # type: ignore[attr-defined]
    return new_id


def _thread(tid: str = "th_a", customer: str = "cu_1", at: datetime = T0) -> ThreadState:
    started = ThreadStarted(
        at=at,
        customer_id=customer,
        channel="sms",
        topic=None,
        predecessor=None,
        decision=Decision.text("test", "made"),
    )
    return start_state(tid, started)


def _event(at: datetime) -> MessageReceived:
    return MessageReceived(
        at=at,
        channel="sms",
        provider_message_id="p1",
        idempotency_key="sms|p1",
        fingerprint="f",
        sender=ct.SenderIdentifier(ct.phone("+14155550001"), ct.Trust.ASSERTED),
        content=ct.Content(text="hi"),
        sent_at=at,
        decision=Decision.text("pending", "not decided yet"),
        resolution=Decision.text("identity.test", "known"),
    )


def _ctx(
    live: ThreadState | None = None,
    *,
    threads: dict[str, tuple[ThreadState, int]] | None = None,
    open_version: int | None = None,
    at: datetime = T0,
) -> IngestContext:
    inbound = sms(1, 1)
    cc = ContinuityContext(
        inbound=inbound,
        customer_id="cu_1",
        topic=None,
        live=live,
        live_by_topic={live.topic_key: live} if live is not None else {},
    )
    known = threads if threads is not None else ({live.id: (live, 7)} if live else {})
    return IngestContext(continuity=cc, event=_event(at), threads=known, open_version=open_version)


def test_decide_ingest_starts_a_thread_for_a_new_customer() -> None:
    new_id = _ids()
    d = decide_ingest(_ctx(), ContinuityPolicy(), T0, new_id)
    assert isinstance(d, IngestDecision)
    assert d.new_thread and d.seq == 2 and d.thread_id == "th_1"
    assert new_id.made == ["th"]
    (append,) = d.appends
    assert append.stream == "th_1" and append.expected == 0
    assert isinstance(append.events[0], ThreadStarted) and append.events[1] == d.event
    assert d.event.decision == d.choice.decision
    (head,) = d.heads
    assert head.expected == NEW and head.new.version == 2
    assert d.pointers == (
        PointerWrite("open", "cu_1", None, "th_1", NEW),
        PointerWrite("latest", "cu_1", None, "th_1", ANY_VERSION),
    )


def test_decide_ingest_continues_the_live_thread_by_compare_and_set() -> None:
    live = evolve(_thread(), 2, _event(T0))
    new_id = _ids()
    at = T0 + timedelta(minutes=5)
    d = decide_ingest(_ctx(live, open_version=3, at=at), ContinuityPolicy(), at, new_id)
    assert isinstance(d, IngestDecision)
    assert not d.new_thread and d.thread_id == live.id and d.seq == live.version + 1
    assert new_id.made == []  # no id is drawn for a continued thread
    (append,) = d.appends
    assert append.expected == live.version and append.events == (d.event,)
    (head,) = d.heads
    assert head.expected == 7 and head.new.version == d.seq
    assert d.pointers == ()  # the open pointer already names it


def test_decide_ingest_takes_over_a_stale_open_pointer_by_its_version() -> None:
    closed = evolve(
        _thread(),
        2,
        ct.LifecycleChanged(at=T0, status=ThreadStatus.CLOSED, reason="done"),
    )
    ctx = _ctx(threads={}, open_version=4)
    d = decide_ingest(ctx, ContinuityPolicy(), T0, _ids())
    assert isinstance(d, IngestDecision) and d.new_thread
    assert d.pointers[0] == PointerWrite("open", "cu_1", None, d.thread_id, 4)
    assert closed.status is ThreadStatus.CLOSED


def test_decide_ingest_asks_for_a_thread_a_rule_chose_without_it_being_loaded() -> None:
    other = evolve(_thread("th_x"), 2, _event(T0))

    def pick(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
        return Choice(decision=Decision.text("custom.pick", "picked"), thread=other)

    policy = ContinuityPolicy(rules=(pick,))
    need = decide_ingest(_ctx(), policy, T0, _ids())
    assert isinstance(need, NeedMore) and need.threads == ("th_x",)
    # the service loads it (a newer head than the rule saw) and asks again
    newer = evolve(other, 3, _event(T0))
    again = IngestContext(
        continuity=_ctx().continuity,
        event=_event(T0),
        threads={"th_x": (newer, 9)},
        choice=need.choice,
        fetched=need.threads,
    )
    d = decide_ingest(again, policy, T0, _ids())
    assert isinstance(d, IngestDecision)
    assert d.thread_id == "th_x" and d.seq == newer.version + 1
    assert d.heads[0].expected == 9 and d.choice.decision.rule == "custom.pick"
