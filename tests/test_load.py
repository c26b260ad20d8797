"""Loading ingest's context ahead (stores with ``get_multi``): same outcomes, fewer calls.

A memory store that also offers ``get_multi`` makes the service load each message's (or
batch's) context before deciding; the plain memory store reads as ingest goes. Every
journey must come out the same on both, and the loading one must make its reads in a
handful of ``get_multi`` calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings

import convthread as ct
from convthread.ports import Batch, Item, MultiGet, ThreadHead
from convthread.stores import MemoryStore
from convthread.testing import strategies as cts

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
READS = ("get", "get_many", "read", "version", "scan")


class CountingStore(MemoryStore):
    """The memory store, counting its calls by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def get(self, ns: str, key: str) -> Item | None:
        self.calls["get"] += 1
        return super().get(ns, key)

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        self.calls["get_many"] += 1
        return super().get_many(ns, keys)

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Any]:
        self.calls["read"] += 1
        return super().read(stream, after, limit)

    def commit(self, batch: Batch) -> None:
        self.calls["commit"] += 1
        super().commit(batch)


class MultiGetStore(CountingStore):
    """... that also offers ``get_multi`` and ``get_multi_heads`` (a call of either is
    one round trip, counted as ``get_multi``)."""

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        self.calls["get_multi"] += 1
        return self._entries(keys)

    def _entries(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        out: dict[tuple[str, str], Item] = {}
        for ns, key in keys:
            item = MemoryStore.get(self, ns, key)
            if item is not None:
                out[(ns, key)] = item
        return out

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        self.calls["get_multi"] += 1
        return self._entries(keys), MemoryStore.get_heads(self, tenant, thread_ids)


def pair() -> tuple[ct.Conversations, ct.Conversations]:
    plain = ct.Conversations(CountingStore(), clock=ct.ManualClock(T0), ids=ct.SequentialIds())
    multi = ct.Conversations(MultiGetStore(), clock=ct.ManualClock(T0), ids=ct.SequentialIds())
    assert not plain.config.prefetch and multi.config.prefetch
    assert isinstance(multi.store, MultiGet) and not isinstance(plain.store, MultiGet)
    return plain, multi


def calls(convs: ct.Conversations) -> Counter[str]:
    store = convs.store
    assert isinstance(store, CountingStore)
    return store.calls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cts.journeys(max_personas=3, max_steps=12))
def test_journeys_come_out_the_same_with_prefetching(journey: cts.Journey) -> None:
    plain, multi = pair()
    a = journey.play(plain)
    b = journey.play(multi)
    assert a.results == b.results


def msg(i: int, who: int, **kw: Any) -> ct.Inbound:
    return ct.Inbound(
        channel=kw.pop("channel", "sms"),
        provider_message_id=f"m{i}",
        sender=(ct.SenderIdentifier(ct.phone(f"+1415555{who:04d}"), ct.Trust.ASSERTED),),
        content=ct.Content(text=kw.pop("text", f"hello {i}")),
        sent_at=T0 + timedelta(minutes=i),
        **kw,
    )


def test_a_continuing_message_reads_in_one_call_or_three_without_hints() -> None:
    plain, multi = pair()
    for convs in (plain, multi):
        convs.ingest(msg(0, 1))
        calls(convs).clear()
        convs.ingest(msg(1, 1, channel="whatsapp"))
    # this process saw the customer's last message: everything in one call
    assert calls(multi) == Counter(get_multi=1, commit=1)
    assert sum(calls(plain)[n] for n in READS) > 3
    # another process (no hints): dedupe + identifiers; customer + open pointer; thread
    other = ct.Conversations(multi.store, clock=ct.ManualClock(T0 + timedelta(minutes=5)))
    calls(multi).clear()
    other.ingest(msg(2, 1, channel="webchat"))
    assert calls(multi) == Counter(get_multi=3, commit=1)


def test_stale_hints_cost_calls_never_correctness() -> None:
    """Process B's hints name a thread that process A has since superseded, and a
    customer A has since merged away: B's messages still land where a store without
    prefetching puts them."""
    outcomes = []
    for store in (CountingStore(), MultiGetStore()):
        clock = ct.ManualClock(T0)
        a = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
        b = ct.Conversations(store, clock=clock, ids=a.config.ids)
        phone = ct.phone("+14155550001")
        mail = ct.email("ann@example.com")

        def m(
            i: int,
            *who: ct.Identifier,
            trust: ct.Trust = ct.Trust.ASSERTED,
            at: ct.ManualClock = clock,
        ) -> ct.Inbound:
            return ct.Inbound(
                channel="sms",
                provider_message_id=f"x{i}",
                sender=tuple(ct.SenderIdentifier(w, trust) for w in who),
                sent_at=at.now(),
            )

        first = b.ingest(m(0, phone))  # B learns: phone -> customer, its live thread
        b.ingest(m(1, mail, trust=ct.Trust.VERIFIED))
        a.resolve(first.thread_id)
        clock.advance(days=30)  # past the reopen window: the next message starts anew
        moved = a.ingest(m(2, phone))
        assert moved.thread_id != first.thread_id
        later = b.ingest(m(3, phone))  # B's hint names the superseded thread
        merged = a.ingest(m(4, phone, mail, trust=ct.Trust.VERIFIED))  # A merges the two
        after = b.ingest(m(5, mail))  # B's hint names the customer merged away
        outcomes.append((first, moved, later, merged, after))
        assert later.thread_id == moved.thread_id
        assert after.customer_id == merged.customer_id
    assert outcomes[0] == outcomes[1]


def test_a_batch_reads_in_a_few_calls_whatever_its_size() -> None:
    plain, multi = pair()
    first = [msg(i, i % 20) for i in range(20)]
    batch = [msg(i, i % 20, channel="webchat") for i in range(20, 120)]
    results = []
    for convs in (plain, multi):
        convs.ingest_many(first)
        calls(convs).clear()
        results.append(convs.ingest_many(batch))
    assert results[0] == results[1]
    assert calls(multi)["commit"] == 1
    assert calls(multi)["get_multi"] <= 4
    assert sum(calls(multi)[n] for n in READS) == 0
    assert sum(calls(plain)[n] for n in READS) >= 100


def test_redelivery_and_replies_are_answered_from_the_prefetch() -> None:
    plain, multi = pair()
    out = []
    for convs in (plain, multi):
        first = convs.ingest(msg(0, 1))
        reply = convs.ingest(msg(1, 1, reply_to="m0"))
        again = convs.ingest(msg(1, 1, reply_to="m0"))
        out.append((first, reply, again))
    assert out[0] == out[1]
    assert out[1][2].duplicate and out[1][1].thread_id == out[1][0].thread_id


def test_an_automatic_merge_inside_ingest_drops_the_prefetched_reads() -> None:
    """The merge commits first; what the message then reads must be the merged state."""
    plain, multi = pair()
    out = []
    for convs in (plain, multi):
        phone = ct.phone("+14155550001")
        mail = ct.email("ann@example.com")
        convs.ingest(
            ct.Inbound(
                channel="sms",
                provider_message_id="a",
                sender=(ct.SenderIdentifier(phone, ct.Trust.ASSERTED),),
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
        out.append(convs.ingest(both))
        assert convs.find_customer(phone) == convs.find_customer(mail)
    assert out[0] == out[1]


def test_apply_prefetches_an_inbound_message_too() -> None:
    plain, multi = pair()
    out = []
    for convs in (plain, multi):
        convs.apply(msg(0, 1))
        calls(convs).clear()
        out.append(convs.apply(msg(1, 1, channel="whatsapp")))
    assert out[0] == out[1]
    assert calls(multi) == Counter(get_multi=1, commit=1)


def test_erasure_forgets_the_hints_about_the_customer() -> None:
    _plain, multi = pair()
    first = multi.ingest(msg(0, 1))
    other = multi.ingest(msg(1, 2))
    hints = multi.config.hints
    key = ct.phone("+14155550001").key
    assert hints.customer(key) == first.customer_id
    multi.erase_customer(first.customer_id)
    assert hints.customer(key) is None
    assert hints.thread(f"{first.customer_id}|") is None
    assert hints.customer(ct.phone("+14155550002").key) == other.customer_id
