"""One busy thread: hundreds of deliveries from one customer at the same instant all land
in that customer's one open thread, each stored once, gap-free, and none raises, with
the default retry budget; from one asyncio app, and from several processes at once."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread.errors import ConflictError, StoreUnavailable
from convthread.ports import Store, StreamHold
from convthread.stores import MemoryStore, SQLiteStore, open_store
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
    check_processes(shared_url)


def test_asyncio_processes_writing_one_thread_at_once_over_sqlite_store_each_once(
    tmp_path: Path,
) -> None:
    """The same with four asyncio processes over one SQLite file, each gathering its 50
    at once: their retries hold the file on a thread of their own."""
    check_processes(next(store_url_of("sqlite", tmp_path)), "async")


def check_processes(url: str, *mode: str) -> None:
    with open_store(url):
        pass  # create (migrate) it once, before the workers race to
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._busy_workers", url, f"p{n}", str(PER_PROCESS), *mode],
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


class RivalledSQLite(SQLiteStore):
    """A SQLite store whose next ``rivals`` commits outside a hold each meet a rival
    writer in the thread first (on a connection of its own, as another process would
    be), and which records its holds and, for each commit, its thread and whether it
    ran inside that thread's hold (an open transaction)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.rival = SQLiteStore(path)
        self.rivals = 0
        self.thread_id = ""
        self.holds: list[tuple[list[str], int]] = []
        self.commits: list[tuple[int, bool]] = []

    def hold(self, streams: Any) -> Any:
        self.holds.append((list(streams), threading.get_ident()))
        return super().hold(streams)

    def commit(self, batch: Any) -> None:
        held = self._conn().in_transaction
        self.commits.append((threading.get_ident(), held))
        if self.rivals and not held:
            self.rivals -= 1
            ct.Conversations(self.rival, clock=ct.ManualClock(T0)).send(
                self.thread_id, "rival", sender="agent:rival"
            )
        super().commit(batch)

    def close(self) -> None:
        self.rival.close()
        super().close()


def test_async_over_sqlite_holds_after_losing_from_the_queue(tmp_path: Path) -> None:
    """AsyncConversations over SQLite: a retry that lost from its process's queue holds
    the thread, and every store call of that attempt runs on the hold's one thread, so
    its commit is the hold's transaction. Every write lands once."""
    store = RivalledSQLite(tmp_path / "rivals.db")

    async def main() -> None:
        async with ct.AsyncConversations(store, clock=ct.ManualClock(T0)) as convs:
            first = await convs.ingest(msg("m0"))
            store.thread_id = first.thread_id
            store.rivals = 1  # one conflict: the retry, now queued, is not held
            await convs.ingest(msg("m1"))
            assert store.holds == []
            store.commits.clear()
            store.rivals = 2  # the queued retry lost too: the next attempt holds
            await convs.ingest(msg("m2"))

    asyncio.run(main())
    tid = store.thread_id
    ((streams, thread),) = store.holds
    assert streams == [tid]
    # two lost commits outside the hold, then the one inside it, on the hold's thread
    assert [held for _t, held in store.commits] == [False, False, True]
    assert store.commits[-1][0] == thread
    with SQLiteStore(tmp_path / "rivals.db") as check:
        convs = ct.Conversations(check, clock=ct.ManualClock(T0))
        events = convs.events(tid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        texts = [
            getattr(e.event.content, "text", None) for e in events if hasattr(e.event, "content")
        ]
        assert sorted(t for t in texts if t is not None) == sorted(
            [msg("m0").content.text, msg("m1").content.text, msg("m2").content.text] + ["rival"] * 3
        )
        check_store_invariants(check)


def test_a_cancelled_async_hold_over_sqlite_releases_the_write_lock(tmp_path: Path) -> None:
    """A task cancelled inside its hold, or while still waiting to enter it, leaves the
    file's write lock free: the hold's thread releases it once what it is running ends."""
    from convthread.ports import Append, Batch
    from convthread.service._drivers import HoldingThreadedAsyncStore

    path = tmp_path / "cancel.db"
    astore = HoldingThreadedAsyncStore(SQLiteStore(path))
    other = SQLiteStore(path, timeout=0.05)
    patient = SQLiteStore(path, timeout=10)
    writes = iter(range(1, 100))

    def write(store: SQLiteStore) -> None:
        n = next(writes)
        store.commit(Batch(appends=(Append(f"s{n}", 0, (b"e",)),)))

    async def holder(inside: asyncio.Event) -> None:
        async with astore.hold(["th_x"]):
            await astore.version("th_x")
            inside.set()
            await asyncio.sleep(60)

    async def main() -> None:
        # cancelled inside the hold
        inside = asyncio.Event()
        task = asyncio.create_task(holder(inside))
        await inside.wait()
        with pytest.raises(StoreUnavailable):
            write(other)  # the hold has the write lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        write(other)  # released at once

        # cancelled while its enter waits for the write lock another connection holds
        inside = asyncio.Event()
        with patient.hold(["th_x"]):
            task = asyncio.create_task(holder(inside))
            await asyncio.sleep(0.1)  # its enter is now waiting on the hold's thread
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task  # the enter got the lock after this hold ended; the leave freed it
        assert not inside.is_set()
        write(patient)
        write(other)
        await astore.close()

    try:
        asyncio.run(main())
    finally:
        other.close()
        patient.close()


def test_postgres_a_commit_to_a_held_stream_waits_for_the_hold() -> None:
    """A first attempt (no hold of its own) that commits to a held stream waits until the
    hold ends and then conflicts: the holder, which read after it, cannot lose to it."""
    require_postgres()
    from convthread.ports import Append, Batch
    from convthread.stores.postgres import PostgresStore

    schema = f"busy_{os.getpid()}_{random.randrange(10**6)}"
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        try:
            store.commit(Batch(appends=(Append("th_x", 0, (b"e1",)),)))
            done = threading.Event()
            outcome: list[BaseException | None] = []

            def rival() -> None:  # on another thread: another connection, outside the hold
                try:
                    store.commit(Batch(appends=(Append("th_x", 1, (b"rival",)),)))
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)
                done.set()

            other = threading.Thread(target=rival)
            with store.hold(["th_x"]):
                assert store.version("th_x") == 1
                other.start()
                assert not done.wait(0.3)  # still waiting for this hold
                store.commit(Batch(appends=(Append("th_x", 1, (b"holder",)),)))
            other.join(10)
            assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
            assert [r.data for r in store.read("th_x")] == [b"e1", b"holder"]
        finally:
            store.drop_schema()


def test_postgres_a_holders_commit_that_times_out_waiting_leaves_the_store_usable() -> None:
    """A holder's commit to another held stream waits up to the store's timeout, then
    raises StoreUnavailable, writes nothing, and the store goes on working."""
    require_postgres()
    from convthread.ports import Append, Batch
    from convthread.stores.postgres import PostgresStore

    schema = f"busy_{os.getpid()}_{random.randrange(10**6)}"
    with (
        PostgresStore(POSTGRES_URL, schema=schema) as first,
        PostgresStore(POSTGRES_URL, schema=schema, timeout=0.2, max_size=2) as second,
    ):
        try:
            first.commit(Batch(appends=(Append("th_x", 0, (b"x1",)), Append("th_y", 0, (b"y1",)))))
            both = Batch(appends=(Append("th_x", 1, (b"x2",)), Append("th_y", 1, (b"y2",))))
            with first.hold(["th_x"]):
                for _ in range(3):
                    with second.hold(["th_y"]), pytest.raises(StoreUnavailable):
                        second.commit(both)
            second.commit(both)
            assert [r.data for r in second.read("th_x")] == [b"x1", b"x2"]
            assert [r.data for r in second.read("th_y")] == [b"y1", b"y2"]
        finally:
            first.drop_schema()
