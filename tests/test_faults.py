"""Fault tests: concurrent processes, SIGKILLed writers, dropped PostgreSQL connections.

Scale (stated honestly): the concurrency test runs the issue's full figures, four
processes x 2,000 messages (plus 100 cross-process redeliveries each) for 200 customers
over 3 channels, on SQLite and on PostgreSQL. The SIGKILL test kills a SQLite writer 12
times at random moments after it has started acknowledging.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import convthread as ct
from convthread import codec
from convthread._heads import state_of
from convthread.errors import StoreUnavailable
from convthread.ports import Store
from convthread.service._core import (
    NS_CUSTOMER,
    NS_MSG,
    decode_msgref,
)
from convthread.stores import SQLiteStore, open_store

from ._fault_workers import message
from ._thread_util import all_heads
from .conftest import POSTGRES_URL, require_postgres

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKERS, PER_WORKER, CUSTOMERS = 4, 2000, 200


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests._fault_workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def acks(lines: str) -> dict[str, tuple[str, int]]:
    """pid -> (thread, seq) from a worker's acknowledgement lines (complete lines only)."""
    out: dict[str, tuple[str, int]] = {}
    for line in lines.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[0]] = (parts[1], int(parts[2]))
    return out


def check_store(store: Store, acked: dict[str, tuple[str, int]], expected_pids: set[str]) -> None:
    """Nothing lost, nothing duplicated, gap-free, one open thread per customer."""
    msg_entries = store.scan(NS_MSG, limit=10**7)
    stored_pids = {key.split("|", 1)[1] for key, _ in msg_entries}
    assert stored_pids == expected_pids
    heads = {h.thread_id: h for h in all_heads(store)}
    thread_ids = set(heads)
    received: Counter[str] = Counter()
    live_per_customer: Counter[str] = Counter()
    for tid in thread_ids:
        records = store.read(tid)
        assert [r.seq for r in records] == list(range(1, len(records) + 1)), tid
        state = state_of(heads[tid])
        assert state.version == len(records)
        if state.is_open:
            live_per_customer[state.customer_id] += 1
        for r in records:
            ev = codec.decode_event(r.data)
            if isinstance(ev, ct.MessageReceived):
                received[ev.provider_message_id] += 1
    assert set(received) == expected_pids
    assert max(received.values()) == 1, "a message was stored twice"
    customers = store.scan(NS_CUSTOMER, limit=10**7)
    assert len(customers) == CUSTOMERS
    assert set(live_per_customer) == {cid for cid, _ in customers}
    assert set(live_per_customer.values()) == {1}
    # Every acknowledged message is where its acknowledgement said.
    refs = {key.split("|", 1)[1]: decode_msgref(item.value) for key, item in msg_entries}
    for pid, (thread, seq) in acked.items():
        assert (refs[pid].thread_id, refs[pid].seq) == (thread, seq), pid
        data = store.read(thread, seq - 1, 1)[0].data
        ev = codec.decode_event(data)
        assert isinstance(ev, ct.MessageReceived) and ev.provider_message_id == pid


def run_workers(url: str) -> dict[str, tuple[str, int]]:
    procs = [
        spawn("ingest", url, str(w), str(PER_WORKER), str(CUSTOMERS), str((w + 1) % WORKERS))
        for w in range(WORKERS)
    ]
    acked: dict[str, tuple[str, int]] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        got = acks(out)
        for pid, where in got.items():
            assert acked.setdefault(pid, where) == where  # redeliveries agree
        assert len(out.splitlines()) == PER_WORKER + PER_WORKER // 20
    return acked


def expected_pids() -> set[str]:
    return {f"w{w}-m{i}" for w in range(WORKERS) for i in range(PER_WORKER)}


def test_four_processes_into_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "four.db"
    SQLiteStore(db).close()
    acked = run_workers(f"sqlite:///{db}")
    assert set(acked) == expected_pids()
    with SQLiteStore(db) as store:
        check_store(store, acked, expected_pids())


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_postgres()
    from convthread.stores.postgres import PostgresStore

    schema = f"faults_{os.getpid()}_{random.randrange(10**6)}"
    store = PostgresStore(POSTGRES_URL, schema=schema)
    store.drop_schema()
    store.close()
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.drop_schema()


def test_four_processes_into_postgres(pg_url: str) -> None:
    open_store(pg_url).close()  # migrate once up front
    acked = run_workers(pg_url)
    assert set(acked) == expected_pids()
    store = open_store(pg_url)
    try:
        check_store(store, acked, expected_pids())
    finally:
        store.close()


def test_sqlite_writer_killed_at_random_moments(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    SQLiteStore(db).close()
    rng = random.Random(6)
    acked: dict[str, tuple[str, int]] = {}
    for round_ in range(12):
        proc = spawn("forever", f"sqlite:///{db}", str(round_), "20")
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is running and acknowledging
        assert first, proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        rest, _err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        got = acks(first + rest)
        assert got
        acked.update(got)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        with SQLiteStore(db) as store:
            refs = (
                store.get_many(NS_MSG, [f"sms|{pid}" for pid in got])
                | store.get_many(NS_MSG, [f"whatsapp|{pid}" for pid in got])
                | store.get_many(NS_MSG, [f"email|{pid}" for pid in got])
            )
            assert len(refs) == len(got), "an acknowledged message is missing"
    # Everything acknowledged over all rounds is there, and the file is consistent.
    with SQLiteStore(db) as store:
        for pid, (thread, seq) in acked.items():
            ev = codec.decode_event(store.read(thread, seq - 1, 1)[0].data)
            assert isinstance(ev, ct.MessageReceived) and ev.provider_message_id == pid
        for head in all_heads(store):
            tid = head.thread_id
            records = store.read(tid)
            assert [r.seq for r in records] == list(range(1, len(records) + 1))


def _terminate_blocked(schema_app: str, deadline: float) -> int:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        while time.monotonic() < deadline:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'",
                (schema_app,),
            ).fetchall()
            if rows:
                for (pid,) in rows:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return len(rows)
            time.sleep(0.02)
    raise AssertionError("the store's transaction never blocked")


def test_postgres_connection_dropped_mid_transaction(pg_url: str) -> None:
    import psycopg

    from convthread.stores.postgres import PostgresStore

    schema = pg_url.rsplit("schema=", 1)[1]
    app = f"fault-{schema}"
    store = PostgresStore(POSTGRES_URL, schema=schema, application_name=app)
    convs = ct.Conversations(store, clock=ct.ManualClock(message(0, 0, 1).sent_at))
    first = convs.ingest(message(0, 0, 1))
    inbound = message(0, 1, 1)
    key = f"{inbound.channel}|{inbound.provider_message_id}".encode()

    def count_rows(conn: psycopg.Connection) -> tuple[int, int]:
        row = conn.execute(
            f'SELECT (SELECT count(*) FROM "{schema}".events), (SELECT count(*) FROM "{schema}".kv)'
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    with psycopg.connect(POSTGRES_URL, autocommit=True) as observer:
        before = count_rows(observer)
        # Another session holds an uncommitted row with the key this ingest will insert:
        # the store's transaction writes its events, then waits on that row.
        blocker = psycopg.connect(POSTGRES_URL)
        blocker.execute(
            f'INSERT INTO "{schema}".kv (ns, key, version, value) VALUES (%s, %s, 1, %s)',
            ("msg", key, b""),
        )
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                convs.ingest(inbound)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert _terminate_blocked(app, time.monotonic() + 20) == 1
        worker.join(30)
        blocker.rollback()
        blocker.close()
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
        assert "connection" in str(outcome[0]).lower()
        assert count_rows(observer) == before  # nothing half-written

    # A retry succeeds and the thread continues where it was.
    result = convs.ingest(inbound)
    assert (result.thread_id, result.seq, result.duplicate) == (first.thread_id, 3, False)
    assert [e.seq for e in convs.events(first.thread_id)] == [1, 2, 3]

    # An idle pooled connection killed by the server: reads recover on their own, and a
    # commit either succeeds or raises StoreUnavailable, after which a retry succeeds.
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        )
    assert convs.thread_state(first.thread_id).version == 3
    nxt = message(0, 2, 1)
    try:
        convs.ingest(nxt)
    except StoreUnavailable:
        convs.ingest(nxt)
    assert convs.thread_state(first.thread_id).version == 4
    convs.close()
