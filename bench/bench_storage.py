"""The storage figures in one run, each as a ratio against its baseline measured beside it.

    python bench/bench_storage.py [--quick] [--only ROW [ROW ...]] [--url URL] [--json]

Rows (``--only`` picks some): ``memory``, ``sqlite``, ``many``, ``bytes``, ``pg``,
``pg-many``, ``pg-four``.

* ``memory``: ``ingest`` into ``memory://`` against the ingest floor in memory
  (``FloorMemory`` of ``../shared/perf/floor.py``, the least work the common path must do:
  dedupe, customer lookup, open thread, one positional event, a compare-and-set on the
  thread's last seq). Skipped with a message when the floor file is not beside the project.
* ``sqlite``: ``ingest``, one commit per message, against plain ``sqlite3`` inserting the
  reference message as one 12-column row per commit (same PRAGMAs: WAL, synchronous=FULL;
  a unique index on the provider id and an index on (thread, seq), as a plain table of
  messages would have).
* ``many``: ``ingest_many`` of 100 messages per call against plain ``sqlite3`` at 100 rows
  per commit.
* ``bytes``: file bytes per message after a checkpoint, steady state (20 messages per
  customer), convthread against the plain table.
* ``pg``, ``pg-many``: the same two comparisons on PostgreSQL against plain psycopg (the
  12-column row, one per transaction, then 100 per transaction).
* ``pg-four``: four processes ingesting at once (one message per transaction), against
  one process, both convthread: the ratio says whether more processes add throughput.

The reference message is bench_ingest's: channel, provider id, sender phone (asserted), a
200-character text, 5 metadata items, provider time, recipient, and the customer, thread
and sequence ids convthread adds. Each ratio is "convthread's rate / the baseline's rate"
(``bytes``: convthread's bytes / the baseline's), both measured in this run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import convthread as ct
from convthread.stores import MemoryStore, SQLiteStore

URL = os.environ.get("CONVTHREAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]
META = {"campaign": "spring", "locale": "en-GB", "segment": "gold", "device": "ios", "ab": "b"}
FLOOR = Path(__file__).resolve().parents[2] / "shared" / "perf" / "floor.py"

_COLUMNS = (
    "thread_id TEXT, seq INTEGER, customer_id TEXT, channel TEXT, provider_message_id TEXT "
    "UNIQUE, sender TEXT, trust TEXT, text TEXT, metadata TEXT, sent_at TEXT, recipient TEXT"
)
_INSERT = (
    "INSERT INTO messages (thread_id, seq, customer_id, channel, provider_message_id, sender, "
    "trust, text, metadata, sent_at, recipient) VALUES ({})"
)


def reference_messages(n: int, customers: int, worker: int = 0) -> list[ct.Inbound]:
    senders = [
        (ct.SenderIdentifier(ct.phone(f"+4479{worker}11{i:05d}"), ct.Trust.ASSERTED),)
        for i in range(customers)
    ]
    return [
        ct.Inbound(
            channel="sms",
            provider_message_id=f"SM{worker}{i:011d}",
            sender=senders[i % customers],
            content=ct.Content(text=TEXT, metadata=META),
            sent_at=T0 + timedelta(seconds=i),
            recipient="+441234567890",
        )
        for i in range(n)
    ]


def plain_row(i: int, m: ct.Inbound, customers: int) -> tuple[Any, ...]:
    return (
        f"th_{i % customers}",
        i // customers + 1,
        f"cu_{i % customers}",
        m.channel,
        m.provider_message_id,
        m.sender[0].identifier.value,
        m.sender[0].trust.value,
        m.content.text,
        json.dumps(m.content.metadata),
        m.sent_at.isoformat(),
        m.recipient,
    )


# --------------------------------------------------------------------------- memory


def load_floor() -> ModuleType | None:
    if not FLOOR.exists():
        return None
    spec = importlib.util.spec_from_file_location("convthread_floor", FLOOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row_memory(n: int) -> dict[str, float] | str:
    floor = load_floor()
    if floor is None:
        return f"skipped: {FLOOR} not found"
    messages = reference_messages(n, 1_000)
    convs = ct.Conversations(MemoryStore(), clock=ct.ManualClock(T0))
    start = time.perf_counter()
    for m in messages:
        convs.ingest(m)
    ours = n / (time.perf_counter() - start)
    start = time.perf_counter()
    floor.FloorMemory().run(messages, T0)
    base = n / (time.perf_counter() - start)
    return {"convthread": ours, "baseline": base, "ratio": ours / base}


# --------------------------------------------------------------------------- SQLite


def plain_sqlite(path: Path, messages: Sequence[ct.Inbound], per_txn: int, customers: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"CREATE TABLE messages (id INTEGER PRIMARY KEY, {_COLUMNS})")
    conn.execute("CREATE INDEX messages_thread ON messages (thread_id, seq)")
    insert = _INSERT.format(", ".join("?" * 11))
    rows = [plain_row(i, m, customers) for i, m in enumerate(messages)]
    start = time.perf_counter()
    for at in range(0, len(rows), per_txn):
        conn.execute("BEGIN")
        conn.executemany(insert, rows[at : at + per_txn])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return len(rows) / elapsed


def ours_sqlite(path: Path, messages: Sequence[ct.Inbound], per_call: int) -> float:
    store = SQLiteStore(path)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    start = time.perf_counter()
    if per_call == 1:
        for m in messages:
            convs.ingest(m)
    else:
        for at in range(0, len(messages), per_call):
            convs.ingest_many(messages[at : at + per_call])
    elapsed = time.perf_counter() - start
    store.close()
    return len(messages) / elapsed


def row_sqlite(n: int, per_call: int) -> dict[str, float]:
    messages = reference_messages(n, 1_000)
    with tempfile.TemporaryDirectory() as tmp:
        base = plain_sqlite(Path(tmp) / "plain.db", messages, per_call, 1_000)
        ours = ours_sqlite(Path(tmp) / "ct.db", messages, per_call)
    return {"convthread": ours, "baseline": base, "ratio": ours / base}


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def row_bytes(n: int) -> dict[str, float]:
    customers = max(n // 20, 1)
    messages = reference_messages(n, customers)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.db"
        plain_sqlite(plain, messages, 100, customers)
        ct_path = Path(tmp) / "ct.db"
        store = SQLiteStore(ct_path)
        convs = ct.Conversations(store, clock=ct.ManualClock(T0))
        for at in range(0, n, 100):
            convs.ingest_many(messages[at : at + 100])
        store.close()  # checkpoints the WAL into the file
        ours, base = file_bytes(ct_path) / n, file_bytes(plain) / n
    return {"convthread": ours, "baseline": base, "ratio": ours / base}


# --------------------------------------------------------------------------- PostgreSQL


def _pg_schema(url: str) -> str:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def _pg_drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def plain_pg(url: str, messages: Sequence[ct.Inbound], per_txn: int) -> float:
    import psycopg

    schema = _pg_schema(url)
    try:
        with psycopg.connect(url) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(f"CREATE TABLE messages (id bigserial PRIMARY KEY, {_COLUMNS})")
            conn.execute("CREATE INDEX messages_thread ON messages (thread_id, seq)")
            conn.commit()
            insert = _INSERT.format(", ".join(["%s"] * 11))
            rows = [plain_row(i, m, 1_000) for i, m in enumerate(messages)]
            start = time.perf_counter()
            with conn.cursor() as cur:
                for at in range(0, len(rows), per_txn):
                    cur.executemany(insert, rows[at : at + per_txn])
                    conn.commit()
            return len(rows) / (time.perf_counter() - start)
    finally:
        _pg_drop(url, schema)


def ours_pg(url: str, schema: str, messages: Sequence[ct.Inbound], per_call: int) -> float:
    from convthread.stores.postgres import PostgresStore

    store = PostgresStore(url, schema=schema)
    try:
        convs = ct.Conversations(store, clock=ct.ManualClock(T0))
        start = time.perf_counter()
        if per_call == 1:
            for m in messages:
                convs.ingest(m)
        else:
            for at in range(0, len(messages), per_call):
                convs.ingest_many(messages[at : at + per_call])
        return len(messages) / (time.perf_counter() - start)
    finally:
        store.close()


def row_pg(url: str, n: int, per_call: int) -> dict[str, float]:
    messages = reference_messages(n, 1_000)
    base = plain_pg(url, messages, per_call)
    schema = _pg_schema(url)
    try:
        ours = ours_pg(url, schema, messages, per_call)
    finally:
        _pg_drop(url, schema)
    return {"convthread": ours, "baseline": base, "ratio": ours / base}


def _pg_worker(args: tuple[str, str, int, int]) -> float:
    url, schema, worker, n = args
    return ours_pg(url, schema, reference_messages(n, 250, worker=worker), 1)


def _timed_processes(url: str, schema: str, workers: int, n: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        # open the schema once so the workers do not race to create it
        from convthread.stores.postgres import PostgresStore

        PostgresStore(url, schema=schema).close()
        start = time.perf_counter()
        pool.map(_pg_worker, [(url, schema, w, n) for w in range(workers)])
        return workers * n / (time.perf_counter() - start)


def row_pg_four(url: str, n: int) -> dict[str, float]:
    rates = []
    for workers in (1, 4):
        schema = _pg_schema(url)
        try:
            rates.append(_timed_processes(url, schema, workers, n))
        finally:
            _pg_drop(url, schema)
    return {"convthread": rates[1], "baseline": rates[0], "ratio": rates[1] / rates[0]}


# --------------------------------------------------------------------------- main

_AIMS = {
    "memory": ("memory ingest / floor in memory", ">= 0.2"),
    "sqlite": ("SQLite ingest, 1 commit/msg / plain sqlite3", ">= 0.8"),
    "many": ("SQLite ingest_many(100) / plain sqlite3, 100 rows/commit", ">= 0.6"),
    "bytes": ("SQLite bytes/msg (20 msgs/customer) / plain row", "<= 1.2"),
    "pg": ("PostgreSQL ingest, 1 msg/txn / plain psycopg", ">= 0.9"),
    "pg-many": ("PostgreSQL ingest_many(100) / plain psycopg, 100/txn", ">= 0.8"),
    "pg-four": ("PostgreSQL 4 processes / 1 process (msg/s)", ">= 1.0"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(_AIMS), default=sorted(_AIMS))
    parser.add_argument("--url", default=URL, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    q = args.quick
    runs: dict[str, Callable[[], dict[str, float] | str]] = {
        "memory": lambda: row_memory(2_000 if q else 20_000),
        "sqlite": lambda: row_sqlite(300 if q else 2_000, 1),
        "many": lambda: row_sqlite(2_000 if q else 20_000, 100),
        "bytes": lambda: row_bytes(2_000 if q else 20_000),
        "pg": lambda: row_pg(args.url, 300 if q else 2_000, 1),
        "pg-many": lambda: row_pg(args.url, 2_000 if q else 20_000, 100),
        "pg-four": lambda: row_pg_four(args.url, 200 if q else 1_000),
    }
    results: dict[str, dict[str, float] | str] = {}
    for name in [n for n in _AIMS if n in args.only]:
        try:
            results[name] = runs[name]()
        except Exception as exc:  # a missing server is a figure we could not take, say so
            results[name] = f"failed: {type(exc).__name__}: {exc}"
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return
    print(f"convthread bench_storage ({'quick' if q else 'full'} run)")
    for name, result in results.items():
        label, aim = _AIMS[name]
        if isinstance(result, str):
            print(f"  {label:<58} {result}")
            continue
        unit = "B/msg" if name == "bytes" else "msg/s"
        print(
            f"  {label:<58} {result['ratio']:5.2f}  (aim {aim}; "
            f"{result['convthread']:,.0f} vs {result['baseline']:,.0f} {unit})"
        )


if __name__ == "__main__":
    main()
