"""One busy thread: hundreds of deliveries from one customer at the same instant all land
in that customer's one open thread, each stored once, gap-free, and none raises, with
the default retry budget; from one asyncio app, and from several processes at once."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread.ports import Store, StreamHold
from convthread.stores import MemoryStore, open_store
from tests._thread_util import T0, check_store_invariants, msg
from tests.conftest import POSTGRES_URL, require_postgres

ROOT = Path(__file__).resolve().parent.parent
BURST = 400


def deliveries(prefix: str, count: int) -> list[ct.Inbound]:
    """``count`` distinct messages from one customer (so into one open thread)."""
    return [msg(f"{prefix}-{i}", text=f"{prefix} {i}") for i in range(count)]


def check_one_thread(results: list[Any], store: Store, *, count: int) -> str:
    """Every delivery stored once in one thread, seqs 1..count+1 (the thread's opening
    event and one per message); returns the thread id."""
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, (len(errors), errors[:3])
    assert not any(r.duplicate for r in results)
    threads = {r.thread_id for r in results}
    assert len(threads) == 1, threads
    (tid,) = threads
    assert sum(r.new_thread for r in results) == 1
    assert sorted(r.seq for r in results) == list(range(2, count + 2))
    assert [r.seq for r in store.read(tid)] == list(range(1, count + 2))
    check_store_invariants(store)
    return tid


def store_url_of(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh SQLite file or PostgreSQL schema (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'busy.db'}"
        return
    require_postgres()
    from convthread.stores.postgres import PostgresStore

    schema = f"busy_{os.getpid()}_{random.randrange(10**6)}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.drop_schema()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | MemoryStore]:
    """What AsyncConversations is opened on: a memory store, or a store URL."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        yield from store_url_of(request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store several processes open by URL."""
    yield from store_url_of(request.param, tmp_path)


def test_a_burst_into_one_thread_from_asyncio_is_stored_once(target: str | MemoryStore) -> None:
    burst = deliveries("m", BURST)

    async def main() -> tuple[list[Any], list[Any]]:
        convs = ct.AsyncConversations(target, clock=ct.ManualClock(T0))
        try:
            first = await asyncio.gather(*(convs.ingest(m) for m in burst), return_exceptions=True)
            again = await asyncio.gather(*(convs.ingest(m) for m in burst), return_exceptions=True)
        finally:
            if not isinstance(target, MemoryStore):  # the memory store is read below
                await convs.close()
        return first, again

    first, again = asyncio.run(main())
    store = target if isinstance(target, MemoryStore) else open_store(target)
    try:
        tid = check_one_thread(first, store, count=BURST)
        errors = [r for r in again if isinstance(r, BaseException)]
        assert not errors, (len(errors), errors[:3])
        assert all(r.duplicate for r in again)
        assert [(r.thread_id, r.seq) for r in again] == [(r.thread_id, r.seq) for r in first]
        assert store.version(tid) == BURST + 1  # the redeliveries stored nothing
    finally:
        store.close()


PROCESSES, PER_PROCESS = 4, 50


def test_processes_writing_one_thread_at_once_store_each_once(shared_url: str) -> None:
    """Four processes, 50 messages each from the same customer, with the sync API and
    its default retry budget: every one stored once in one thread, none raises."""
    url = shared_url
    with open_store(url):
        pass  # create (migrate) it once, before the workers race to
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._busy_workers", url, f"p{n}", str(PER_PROCESS)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    for proc in procs:  # all started and connected: release them together
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    lines = [line.split() for out in outputs for line in out.splitlines()]
    failed = [line for line in lines if line[0] != "ok"]
    assert not failed, failed[:3]
    with open_store(url) as store, ct.Conversations(store, clock=ct.ManualClock(T0)) as convs:
        tids = {tid for _ok, tid, _seq in lines}
        assert len(tids) == 1
        (tid,) = tids
        assert sorted(int(seq) for *_x, seq in lines) == list(range(2, PROCESSES * PER_PROCESS + 2))
        events = convs.events(tid)
        assert [e.seq for e in events] == list(range(1, PROCESSES * PER_PROCESS + 2))
        texts = [e.event.content.text for e in events if isinstance(e.event, ct.MessageReceived)]
        assert sorted(texts) == sorted(
            f"p{n} {i}" for n in range(PROCESSES) for i in range(PER_PROCESS)
        )
        check_store_invariants(store)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_hold_keeps_other_holders_out_until_it_ends(kind: str, tmp_path: Path) -> None:
    """What the retries of a busy thread queue on: a second holder of the stream (another
    connection, as another process would be) gets in only after the first has left, and
    then reads what the first committed."""
    import threading

    from convthread.ports import Append, Batch

    url = next(store_url_of(kind, tmp_path))
    with open_store(url) as store:
        assert isinstance(store, StreamHold)
        store.commit(Batch(appends=(Append("th_x", 0, (b"e1",)),)))
        entered = threading.Event()
        seen: list[int] = []

        def second() -> None:
            entered.wait()
            with store.hold(["th_x"]):
                seen.append(store.version("th_x"))

        other = threading.Thread(target=second)
        other.start()
        with store.hold(["th_x"]):
            assert store.version("th_x") == 1
            entered.set()
            other.join(0.3)
            assert other.is_alive()  # still waiting for this hold
            store.commit(Batch(appends=(Append("th_x", 1, (b"e2",)),)))
        other.join(10)
        assert seen == [2]
        if kind == "postgres":
            store.drop_schema()  # type: ignore[attr-defined]


class Counting(MemoryStore):
    """A memory store that can hold (and counts how often), and whose next ``rivals``
    commits each meet a rival writer in the thread first, as if from another process."""

    def __init__(self) -> None:
        super().__init__()
        self.holds: list[list[str]] = []
        self.rivals = 0
        self.thread_id = ""
        self._rivalling = False

    def hold(self, streams: Any) -> Any:
        import contextlib

        self.holds.append(list(streams))
        return contextlib.nullcontext()

    def commit(self, batch: Any) -> None:
        if self.rivals and not self._rivalling:
            self.rivals -= 1
            self._rivalling = True
            try:
                ct.Conversations(self, clock=ct.ManualClock(T0)).send(
                    self.thread_id, "rival", sender="agent:rival"
                )
            finally:
                self._rivalling = False
        super().commit(batch)


def test_a_retry_holds_the_thread_only_after_losing_from_the_queue() -> None:
    store = Counting()
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    tid = store.thread_id = convs.ingest(msg("m0")).thread_id
    store.rivals = 1  # one conflict: the retry, now queued, is not held
    convs.ingest(msg("m1"))
    assert store.holds == []
    store.rivals = 3  # the queued retry lost too: the next attempts hold the thread
    r = convs.ingest(msg("m2"))
    assert store.holds == [[tid], [tid]]
    assert [e.seq for e in convs.events(tid)] == list(range(1, r.seq + 1))
