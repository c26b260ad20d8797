"""Handoff: control moves, fencing, idempotency, expiry, concurrency, rules.

Every test runs on memory and on SQLite (``store_factory``)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

import convthread as ct
from convthread.domain.handoff import (
    AsksForHuman,
    AttributeEquals,
    BotFailures,
    HandoffKind,
    HandoffStatus,
    MovedToChannel,
)
from convthread.errors import (
    HandoffTaken,
    InvalidTransition,
    NotFound,
    StaleControllerError,
    ValidationError,
)
from convthread.service import _core as core
from tests._thread_util import all_heads, msg


@pytest.fixture
def convs(store_factory, clock, ids) -> ct.Conversations:
    return ct.Conversations(store_factory(), clock=clock, ids=ids)


def _thread(convs: ct.Conversations) -> str:
    return convs.ingest(msg("m1", text="hello")).thread_id


def _snapshot_of_store(store) -> tuple:
    """Everything a store holds, to prove a refused write stored nothing."""
    streams = {}
    heads = all_heads(store)
    for head in heads:
        streams[head.thread_id] = [r.data for r in store.read(head.thread_id)]
    index = {
        ns: [(k, it.value, it.version) for k, it in store.scan(ns, limit=10**6)]
        for ns in (core.NS_HANDOFF, core.NS_OFFERS, core.NS_HSNAP)
    }
    return streams, index, heads


def test_bot_to_queue_to_agent_moves_control_and_fences_the_bot(convs, clock) -> None:
    tid = _thread(convs)
    bot = convs.transfer_control(tid, to="bot:helper", fencing_token=0)
    assert bot.fencing_token == 1 and convs.thread_state(tid).controller == ct.Party.parse(
        "bot:helper"
    )
    convs.send(tid, "I am the bot", sender="bot:helper", fencing_token=1)

    h = convs.request_handoff(
        tid, to="queue:billing", reason="refund over limit", by="bot:helper", fencing_token=1
    )
    assert h.record.status is HandoffStatus.REQUESTED
    assert convs.thread_state(tid).pending.handoff_id == h.id
    # the bot still controls while the handoff is pending
    convs.send(tid, "transferring you", sender="bot:helper", fencing_token=1)

    offered = convs.offer_handoff(h.id, to="agent:alice", ttl=timedelta(minutes=2))
    assert offered.record.status is HandoffStatus.OFFERED
    accepted = convs.accept_handoff(h.id, by="agent:alice")
    assert accepted.fencing_token == 2
    assert accepted.snapshot is not None and accepted.snapshot.audience == "agent"
    state = convs.thread_state(tid)
    assert state.controller == ct.Party.parse("agent:alice") and state.fencing_token == 2
    assert state.pending is None

    before = _snapshot_of_store(convs.store)
    with pytest.raises(StaleControllerError) as err:
        convs.send(tid, "stale bot", sender="bot:helper", fencing_token=1)
    assert err.value.presented == 1 and err.value.current == 2
    with pytest.raises(StaleControllerError):
        convs.set_attribute(tid, "x", 1, by="bot:helper", fencing_token=1)
    with pytest.raises(StaleControllerError):
        convs.record_intent(tid, "refund", by="bot:helper", fencing_token=1)
    with pytest.raises(StaleControllerError):
        convs.release_control(tid, by="bot:helper", fencing_token=1)
    with pytest.raises(StaleControllerError):
        convs.transfer_control(tid, to="bot:helper", by="bot:helper", fencing_token=1)
    with pytest.raises(StaleControllerError):
        convs.send(tid, "no token, not the controller", sender="bot:helper")
    assert _snapshot_of_store(convs.store) == before

    convs.send(tid, "Hi, Alice here", sender="agent:alice", fencing_token=2)
    moved = convs.transfer_control(
        tid, to="agent:bob", by="agent:alice", fencing_token=2, reason="shift end"
    )
    assert moved.fencing_token == 3 and moved.snapshot is not None
    with pytest.raises(StaleControllerError):
        convs.send(tid, "alice again", sender="agent:alice", fencing_token=2)
    released = convs.release_control(tid, by="agent:bob", fencing_token=3)
    assert released.fencing_token == 4 and convs.thread_state(tid).controller is None
    tokens = [
        e.event.fencing_token
        for e in convs.events(tid)
        if isinstance(e.event, ct.HandoffAccepted | ct.ControlTransferred | ct.ControlReleased)
    ]
    assert tokens == [1, 2, 3, 4]


def test_every_operation_is_idempotent_by_its_handoff_id(convs) -> None:
    tid = _thread(convs)
    h1 = convs.request_handoff(tid, to="queue:support", handoff_id="ho-x")
    again = convs.request_handoff(tid, to="queue:support", handoff_id="ho-x")
    assert again.repeat and again.record == h1.record
    with pytest.raises(InvalidTransition):
        convs.request_handoff(tid, to="queue:other", handoff_id="ho-x")
    o1 = convs.offer_handoff("ho-x", to="agent:ann")
    assert convs.offer_handoff("ho-x", to="agent:ann").repeat
    a1 = convs.accept_handoff("ho-x", by="agent:ann")
    version = convs.thread_state(tid).version
    a2 = convs.accept_handoff("ho-x", by="agent:ann")
    assert a2.repeat and a2.record == a1.record and a2.snapshot == a1.snapshot
    assert o1.record.offered_to == ct.Party.parse("agent:ann")
    r1 = convs.release_control(tid, by="agent:ann", fencing_token=1, handoff_id="rel-1")
    r2 = convs.release_control(tid, by="agent:ann", fencing_token=1, handoff_id="rel-1")
    assert r2.repeat and r2.record == r1.record and r1.record.kind is HandoffKind.RELEASE
    t1 = convs.transfer_control(tid, to="bot:b", fencing_token=2, handoff_id="tr-1")
    t2 = convs.transfer_control(tid, to="bot:b", fencing_token=2, handoff_id="tr-1")
    assert t2.repeat and t2.fencing_token == t1.fencing_token == 3
    assert convs.thread_state(tid).version == version + 2  # the repeats wrote nothing


def test_one_pending_handoff_and_party_checks(convs) -> None:
    tid = _thread(convs)
    h = convs.request_handoff(tid, to="agent:ann")
    with pytest.raises(InvalidTransition):
        convs.request_handoff(tid, to="queue:support")
    with pytest.raises(InvalidTransition):
        convs.accept_handoff(h.id, by="agent:bob")  # targeted at ann, not bob
    with pytest.raises(ValidationError):
        convs.request_handoff(tid, to="customer:me")
    with pytest.raises(NotFound):
        convs.accept_handoff("ho-missing", by="agent:ann")
    convs.offer_handoff(h.id, to="agent:ann")
    with pytest.raises(InvalidTransition):
        convs.offer_handoff(h.id, to="agent:bob")  # a live offer to someone else
    with pytest.raises(InvalidTransition):
        convs.decline_handoff(h.id, by="agent:bob")
    convs.accept_handoff(h.id, by="agent:ann")
    with pytest.raises(HandoffTaken) as err:
        convs.accept_handoff(h.id, by="agent:bob")
    assert err.value.accepted_by == "agent:ann"


def test_decline_then_reoffer_and_expiry(convs, clock) -> None:
    tid = _thread(convs)
    h = convs.request_handoff(tid, to="queue:support")
    convs.offer_handoff(h.id, to="agent:ann", ttl=timedelta(seconds=30))
    declined = convs.decline_handoff(h.id, by="agent:ann", reason="busy")
    assert declined.record.status is HandoffStatus.REQUESTED
    assert declined.record.declined_by == (ct.Party.parse("agent:ann"),)
    assert convs.decline_handoff(h.id, by="agent:ann").repeat
    assert convs.store.scan(core.NS_OFFERS) == []

    convs.offer_handoff(h.id, to="agent:bob", ttl=timedelta(seconds=30))
    assert len(convs.store.scan(core.NS_OFFERS)) == 1
    clock.advance(seconds=29)
    assert convs.expire_handoffs() == []
    clock.advance(seconds=1)
    with pytest.raises(InvalidTransition, match="expired"):
        convs.accept_handoff(h.id, by="agent:bob")
    expired = convs.expire_handoffs()
    assert [r.id for r in expired] == [h.id]
    assert expired[0].record.status is HandoffStatus.REQUESTED
    assert expired[0].record.expired_offers == 1
    assert convs.expire_handoffs() == []  # a sweep is idempotent
    assert convs.store.scan(core.NS_OFFERS) == []
    state = convs.thread_state(tid)
    assert state.pending is not None and state.pending.offered_to is None
    # an expired offer is replaced by a new one (expiry recorded first, same batch)
    convs.offer_handoff(h.id, to="agent:cat", ttl=timedelta(seconds=5))
    clock.advance(seconds=10)
    convs.offer_handoff(h.id, to="agent:dan", ttl=timedelta(seconds=60))
    kinds = [type(e.event).__name__ for e in convs.events(tid)][-3:]
    assert kinds == ["HandoffOffered", "HandoffExpired", "HandoffOffered"]
    # once dan's offer lapsed (not swept yet), dan cannot accept, but any agent may take
    # the queue handoff: the expiry is recorded first, in the same batch
    clock.advance(seconds=61)
    with pytest.raises(InvalidTransition, match="expired"):
        convs.accept_handoff(h.id, by="agent:dan")
    accepted = convs.accept_handoff(h.id, by="agent:eve")
    assert accepted.fencing_token == 1 and accepted.record.expired_offers == 3
    kinds = [type(e.event).__name__ for e in convs.events(tid)][-2:]
    assert kinds == ["HandoffExpired", "HandoffAccepted"]
    assert convs.store.scan(core.NS_OFFERS) == []


def test_transfer_cancels_a_pending_handoff(convs) -> None:
    tid = _thread(convs)
    h = convs.request_handoff(tid, to="queue:support")
    convs.offer_handoff(h.id, to="agent:ann")
    convs.transfer_control(tid, to="agent:boss", by="system:ops", fencing_token=0)
    assert convs.handoff(h.id).status is HandoffStatus.CANCELLED
    assert convs.store.scan(core.NS_OFFERS) == []
    with pytest.raises(InvalidTransition):
        convs.accept_handoff(h.id, by="agent:ann")


def test_two_agents_accepting_at_once_one_wins(store_factory, clock, ids) -> None:
    stores = [store_factory(), store_factory()]
    a = ct.Conversations(stores[0], clock=clock, ids=ids)
    b = ct.Conversations(stores[1], clock=clock, ids=ids)
    for round_ in range(5):
        tid = a.ingest(msg(f"m{round_}", customer=round_ + 1)).thread_id
        h = a.request_handoff(tid, to="queue:support")
        barrier = threading.Barrier(2)
        outcomes: dict[str, object] = {}

        def accept(
            conv: ct.Conversations,
            agent: str,
            hid: str,
            barrier: threading.Barrier,
            outcomes: dict[str, object],
        ) -> None:
            barrier.wait()
            try:
                outcomes[agent] = conv.accept_handoff(hid, by=agent)
            except HandoffTaken as exc:
                outcomes[agent] = exc

        threads = [
            threading.Thread(target=accept, args=(a, "agent:ann", h.id, barrier, outcomes)),
            threading.Thread(target=accept, args=(b, "agent:bob", h.id, barrier, outcomes)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [k for k, v in outcomes.items() if not isinstance(v, Exception)]
        losers = [v for v in outcomes.values() if isinstance(v, HandoffTaken)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        state = a.thread_state(tid)
        assert state.controller == ct.Party.parse(winners[0]) and state.fencing_token == 1
        accepted = [e for e in a.events(tid) if isinstance(e.event, ct.HandoffAccepted)]
        assert len(accepted) == 1


def test_handed_over_snapshot_is_stored_with_the_handoff(convs, clock) -> None:
    tid = _thread(convs)
    convs.set_attribute(tid, "order", "A-1001")
    h = convs.request_handoff(tid, to="bot:vendor")
    accepted = convs.accept_handoff(h.id, by="bot:vendor")
    stored = convs.handed_over_snapshot(tid, h.id)
    assert stored == accepted.snapshot
    assert stored.audience == "bot_vendor"  # a bot receiver gets the external view
    assert stored.seq == accepted.record.snapshot_seq == convs.thread_state(tid).version - 1
    raw = convs.store.get(core.NS_HSNAP, f"{tid}|{h.id}")
    assert raw is not None and raw.value == accepted.snapshot.to_json()
    with pytest.raises(NotFound):
        convs.handed_over_snapshot(tid, "nope")


# ----------------------------------------------------------------- rules on ingest


def test_rule_asks_for_human_requests_in_the_same_batch(store_factory, clock, ids) -> None:
    convs = ct.Conversations(
        store_factory(), clock=clock, ids=ids, handoff_rules=[AsksForHuman(target="queue:humans")]
    )
    r1 = convs.ingest(msg("m1", text="where is my parcel"))
    assert r1.handoff is None
    r2 = convs.ingest(msg("m2", text="Can I talk to a real person please?"))
    assert r2.handoff is not None and r2.handoff.rule == "asks_for_human"
    assert r2.handoff.target == ct.Party.parse("queue:humans")
    events = convs.events(r2.thread_id)
    assert isinstance(events[-1].event, ct.HandoffRequested)
    assert events[-1].seq == r2.seq + 1 and events[-2].seq == r2.seq
    assert convs.handoff(r2.handoff.handoff_id).status is HandoffStatus.REQUESTED
    # pending: the rule is not consulted again; a redelivery returns the original outcome
    r3 = convs.ingest(msg("m3", text="agent"))
    assert r3.handoff is None
    assert convs.ingest(msg("m2", text="Can I talk to a real person please?")).duplicate
    assert convs.thread_state(r2.thread_id).pending.handoff_id == r2.handoff.handoff_id


def test_rule_bot_failures_and_attribute_and_voice(store_factory, clock, ids) -> None:
    rules = [
        BotFailures(threshold=2, target="queue:l2"),
        AttributeEquals("refund_amount", predicate=lambda v: v > 500, target="queue:refunds"),
        MovedToChannel(target="queue:voice"),
    ]
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids, handoff_rules=rules)
    tid = convs.ingest(msg("m1", text="hi")).thread_id
    convs.transfer_control(tid, to="bot:b", fencing_token=0)
    convs.record_intent(tid, "fallback", by="bot:b", fencing_token=1)
    assert convs.ingest(msg("m2", text="??")).handoff is None
    convs.record_intent(tid, "fallback", by="bot:b", fencing_token=1)
    r = convs.ingest(msg("m3", text="??"))
    assert r.handoff is not None and r.handoff.rule == "bot_failures"
    accepted = convs.accept_handoff(r.handoff.handoff_id, by="agent:ann")
    assert convs.thread_state(tid).bot_failures == 0
    convs.release_control(tid, by="agent:ann", fencing_token=accepted.fencing_token)

    convs.set_attribute(tid, "refund_amount", 100)
    assert convs.ingest(msg("m4")).handoff is None
    convs.set_attribute(tid, "refund_amount", 900)
    r = convs.ingest(msg("m5"))
    assert r.handoff is not None and r.handoff.target == ct.Party.parse("queue:refunds")
    assert convs.thread_state(tid).fencing_token == 3
    convs.transfer_control(tid, to="agent:x", fencing_token=3)
    convs.release_control(tid, by="agent:x", fencing_token=4)
    convs.set_attribute(tid, "refund_amount", 1)

    r = convs.ingest(msg("m6", channel="voice"))
    assert r.handoff is not None and r.handoff.rule == "moved_to_voice"
    assert "sms to voice" in r.handoff.reason


def test_rules_are_quiet_while_an_agent_controls(store_factory, clock, ids) -> None:
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids, handoff_rules=[AsksForHuman()])
    tid = convs.ingest(msg("m1")).thread_id
    convs.transfer_control(tid, to="agent:ann", fencing_token=0)
    assert convs.ingest(msg("m2", text="talk to a human")).handoff is None


def test_async_service_offers_the_same_handoff_operations(store_factory, clock, ids) -> None:
    async def main() -> None:
        convs = ct.AsyncConversations(store_factory(), clock=clock, ids=ids)
        session = await convs.ingest(msg("m1"))
        tid = session.thread_id
        h = await convs.request_handoff(tid, to="queue:support")
        await convs.offer_handoff(h.id, to="agent:ann", ttl=timedelta(seconds=5))
        accepted = await convs.accept_handoff(h.id, by="agent:ann")
        assert accepted.fencing_token == 1
        assert (await convs.handed_over_snapshot(tid, h.id)) == accepted.snapshot
        with pytest.raises(StaleControllerError):
            await convs.release_control(tid, by="agent:ann", fencing_token=0)
        await convs.release_control(tid, by="agent:ann", fencing_token=1)
        snap = await convs.snapshot(tid, audience="customer", session=session)
        assert snap.controller is None
        assert (await convs.handoff(h.id)).status is HandoffStatus.ACCEPTED
        assert await convs.expire_handoffs() == []

    asyncio.run(main())
