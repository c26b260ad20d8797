"""The service end to end on every store: dedup, continuity, send, reads, bad input."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import convthread as ct
from convthread import errors
from tests._thread_util import all_heads
from tests.conftest import StoreFactory

PHONE = ct.phone("+447911123456")
MAIL = ct.email("dana@example.com")


def msg(
    clock: ct.ManualClock,
    pid: str,
    text: str = "hello",
    *,
    channel: str = "sms",
    sender: tuple[ct.SenderIdentifier, ...] = (ct.SenderIdentifier(PHONE, ct.Trust.ASSERTED),),
    **extra: object,
) -> ct.Inbound:
    return ct.Inbound(
        channel=channel,
        provider_message_id=pid,
        sender=sender,
        content=ct.Content(text=text),
        sent_at=clock.now(),
        **extra,  # type: ignore[arg-type]
    )


def test_first_message_creates_customer_and_thread(
    convs: ct.Conversations, clock: ct.ManualClock
) -> None:
    result = convs.ingest(msg(clock, "SM1"))
    assert result.new_customer and result.new_thread and not result.duplicate
    assert result.seq == 2  # thread_started is 1
    assert result.decision.rule == "new_thread"
    assert result.resolution.rule == "new_customer"
    view = convs.thread(result.thread_id)
    assert [e.seq for e in view.events] == [1, 2]
    assert isinstance(view.events[1].event, ct.MessageReceived)
    assert view.events[1].event.content.text == "hello"
    assert convs.find_customer(PHONE) == result.customer_id


def test_redelivery_is_stored_once_and_returns_the_original_outcome(
    convs: ct.Conversations, clock: ct.ManualClock
) -> None:
    first_msg = msg(clock, "SM1")
    first = convs.ingest(first_msg)
    clock.advance(minutes=5)
    again = convs.ingest(first_msg)
    assert again.duplicate
    assert (again.thread_id, again.seq, again.customer_id) == (
        first.thread_id,
        first.seq,
        first.customer_id,
    )
    assert again.new_thread and again.new_customer  # the original outcome
    assert again.decision == first.decision
    assert len(convs.events(first.thread_id)) == 2


def test_idempotency_key_reused_with_different_payload_is_an_error(
    convs: ct.Conversations, clock: ct.ManualClock
) -> None:
    first = convs.ingest(msg(clock, "SM1", "original"))
    with pytest.raises(errors.IdempotencyError):
        convs.ingest(msg(clock, "SM1", "tampered"))
    view = convs.thread(first.thread_id)
    assert len(view.events) == 2
    assert view.events[1].event.content.text == "original"  # type: ignore[union-attr]


def test_explicit_idempotency_key(convs: ct.Conversations, clock: ct.ManualClock) -> None:
    a = convs.ingest(msg(clock, "SM1", idempotency_key="req-1"))
    b = convs.ingest(msg(clock, "SM1", idempotency_key="req-1"))
    assert b.duplicate and b.seq == a.seq
    with pytest.raises(errors.IdempotencyError):
        convs.ingest(msg(clock, "SM2", "other", idempotency_key="req-1"))


def test_continues_across_channels_within_the_window(
    convs: ct.Conversations, clock: ct.ManualClock
) -> None:
    a = convs.ingest(
        msg(
            clock,
            "SM1",
            sender=(
                ct.SenderIdentifier(PHONE, ct.Trust.ASSERTED),
                ct.SenderIdentifier(MAIL, ct.Trust.CLAIMED),
            ),
        )
    )
    clock.advance(hours=2)
    b = convs.ingest(
        msg(
            clock,
            "<m1@example.com>",
            channel="email",
            sender=(ct.SenderIdentifier(MAIL, ct.Trust.CLAIMED),),
        )
    )
    assert b.customer_id == a.customer_id
    assert b.thread_id == a.thread_id
    assert not b.new_thread
    assert b.decision.rule == "recency"
    assert "within" in b.decision.reason and "email after sms" in b.decision.reason
    assert convs.thread_state(a.thread_id).channels == ("sms", "email")


def test_new_thread_after_the_window_records_its_predecessor(
    convs: ct.Conversations, clock: ct.ManualClock
) -> None:
    a = convs.ingest(msg(clock, "SM1"))
    clock.advance(days=2)
    b = convs.ingest(msg(clock, "SM2"))
    assert b.new_thread and b.thread_id != a.thread_id
    assert "beyond" in b.decision.reason
    assert convs.thread_state(b.thread_id).predecessor == a.thread_id
    old = convs.thread_state(a.thread_id)
    assert old.status is ct.ThreadStatus.RESOLVED
    states = convs.customer_threads(a.customer_id)
    assert [s.id for s in states] == [a.thread_id, b.thread_id]
    assert sum(s.is_open for s in states) == 1


def test_configurable_window() -> None:
    clock = ct.ManualClock()
    convs = ct.Conversations(
        "memory://", clock=clock, continuity=ct.ContinuityPolicy(window=timedelta(minutes=30))
    )
    a = convs.ingest(msg(clock, "SM1"))
    clock.advance(minutes=31)
    assert convs.ingest(msg(clock, "SM2")).thread_id != a.thread_id


def test_send_records_an_outbound_message(convs: ct.Conversations, clock: ct.ManualClock) -> None:
    a = convs.ingest(msg(clock, "SM1"))
    sent = convs.send(a.thread_id, "We're on it", sender="agent:alice")
    assert sent.seq == 3 and sent.event.channel == "sms"
    assert sent.event.sender == ct.Party.parse("agent:alice")
    again = convs.send(a.thread_id, "Also by mail", sender="bot:helper", channel="email")
    assert again.event.channel == "email"
    assert [e.seq for e in convs.events(a.thread_id)] == [1, 2, 3, 4]
    assert [e.seq for e in convs.events(a.thread_id, after=2)] == [3, 4]


def test_send_idempotency(convs: ct.Conversations, clock: ct.ManualClock) -> None:
    a = convs.ingest(msg(clock, "SM1"))
    one = convs.send(a.thread_id, "hi", sender="agent:alice", idempotency_key="out-1")
    two = convs.send(a.thread_id, "hi", sender="agent:alice", idempotency_key="out-1")
    assert two.duplicate and two.seq == one.seq
    with pytest.raises(errors.IdempotencyError):
        convs.send(a.thread_id, "different", sender="agent:alice", idempotency_key="out-1")
    assert len(convs.events(a.thread_id)) == 3


def test_reads_of_unknown_ids_raise_not_found(convs: ct.Conversations) -> None:
    with pytest.raises(errors.NotFound):
        convs.thread("th_missing")
    with pytest.raises(errors.NotFound):
        convs.customer("cu_missing")
    with pytest.raises(errors.NotFound):
        convs.send("th_missing", "x", sender="agent:a")
    assert convs.find_customer(ct.phone("+33612345678")) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda c: ct.Inbound(
            channel="sms",
            provider_message_id="x",
            sender=(ct.SenderIdentifier(ct.Identifier("fax", "123")),),
            sent_at=c.now(),
        ),
        lambda c: ct.Inbound(
            channel="sms",
            provider_message_id="x",
            sender=(ct.SenderIdentifier(ct.Identifier("phone", "12")),),
            sent_at=c.now(),
        ),
        lambda c: ct.Inbound(
            channel="sms",
            provider_message_id="x",
            sender=(ct.SenderIdentifier(ct.Identifier("email", "not-an-address")),),
            sent_at=c.now(),
        ),
    ],
    ids=["unknown-kind", "invalid-phone", "invalid-email"],
)
def test_bad_identifiers_raise_typed_errors_and_store_nothing(
    convs: ct.Conversations, clock: ct.ManualClock, make: object
) -> None:
    with pytest.raises(errors.ValidationError) as info:
        convs.ingest(make(clock))  # type: ignore[operator]
    assert isinstance(info.value, errors.InvalidIdentifier | errors.UnknownIdentifierKind)
    assert all_heads(convs.store) == []
    assert convs.store.scan("msg") == []
    assert convs.store.scan("ident") == []


def test_ingest_rejects_non_inbound(convs: ct.Conversations) -> None:
    with pytest.raises(errors.ValidationError, match="Inbound"):
        convs.ingest({"channel": "sms"})  # type: ignore[arg-type]


def test_data_survives_reopening_the_store(
    store_factory: StoreFactory, clock: ct.ManualClock
) -> None:
    first = ct.Conversations(store_factory(), clock=clock, ids=ct.SequentialIds())
    a = first.ingest(msg(clock, "SM1"))
    second = ct.Conversations(store_factory(), clock=clock, ids=ct.SequentialIds())
    again = second.ingest(msg(clock, "SM1"))
    assert again.duplicate and again.thread_id == a.thread_id
    assert len(second.events(a.thread_id)) == 2


def test_async_service_matches_the_sync_one(
    store_factory: StoreFactory, clock: ct.ManualClock
) -> None:
    async def run() -> None:
        async with ct.AsyncConversations(
            store_factory(), clock=clock, ids=ct.SequentialIds()
        ) as convs:
            a = await convs.ingest(msg(clock, "SM1"))
            b = await convs.ingest(msg(clock, "SM1"))
            assert b.duplicate and b.seq == a.seq
            s = await convs.send(a.thread_id, "hi", sender="agent:alice")
            assert s.seq == 3
            view = await convs.thread(a.thread_id)
            assert [e.seq for e in view.events] == [1, 2, 3]
            assert (await convs.customer(a.customer_id)).thread_ids == (a.thread_id,)
            assert await convs.find_customer(PHONE) == a.customer_id
            # concurrent ingests from one event loop: nothing lost, gap-free
            await asyncio.gather(*(convs.ingest(msg(clock, f"SM-{i}")) for i in range(20)))
            seqs = [e.seq for e in await convs.events(a.thread_id)]
            assert seqs == list(range(1, 24))

    asyncio.run(run())


def test_threads_writing_concurrently_lose_nothing(
    store_factory: StoreFactory, clock: ct.ManualClock
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    convs = ct.Conversations(store_factory(), clock=clock, max_retries=100)
    a = convs.ingest(msg(clock, "SM0"))

    def work(i: int) -> int:
        if i % 2:
            return convs.send(a.thread_id, f"reply {i}", sender="agent:alice").seq
        return convs.ingest(msg(clock, f"SM{i}", f"msg {i}")).seq

    with ThreadPoolExecutor(4) as pool:
        seqs = list(pool.map(work, range(1, 41)))
    assert sorted(seqs) == list(range(3, 43))
    events = convs.events(a.thread_id)
    assert [e.seq for e in events] == list(range(1, 43))
