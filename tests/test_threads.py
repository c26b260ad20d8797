"""Threads: lifecycle, sweep, ordering, delivery statuses, reports, queries,
batched ingest. Every test runs on memory and on SQLite (``store_factory``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread import codec
from convthread.domain.thread import LIFECYCLE, LifecyclePolicy
from convthread.domain.timeline import MessageMark
from convthread.domain.updates import (
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import IdempotencyError, InvalidTransition, NotFound, ValidationError
from convthread.service._marks import EarlyStatus, EarlyStatuses, decode_early, early_events, hold
from convthread.stores import MemoryStore
from tests._thread_util import T0, check_store_invariants, msg

S = ct.ThreadStatus


@pytest.fixture
def convs(store_factory, clock, ids) -> ct.Conversations:
    return ct.Conversations(store_factory(), clock=clock, ids=ids)


# ----------------------------------------------------------------- lifecycle


def test_lifecycle_table_is_enforced_with_typed_errors(convs: ct.Conversations, clock) -> None:
    tid = convs.ingest(msg("m1")).thread_id
    with pytest.raises(InvalidTransition):
        convs.set_status(tid, "open")  # open -> open changes nothing
    convs.set_status(tid, "pending", by="agent:ann", reason="asked for details")
    convs.snooze(tid, clock.now() + timedelta(hours=1))
    convs.resolve(tid)
    with pytest.raises(InvalidTransition):
        convs.set_status(tid, "pending")  # resolved -> pending is not allowed
    convs.close_thread(tid)
    for status in S:
        with pytest.raises(InvalidTransition):
            convs.set_status(tid, status, until=clock.now() + timedelta(hours=1))
    with pytest.raises(InvalidTransition):
        convs.send(tid, "hello?", sender="agent:ann")
    assert LIFECYCLE[S.CLOSED] == frozenset()
    evs = [e.event for e in convs.events(tid) if isinstance(e.event, ct.LifecycleChanged)]
    assert [e.status for e in evs] == [S.PENDING, S.SNOOZED, S.RESOLVED, S.CLOSED]
    assert evs[0].by == ct.Party.parse("agent:ann") and evs[0].reason == "asked for details"
    check_store_invariants(convs.store)


def test_snooze_needs_a_future_time_and_until_only_for_snooze(
    convs: ct.Conversations, clock
) -> None:
    tid = convs.ingest(msg("m1")).thread_id
    with pytest.raises(ValidationError):
        convs.snooze(tid, clock.now())
    with pytest.raises(ValidationError):
        convs.set_status(tid, "snoozed")
    with pytest.raises(ValidationError):
        convs.set_status(tid, "pending", until=clock.now() + timedelta(hours=1))
    with pytest.raises(ValidationError):
        convs.set_status(tid, "sleeping")
    with pytest.raises(NotFound):
        convs.resolve("th_missing")
    assert convs.thread_state(tid).status is S.OPEN


def test_resolving_frees_the_topic_and_reopen_reclaims_it(convs: ct.Conversations, clock) -> None:
    a = convs.ingest(msg("m1")).thread_id
    convs.resolve(a)
    check_store_invariants(convs.store)
    reopened = convs.reopen(a, reason="customer called back")
    assert reopened.status is S.OPEN
    check_store_invariants(convs.store)
    convs.resolve(a)
    clock.advance(days=30)
    b = convs.ingest(msg("m2", at=clock.now()))  # beyond the reopen window: a successor
    assert b.new_thread and b.thread_id != a
    with pytest.raises(InvalidTransition, match="is open for customer"):
        convs.reopen(a)  # the successor holds the customer's topic
    check_store_invariants(convs.store)


def test_sweep_wakes_snoozed_and_auto_resolves_inactive(store_factory, clock, ids) -> None:
    policy = LifecyclePolicy(
        auto_resolve_after=timedelta(hours=48), pending_resolve_after=timedelta(hours=2)
    )
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids, lifecycle=policy)
    quiet = convs.ingest(msg("q", customer=1)).thread_id
    waiting = convs.ingest(msg("w", customer=2)).thread_id
    snoozed = convs.ingest(msg("s", customer=3)).thread_id
    busy = convs.ingest(msg("b", customer=4)).thread_id
    convs.set_status(waiting, "pending")
    convs.snooze(snoozed, T0 + timedelta(hours=5))
    assert convs.sweep(clock.now()).resolved == ()  # nothing due yet
    clock.advance(hours=6)
    assert convs.ingest(msg("b2", customer=4, at=clock.now())).thread_id == busy
    r = convs.sweep(clock.now())
    assert r.woken == (snoozed,)
    assert r.resolved == (waiting,)
    assert convs.thread_state(snoozed).status is S.OPEN
    ev = convs.events(waiting)[-1].event
    assert isinstance(ev, ct.LifecycleChanged) and "auto-resolved" in ev.reason
    clock.advance(hours=43)  # T0 + 49h
    r = convs.sweep(clock.now())
    assert set(r.resolved) == {quiet}  # busy had activity; snoozed woke at +6h
    assert convs.sweep(clock.now()).resolved == ()  # idempotent
    clock.advance(hours=10)  # T0 + 59h: 53h since busy's message and snoozed's waking
    assert set(convs.sweep(clock.now()).resolved) == {snoozed, busy}
    assert convs.threads(status="open").items == ()
    check_store_invariants(convs.store)


def test_sweep_never_runs_by_itself(store_factory, clock, ids) -> None:
    policy = LifecyclePolicy(auto_resolve_after=timedelta(minutes=1))
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids, lifecycle=policy)
    tid = convs.ingest(msg("m1")).thread_id
    clock.advance(days=10)
    assert convs.thread_state(tid).status is S.OPEN
    assert convs.sweep(clock.now()).resolved == (tid,)


def test_customer_message_wakes_a_snoozed_thread(convs: ct.Conversations, clock) -> None:
    tid = convs.ingest(msg("m1")).thread_id
    convs.snooze(tid, T0 + timedelta(days=1))
    r = convs.ingest(msg("m2", channel="whatsapp", at=T0 + timedelta(hours=1)))
    assert r.thread_id == tid
    state = convs.thread_state(tid)
    assert state.status is S.OPEN and state.snoozed_until is None
    check_store_invariants(convs.store)


# ----------------------------------------------------------------- ordering


def test_seq_is_append_order_and_timeline_is_channel_time(convs: ct.Conversations) -> None:
    a = convs.ingest(msg("m1", at=T0 + timedelta(minutes=10), text="second"))
    b = convs.ingest(msg("m2", at=T0 + timedelta(minutes=20), text="third"))
    late = convs.ingest(msg("m0", at=T0, text="first (arrived late)"))
    same = convs.ingest(msg("m3", at=T0 + timedelta(minutes=20), text="fourth (same second)"))
    assert [a.seq, b.seq, late.seq, same.seq] == [2, 3, 4, 5]
    texts = [e.content.text for e in convs.timeline(a.thread_id)]
    assert texts == ["first (arrived late)", "second", "third", "fourth (same second)"]
    assert [e.seq for e in convs.events(a.thread_id)] == [1, 2, 3, 4, 5]
    assert convs.thread_state(a.thread_id).last_activity == T0 + timedelta(minutes=20)


# ----------------------------------------------------------------- delivery statuses


def _status(pid: str, status: str, minutes: int = 0, channel: str = "whatsapp") -> StatusReport:
    return StatusReport(
        channel=channel,
        provider_message_id=pid,
        status=ct.DeliveryStatus(status),
        at=T0 + timedelta(minutes=minutes),
    )


def test_statuses_never_regress(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    sent = convs.send(tid, "hello", sender="agent:ann", provider_message_id="out1")
    assert convs.apply(_status("out1", "sent")).outcome == "recorded"
    assert convs.apply(_status("out1", "read", 2)).outcome == "recorded"
    late = convs.apply(_status("out1", "delivered", 1))
    assert late.outcome == "ignored" and "never regress" in late.reason
    again = convs.apply(_status("out1", "read", 2))
    assert again.outcome == "ignored"
    [entry] = [e for e in convs.timeline(tid) if e.seq == sent.seq]
    assert entry.status is ct.DeliveryStatus.READ
    kinds = [e.event.status for e in convs.events(tid) if isinstance(e.event, ct.StatusUpdated)]
    assert kinds == [ct.DeliveryStatus.SENT, ct.DeliveryStatus.READ]


def test_failed_then_read_but_never_read_then_failed(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    convs.send(tid, "a", sender="agent:ann", provider_message_id="o1")
    convs.send(tid, "b", sender="agent:ann", provider_message_id="o2")
    assert convs.apply(_status("o1", "failed")).outcome == "recorded"
    assert convs.apply(_status("o1", "read", 1)).outcome == "recorded"
    assert convs.apply(_status("o2", "read")).outcome == "recorded"
    assert convs.apply(_status("o2", "failed", 1)).outcome == "ignored"


def test_status_before_the_message_is_held_then_applied_by_send(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    held = convs.apply(_status("o-early", "delivered", 1))
    assert held.outcome == "held"
    assert convs.apply(_status("o-early", "delivered", 1)).outcome == "ignored"
    assert convs.apply(_status("o-early", "sent")).outcome == "held"
    sent = convs.send(tid, "hi", sender="agent:ann", provider_message_id="o-early")
    [entry] = [e for e in convs.timeline(tid) if e.seq == sent.seq]
    assert entry.status is ct.DeliveryStatus.DELIVERED
    statuses = [e.event for e in convs.events(tid) if isinstance(e.event, ct.StatusUpdated)]
    assert [s.status for s in statuses] == [ct.DeliveryStatus.SENT, ct.DeliveryStatus.DELIVERED]
    assert all(s.message_seq == sent.seq for s in statuses)
    # The held entry is gone: a later, lower status is judged against the applied one.
    assert convs.apply(_status("o-early", "sent", 3)).outcome == "ignored"
    assert convs.apply(_status("o-early", "read", 4)).outcome == "recorded"


@pytest.mark.parametrize("via", ["send", "record_provider_id"])
def test_many_held_reports_never_push_out_a_higher_status(convs: ct.Conversations, via) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    assert convs.apply(_status("o-many", "read", 1)).outcome == "held"
    outcomes = {convs.apply(_status("o-many", "delivered", m)).outcome for m in range(2, 40)}
    assert outcomes == {"held", "ignored"}  # the first is held, its repeats add nothing
    assert convs.apply(_status("o-many", "delivered", 0)).outcome == "held"  # an earlier one
    if via == "send":
        seq = convs.send(tid, "hi", sender="agent:ann", provider_message_id="o-many").seq
    else:
        seq = convs.send(tid, "hi", sender="agent:ann").seq
        convs.record_provider_id(tid, seq, "o-many")
    [entry] = [e for e in convs.timeline(tid) if e.seq == seq]
    assert (entry.status, entry.status_at) == (ct.DeliveryStatus.READ, T0 + timedelta(minutes=1))
    statuses = [e.event for e in convs.events(tid) if isinstance(e.event, ct.StatusUpdated)]
    assert [(s.status, s.reported_at) for s in statuses] == [
        (ct.DeliveryStatus.DELIVERED, T0),
        (ct.DeliveryStatus.READ, T0 + timedelta(minutes=1)),
    ]


@settings(max_examples=60, deadline=None)
@given(
    reports=st.lists(
        st.tuples(
            st.sampled_from(list(ct.DeliveryStatus)),
            st.integers(0, 5),
            st.sampled_from(["", "undeliverable", "blocked"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_held_statuses_keep_the_earliest_report_of_each_status(
    reports: list[tuple[ct.DeliveryStatus, int, str]],
) -> None:
    convs = ct.Conversations(MemoryStore(), clock=ct.ManualClock(T0), ids=ct.SequentialIds())
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    first: dict[ct.DeliveryStatus, tuple[int, str]] = {}
    for status, minute, error in reports:
        report = StatusReport(
            channel="whatsapp",
            provider_message_id="o-p",
            status=status,
            at=T0 + timedelta(minutes=minute),
            error=error,
        )
        outcome = convs.apply(report).outcome
        earlier = status not in first or minute < first[status][0]
        assert outcome == ("held" if earlier else "ignored")
        if earlier:
            first[status] = (minute, error)
    seq = convs.send(tid, "hi", sender="agent:ann", provider_message_id="o-p").seq
    statuses = [e.event for e in convs.events(tid) if isinstance(e.event, ct.StatusUpdated)]
    expected = sorted(first, key=lambda s: s.rank)
    assert [s.status for s in statuses] == expected
    for event in statuses:
        minute, error = first[event.status]
        assert (event.reported_at, event.error) == (T0 + timedelta(minutes=minute), error)
    [entry] = [e for e in convs.timeline(tid) if e.seq == seq]
    assert entry.status is expected[-1]


def test_a_held_entry_in_the_older_window_format_still_applies() -> None:
    # Releases that kept a window of reports wrote the same shape, repeats included.
    delivered = ct.DeliveryStatus.DELIVERED
    window = EarlyStatuses(
        (
            EarlyStatus(delivered, T0 + timedelta(minutes=3)),
            EarlyStatus(delivered, T0 + timedelta(minutes=2)),
            EarlyStatus(ct.DeliveryStatus.FAILED, T0, "blocked"),
        )
    )
    early = decode_early(codec.encode(window))
    assert early == window
    events, _mark = early_events(early, MessageMark(), 5, T0)
    assert [(e.status, e.reported_at, e.error) for e in events] == [
        (ct.DeliveryStatus.DELIVERED, T0 + timedelta(minutes=2), ""),
        (ct.DeliveryStatus.FAILED, T0, "blocked"),
    ]
    held = hold(early, EarlyStatus(ct.DeliveryStatus.SENT, T0))
    assert held is not None
    assert [(e.status, e.reported_at) for e in held.statuses] == [
        (ct.DeliveryStatus.SENT, T0),
        (ct.DeliveryStatus.DELIVERED, T0 + timedelta(minutes=2)),
        (ct.DeliveryStatus.FAILED, T0),
    ]
    assert hold(held, EarlyStatus(ct.DeliveryStatus.FAILED, T0, "other")) is None


def test_status_held_then_applied_by_record_provider_id(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    sent = convs.send(tid, "hi", sender="agent:ann")  # the provider id is not known yet
    assert convs.apply(_status("wamid.9", "read")).outcome == "held"
    r = convs.record_provider_id(tid, sent.seq, "wamid.9")
    assert r.outcome == "recorded" and "1 held status" in r.reason
    assert convs.record_provider_id(tid, sent.seq, "wamid.9").outcome == "ignored"
    other = convs.send(tid, "more", sender="agent:ann")
    with pytest.raises(IdempotencyError):
        convs.record_provider_id(tid, other.seq, "wamid.9")  # the id names another message
    with pytest.raises(NotFound):
        convs.record_provider_id(tid, 2, "wamid.10")  # seq 2 is the inbound message
    loc = convs.find_message("whatsapp", "wamid.9")
    assert loc is not None and (loc.thread_id, loc.seq) == (tid, sent.seq)
    [entry] = [e for e in convs.timeline(tid) if e.seq == sent.seq]
    assert entry.status is ct.DeliveryStatus.READ and entry.provider_message_id == "wamid.9"


def test_send_with_a_used_provider_id(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in1", channel="whatsapp")).thread_id
    a = convs.send(tid, "hi", sender="agent:ann", provider_message_id="o1")
    again = convs.send(tid, "hi", sender="agent:ann", provider_message_id="o1")
    assert again.duplicate and again.seq == a.seq
    with pytest.raises(IdempotencyError):
        convs.send(tid, "different", sender="agent:ann", provider_message_id="o1")
    assert len(convs.events(tid)) == 3


# ----------------------------------------------------------------- edits, deletions, reactions


def test_edit_delete_react_are_events_and_tombstones_keep_their_place(
    convs: ct.Conversations,
) -> None:
    r1 = convs.ingest(msg("w1", channel="whatsapp", text="hello", at=T0))
    convs.ingest(msg("w2", channel="whatsapp", text="my order", at=T0 + timedelta(minutes=1)))
    tid = r1.thread_id
    new = ct.Content(
        text="hello again",
        attachments=(ct.Attachment(kind="image", media_id="m-1", mime_type="image/jpeg"),),
    )
    edit = EditReport(channel="whatsapp", provider_message_id="w1", content=new, at=T0)
    assert convs.apply(edit).outcome == "recorded"
    assert convs.apply(edit).outcome == "ignored"  # redelivered edit
    react = ReactionReport(channel="whatsapp", provider_message_id="w2", emoji="👍", at=T0)
    assert convs.apply(react).outcome == "recorded"
    assert convs.apply(react).outcome == "ignored"
    dele = DeletionReport(channel="whatsapp", provider_message_id="w2", at=T0)
    assert convs.apply(dele).outcome == "recorded"
    assert convs.apply(dele).outcome == "ignored"
    assert (
        convs.apply(
            EditReport(channel="whatsapp", provider_message_id="w2", content=new, at=T0)
        ).outcome
        == "ignored"
    )
    tl = convs.timeline(tid)
    assert [e.seq for e in tl] == [2, 3]
    assert tl[0].edited and tl[0].content.text == "hello again"
    assert tl[0].content.attachments[0].media_id == "m-1"
    assert tl[1].deleted and tl[1].content.text == "" and tl[1].seq == 3
    assert list(tl[1].reactions.values()) == ["👍"]
    types = [type(e.event).__name__ for e in convs.events(tid)]
    assert types == [
        "ThreadStarted",
        "MessageReceived",
        "MessageReceived",
        "MessageEdited",
        "ReactionSet",
        "MessageDeleted",
    ]
    # the original content stays in the record
    original = convs.events(tid)[1].event
    assert isinstance(original, ct.MessageReceived) and original.content.text == "hello"
    with pytest.raises(NotFound):
        convs.apply(DeletionReport(channel="whatsapp", provider_message_id="nope", at=T0))


def test_unsupported_is_kept_and_reported(convs: ct.Conversations) -> None:
    u = Unsupported(
        channel="whatsapp", reason="order messages are not modelled", kind="order", raw={"x": 1}
    )
    r = convs.apply(u)
    assert r.outcome == "unsupported" and "order" in r.reason
    items, cursor = convs.unsupported()
    assert cursor is None
    assert [rep for _at, rep in items] == [u]
    with pytest.raises(ValidationError):
        convs.apply("not a result")  # type: ignore[arg-type]


def test_apply_inbound_is_ingest(convs: ct.Conversations) -> None:
    r = convs.apply(msg("m1"))
    assert r.outcome == "ingested" and r.ingest is not None
    assert convs.apply(msg("m1")).outcome == "duplicate"


# ----------------------------------------------------------------- idempotency


def test_redelivery_and_key_misuse(convs: ct.Conversations) -> None:
    first = convs.ingest(msg("m1", text="hello"))
    again = convs.ingest(msg("m1", text="hello"))
    assert again.duplicate and (again.thread_id, again.seq) == (first.thread_id, first.seq)
    assert again.decision == first.decision
    with pytest.raises(IdempotencyError):
        convs.ingest(msg("m1", text="changed"))
    k1 = convs.ingest(msg("m2", text="x", idempotency_key="key-1"))
    with pytest.raises(IdempotencyError):
        convs.ingest(msg("m3", text="y", idempotency_key="key-1"))
    assert convs.ingest(msg("m2", text="x", idempotency_key="key-1")).seq == k1.seq
    assert len(convs.events(first.thread_id)) == 3


# ----------------------------------------------------------------- queries


def test_queries_with_cursor_pagination(convs: ct.Conversations, clock) -> None:
    tids = []
    for i in range(7):
        ch = ["sms", "whatsapp", "email"][i % 3]
        tids.append(
            convs.ingest(
                msg(f"m{i}", customer=i, channel=ch, at=T0 + timedelta(minutes=10 * (7 - i)))
            ).thread_id
        )
    convs.resolve(tids[0])
    convs.set_status(tids[1], "pending")
    # by last activity, oldest first, across statuses, two per page
    seen: list[str] = []
    cursor = None
    while True:
        page = convs.threads(limit=2, cursor=cursor)
        seen.extend(t.id for t in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(tids))
    opened = convs.threads(status="open", limit=50)
    assert [t.id for t in opened.items] == [tids[i] for i in (6, 5, 4, 3, 2)]
    assert [t.id for t in convs.threads(status=S.PENDING).items] == [tids[1]]
    # every query is ordered by last activity, oldest first
    wa = convs.threads(channel="whatsapp", limit=1)
    assert [t.id for t in wa.items] == [tids[4]]
    wa2 = convs.threads(channel="whatsapp", limit=1, cursor=wa.next_cursor)
    assert [t.id for t in wa2.items] == [tids[1]]
    assert convs.threads(channel="whatsapp", limit=1, cursor=wa2.next_cursor).items == ()
    ranged = convs.threads(
        active_after=T0 + timedelta(minutes=20), active_before=T0 + timedelta(minutes=40)
    )
    assert {t.id for t in ranged.items} == {tids[3], tids[4], tids[5]}
    cust = convs.threads(customer=convs.thread_state(tids[2]).customer_id)
    assert [t.id for t in cust.items] == [tids[2]]
    with pytest.raises(ValidationError):
        convs.threads(channel="sms", cursor=page.next_cursor or "bm90IGEgY3Vyc29y")
    with pytest.raises(ValidationError):
        convs.threads(limit=0)


def test_query_by_controller(convs: ct.Conversations) -> None:
    from convthread.service import _core as core
    from convthread.service._messages import _Writes

    a = convs.ingest(msg("m1", customer=1)).thread_id
    convs.ingest(msg("m2", customer=2))
    # Give thread a a controller the way the handoff operations do: a new cached state.
    state = convs.thread_state(a)
    head = convs.store.get_heads(core.TENANT, [a])[a]
    w = _Writes()
    w.thread(
        state,
        ct.ThreadState(
            **{
                **{f: getattr(state, f) for f in state.__struct_fields__},
                "controller": ct.Party.parse("agent:ann"),
            }
        ),
        head.version,
    )
    convs.store.commit(w.batch())
    page = convs.threads(controller="agent:ann")
    assert [t.id for t in page.items] == [a]
    assert convs.threads(controller="agent:bob").items == ()


# ----------------------------------------------------------------- batched ingest


def test_ingest_many_is_one_transaction_that_sees_itself(convs: ct.Conversations) -> None:
    batch = [
        msg("b1", customer=1, text="one"),
        msg("b2", customer=1, channel="whatsapp", text="two"),
        msg("b3", customer=2, text="three"),
        msg("b1", customer=1, text="one"),  # a redelivery inside the batch
    ]
    results = convs.ingest_many(batch)
    assert [r.duplicate for r in results] == [False, False, False, True]
    assert results[1].thread_id == results[0].thread_id and results[1].seq == 3
    assert results[3].seq == results[0].seq
    assert results[2].customer_id != results[0].customer_id
    assert [r.seq for r in convs.ingest_many([msg("b1", customer=1, text="one")])] == [2]
    check_store_invariants(convs.store)
    assert len(convs.events(results[0].thread_id)) == 3


def test_ingest_many_writes_nothing_when_one_message_fails(convs: ct.Conversations) -> None:
    convs.ingest(msg("x1", text="original"))
    before = convs.threads().items
    with pytest.raises(IdempotencyError):
        convs.ingest_many([msg("x2", customer=5), msg("x1", text="tampered")])
    assert convs.find_message("sms", "x2") is None
    assert convs.threads().items == before


# ----------------------------------------------------------------- async


def test_async_wrappers_behave_the_same(clock, ids) -> None:
    async def main() -> None:
        async with ct.AsyncConversations("memory://", clock=clock, ids=ids) as ac:
            r = await ac.ingest(msg("m1", channel="whatsapp"))
            await ac.send(r.thread_id, "hi", sender="agent:ann", provider_message_id="o1")
            assert (await ac.apply(_status("o1", "read"))).outcome == "recorded"
            await ac.snooze(r.thread_id, clock.now() + timedelta(hours=1))
            clock.advance(hours=2)
            assert (await ac.sweep(clock.now())).woken == (r.thread_id,)
            assert [e.seq for e in await ac.timeline(r.thread_id)] == [2, 3]
            assert (await ac.threads(status="open")).items[0].id == r.thread_id
            assert len(await ac.ingest_many([msg("m2"), msg("m3")])) == 2
            await ac.close_thread(r.thread_id)

    asyncio.run(main())


def test_edits_are_attributed_to_the_sender(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("w1", channel="whatsapp")).thread_id
    convs.send(tid, "typo", sender="agent:ann", provider_message_id="o1")
    convs.apply(
        EditReport(
            channel="whatsapp", provider_message_id="o1", content=ct.Content(text="fixed"), at=T0
        )
    )
    convs.apply(
        EditReport(
            channel="whatsapp", provider_message_id="w1", content=ct.Content(text="hi!"), at=T0
        )
    )
    edits = [e.event for e in convs.events(tid) if isinstance(e.event, ct.MessageEdited)]
    customer = convs.thread_state(tid).customer_id
    assert [str(e.by) for e in edits] == ["agent:ann", f"customer:{customer}"]
