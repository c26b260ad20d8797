"""Busy threads: bursts of concurrent deliveries into a few threads are stored exactly
once with gap-free seqs and no errors (writers in one process queue rather than race);
a spent retry budget raises Contention, with a retry_after hint, and writes nothing."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import convthread as ct
from convthread.errors import ConflictError, Contention
from convthread.ports import Batch, Store
from convthread.service import _drivers
from convthread.stores import MemoryStore, open_store
from tests._thread_util import T0, check_store_invariants, msg

CUSTOMERS, PER_CUSTOMER = 10, 20


def burst() -> list[ct.Inbound]:
    """20 messages for each of 10 customers, each delivered twice, in a shuffled order."""
    once = [
        msg(f"c{c}-m{j}", customer=c + 1, text=f"message {j} of customer {c}")
        for c in range(CUSTOMERS)
        for j in range(PER_CUSTOMER)
    ]
    deliveries = once + once
    random.Random(7).shuffle(deliveries)
    return deliveries


def check_burst(deliveries: list[ct.Inbound], results: list[Any], store: Store) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    by_pid: dict[str, list[ct.IngestResult]] = {}
    for inbound, result in zip(deliveries, results, strict=True):
        by_pid.setdefault(inbound.provider_message_id, []).append(result)
    assert len(by_pid) == CUSTOMERS * PER_CUSTOMER
    for pid, pair in by_pid.items():
        assert sorted(r.duplicate for r in pair) == [False, True], pid  # stored once
        assert len({(r.thread_id, r.seq) for r in pair}) == 1, pid
    threads = {r.thread_id for r in results}
    assert len(threads) == CUSTOMERS
    for tid in threads:
        assert [r.seq for r in store.read(tid)] == list(range(1, PER_CUSTOMER + 2))
    check_store_invariants(store)


def test_a_burst_into_asyncio_conversations_is_stored_once(store_url: str) -> None:
    deliveries = burst()

    async def main() -> list[Any]:
        async with ct.AsyncConversations(store_url, clock=ct.ManualClock(T0)) as convs:
            return await asyncio.gather(
                *(convs.ingest(m) for m in deliveries), return_exceptions=True
            )

    results = asyncio.run(main())
    with open_store(store_url) as store:
        check_burst(deliveries, results, store)


def test_a_burst_from_threads_is_stored_once(store_url: str) -> None:
    deliveries = burst()
    with ct.Conversations(store_url, clock=ct.ManualClock(T0)) as convs:

        def ingest(inbound: ct.Inbound) -> Any:
            try:
                return convs.ingest(inbound)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(ingest, deliveries))
        check_burst(deliveries, results, convs.store)


class Rivalled(MemoryStore):
    """A memory store where, before each of the next ``rivals`` commits, another writer
    sends a message into the thread first: the commit then conflicts."""

    def __init__(self) -> None:
        super().__init__()
        self.rivals = 0
        self.thread_id = ""
        self.attempts = 0  # commits other than the rivals'
        self._rivalling = False

    def commit(self, batch: Batch) -> None:
        if self._rivalling:
            super().commit(batch)
            return
        self.attempts += 1
        if self.rivals:
            self.rivals -= 1
            self._rivalling = True
            try:
                rival = ct.Conversations(self, clock=ct.ManualClock(T0))
                rival.send(self.thread_id, "first!", sender="agent:rival")
            finally:
                self._rivalling = False
        super().commit(batch)


def rivalled() -> tuple[Rivalled, ct.Conversations, str]:
    store = Rivalled()
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    store.thread_id = convs.ingest(msg("m0")).thread_id
    return store, convs, store.thread_id


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_a_spent_budget_raises_contention(max_retries: int) -> None:
    store, convs, tid = rivalled()
    convs.config.max_retries = max_retries
    store.rivals = 100  # every attempt meets a rival
    before = store.attempts
    with pytest.raises(Contention) as caught:
        convs.send(tid, "hello", sender="agent:ann")
    err = caught.value
    assert isinstance(err, ConflictError)  # existing handlers keep working
    assert err.attempts == max_retries + 1
    assert store.attempts - before == max_retries + 1
    assert 0 < err.retry_after <= _drivers.BACKOFF_CAP
    assert "retry in about" in str(err)
    texts = [e.event.content.text for e in convs.events(tid) if isinstance(e.event, ct.MessageSent)]
    assert texts == ["first!"] * (max_retries + 1)  # the refused send wrote nothing
    store.rivals = 0
    assert convs.send(tid, "hello", sender="agent:ann").seq == convs.thread_state(tid).version


def test_a_budget_that_outlasts_the_rivals_succeeds() -> None:
    store, convs, tid = rivalled()
    convs.config.max_retries = 3
    store.rivals = 3
    assert convs.send(tid, "hello", sender="agent:ann").seq == 2 + 3 + 1


def test_asyncio_contention_carries_the_same_hint() -> None:
    store, _sync, tid = rivalled()
    store.rivals = 100

    async def main() -> Contention:
        convs = ct.AsyncConversations(store, clock=ct.ManualClock(T0), max_retries=2)
        with pytest.raises(Contention) as caught:
            await convs.send(tid, "hello", sender="agent:ann")
        return caught.value

    err = asyncio.run(main())
    assert err.attempts == 3 and err.retry_after > 0


def test_a_cancelled_writer_leaves_the_queue_usable(tmp_path: Any) -> None:
    """Writers cancelled while queued (a web client that went away) neither wedge the
    queue nor leave it counted as busy."""
    deliveries = burst()[:120]

    async def main() -> tuple[list[Any], int]:
        async with ct.AsyncConversations(
            f"sqlite:///{tmp_path / 'c.db'}", clock=ct.ManualClock(T0)
        ) as convs:
            tasks = [asyncio.ensure_future(convs.ingest(m)) for m in deliveries]
            await asyncio.sleep(0.05)
            for task in tasks[::3]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gate = _drivers._async_gate(convs.store)
            queued_after = gate.queued
            results = await asyncio.gather(*(convs.ingest(m) for m in deliveries))
            return results, queued_after

    results, queued_after = asyncio.run(main())
    assert queued_after == 0
    by_pid = {(r.thread_id, r.seq, r.event.provider_message_id) for r in results}
    assert len(by_pid) == len({m.provider_message_id for m in deliveries})  # each stored once
    with open_store(f"sqlite:///{tmp_path / 'c.db'}") as store:
        check_store_invariants(store)
