"""PostgreSQL ingest figures with a plain-psycopg baseline in the same run, and the
on-disk bytes per reference message on SQLite next to a plain-sqlite3 row.

    python bench/bench_postgres.py [--quick] [--url URL] [--messages N] [--batch B]
                                   [--only ROW [ROW ...]]

``--only`` runs some of the rows: ``single`` (1 message per transaction), ``store``
(store.commit only), ``batch`` (B messages per transaction), ``four`` (4 processes),
``sqlite`` (bytes per message and the event's anatomy).

PostgreSQL (URL default: $CONVTHREAD_TEST_POSTGRES_URL or
postgresql://postgres@127.0.0.1:5432/test; every run uses fresh schemas, dropped after):

* convthread, one ``ingest()`` per message, one process and four processes;
* convthread, ``ingest_many()`` of B messages per transaction, one process;
* the baseline: the **same rows** convthread wrote (captured by running the same messages
  against a recording store), inserted with plain psycopg into tables of the same shape
  (same primary keys): one transaction per message, then one per B messages, one process
  and four processes. The baseline does no reads, no checks and no encoding: it is the
  floor for "store these rows durably". It deletes the index entries convthread deletes
  too (without them it would write less, and its tables would hold fewer dead rows).

SQLite: the reference message (12 fields: channel, provider message id, sender phone and
trust, a 200-character text, 5 metadata items, the provider timestamp, recipient, and the
customer, thread and sequence ids) ingested N times, file bytes per message after a
checkpoint, next to a plain ``sqlite3`` table with one row of the same 12 fields per
message (same PRAGMAs, a unique index on the provider id and an index on (thread, seq),
as convthread's primary keys give it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

import convthread as ct
from convthread import codec
from convthread.ports import Batch, Item, Recorded
from convthread.stores import MemoryStore, SQLiteStore
from convthread.stores.postgres import PostgresStore

URL = os.environ.get("CONVTHREAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]
META = {"campaign": "spring", "locale": "en-GB", "segment": "gold", "device": "ios", "ab": "b"}


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


class WorkerIds:
    """Ids unique per worker (so captured rows of four workers never collide)."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.n = 0

    def new_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.worker}_{self.n:09d}"


class Recording:
    """A MemoryStore that keeps every committed batch."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.batches: list[Batch] = []

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return self.inner.read(stream, after, limit)

    def version(self, stream: str) -> int:
        return self.inner.version(stream)

    def get(self, ns: str, key: str) -> Item | None:
        return self.inner.get(ns, key)

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return self.inner.get_many(ns, keys)

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return self.inner.scan(ns, prefix, after, limit)

    def commit(self, batch: Batch) -> None:
        self.inner.commit(batch)
        self.batches.append(batch)

    def scrub(self) -> None:
        self.inner.scrub()

    def close(self) -> None:
        self.inner.close()


#: One transaction's rows: events (stream, seq, data), puts (ns, key, value) and deletes
#: (ns, key).
Rows = tuple[list[tuple[str, int, bytes]], list[tuple[str, bytes, bytes]], list[tuple[str, bytes]]]


def captured_rows(messages: list[ct.Inbound], worker: int, batch: int) -> list[Rows]:
    """The rows convthread writes, one entry per transaction (per message, or per
    ``batch`` messages when batch > 1)."""
    return [_rows(b) for b in captured_batches(messages, worker, batch)]


def _rows(b: Batch) -> Rows:
    events = [(a.stream, a.expected + i + 1, d) for a in b.appends for i, d in enumerate(a.events)]
    puts = [(p.ns, p.key.encode(), p.value) for p in b.puts]
    return events, puts, [(d.ns, d.key.encode()) for d in b.deletes]


def captured_batches(messages: list[ct.Inbound], worker: int, batch: int) -> list[Batch]:
    """The batches convthread commits for ``messages`` (ids unique per worker)."""
    rec = Recording()
    convs = ct.Conversations(rec, clock=ct.ManualClock(T0), ids=WorkerIds(worker))  # type: ignore[arg-type]
    if batch <= 1:
        for m in messages:
            convs.ingest(m)
    else:
        for i in range(0, len(messages), batch):
            convs.ingest_many(messages[i : i + batch])
    return rec.batches


BASE_DDL = (
    'CREATE TABLE "{s}".events (stream text COLLATE "C" NOT NULL, seq bigint NOT NULL, '
    "data bytea NOT NULL, PRIMARY KEY (stream, seq))",
    'CREATE TABLE "{s}".kv (ns text COLLATE "C" NOT NULL, key bytea NOT NULL, '
    "version bigint NOT NULL, value bytea NOT NULL, PRIMARY KEY (ns, key))",
)


def baseline_insert(url: str, schema: str, transactions: list[Rows]) -> float:
    """Plain psycopg: the same rows, one transaction each; seconds taken. The index
    entries convthread deletes (an open thread's activity key moves with each message)
    are deleted too: dead rows make later writes dearer, so a baseline that skipped them
    would do less work as the tables grow."""
    with psycopg.connect(url) as conn:
        ev_sql = f'INSERT INTO "{schema}".events (stream, seq, data) VALUES (%s, %s, %s)'
        kv_sql = (
            f'INSERT INTO "{schema}".kv AS k (ns, key, version, value) VALUES (%s, %s, 1, %s) '
            "ON CONFLICT (ns, key) DO UPDATE SET version = k.version + 1, value = excluded.value"
        )
        del_sql = f'DELETE FROM "{schema}".kv WHERE ns = %s AND key = %s'
        start = time.perf_counter()
        for events, kv, deletes in transactions:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(ev_sql, events)
                cur.executemany(kv_sql, kv)
                if deletes:
                    cur.executemany(del_sql, deletes)
        return time.perf_counter() - start


def make_schema(url: str, baseline: bool) -> str:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        if baseline:
            for ddl in BASE_DDL:
                conn.execute(ddl.replace("{s}", schema))
    return schema


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def store_level(url: str, messages: list[ct.Inbound], rounds: int) -> tuple[float, float]:
    """PostgresStore.commit of the batches convthread writes vs plain psycopg inserts of
    the same rows, one transaction per message, interleaved; (store s, baseline s)."""
    batches = captured_batches(messages, 0, 1)
    schema, base = make_schema(url, False), make_schema(url, True)
    store = PostgresStore(url, schema=schema, max_size=2)
    t_store = t_base = 0.0
    try:
        size = -(-len(batches) // rounds)
        for start in range(0, len(batches), size):
            chunk = batches[start : start + size]
            t0 = time.perf_counter()
            for b in chunk:
                store.commit(b)
            t_store += time.perf_counter() - t0
            t_base += baseline_insert(url, base, [_rows(b) for b in chunk])
    finally:
        store.close()
        drop_schema(url, schema)
        drop_schema(url, base)
    return t_store, t_base


def interleaved(
    url: str, messages: list[ct.Inbound], batch: int, rounds: int
) -> tuple[float, float]:
    """convthread and the baseline over the same messages, alternating in ``rounds``
    chunks so both see the same machine load; (convthread seconds, baseline seconds)."""
    rows = captured_rows(messages, 0, batch)  # one entry per transaction
    per_tx = max(batch, 1)
    schema, base = make_schema(url, False), make_schema(url, True)
    store = PostgresStore(url, schema=schema, max_size=2)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    t_ct = t_base = 0.0
    try:
        size = -(-len(messages) // rounds)
        size = -(-size // per_tx) * per_tx
        for start in range(0, len(messages), size):
            chunk = messages[start : start + size]
            t0 = time.perf_counter()
            if batch <= 1:
                for m in chunk:
                    convs.ingest(m)
            else:
                for i in range(0, len(chunk), batch):
                    convs.ingest_many(chunk[i : i + batch])
            t_ct += time.perf_counter() - t0
            t_base += baseline_insert(url, base, rows[start // per_tx : (start + size) // per_tx])
    finally:
        store.close()
        drop_schema(url, schema)
        drop_schema(url, base)
    return t_ct, t_base


# -- four processes: each worker is told when to start, so only the work is timed


def _worker(
    kind: str, url: str, schema: str, worker: int, n: int, customers: int, ready: Any
) -> float:
    messages = reference_messages(n, customers, worker)
    if kind == "convthread":
        store = PostgresStore(url, schema=schema, max_size=2)
        convs = ct.Conversations(store, clock=ct.ManualClock(T0))
        store.get("customer", "warm-up")  # the pool's connection is open
        ready.wait()
        start = time.perf_counter()
        for m in messages:
            convs.ingest(m)
        elapsed = time.perf_counter() - start
        store.close()
        return elapsed
    rows = captured_rows(messages, worker, 1)
    ready.wait()
    return baseline_insert(url, schema, rows)


def four_processes(kind: str, url: str, schema: str, n: int, customers: int) -> float:
    """Wall time from the moment all four workers are ready until the last finishes."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        ready = manager.Barrier(5)
        with ctx.Pool(4) as pool:
            pending = pool.starmap_async(
                _worker, [(kind, url, schema, w, n, customers, ready) for w in range(4)]
            )
            ready.wait(timeout=300)
            start = time.perf_counter()
            pending.get(timeout=900)
            return time.perf_counter() - start


# -- SQLite bytes per message


def sqlite_bytes(n: int, customers: int, tmp: Path) -> tuple[float, float, dict[str, int]]:
    messages = reference_messages(n, customers)
    path = tmp / "bytes.db"
    store = SQLiteStore(path)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    for i in range(0, n, 100):
        convs.ingest_many(messages[i : i + 100])
    store.scrub()  # checkpoint: everything is in the main file
    conn = sqlite3.connect(path)
    conn.execute("VACUUM")
    per_table: dict[str, int] = {}
    try:
        for name, size in conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ):
            per_table[name] = int(size)
    except sqlite3.OperationalError:
        pass  # no dbstat in this build
    conn.close()
    store.close()
    ct_bytes = path.stat().st_size / n

    base = tmp / "plain.db"
    conn = sqlite3.connect(base, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, thread_id TEXT, seq INTEGER, "
        "customer_id TEXT, channel TEXT, provider_message_id TEXT UNIQUE, sender TEXT, "
        "trust TEXT, text TEXT, metadata TEXT, sent_at TEXT, recipient TEXT)"
    )
    conn.execute("CREATE INDEX messages_thread ON messages (thread_id, seq)")
    conn.execute("BEGIN")
    for i, m in enumerate(messages):
        conn.execute(
            "INSERT INTO messages (thread_id, seq, customer_id, channel, provider_message_id, "
            "sender, trust, text, metadata, sent_at, recipient) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"th_01kc{i % customers:022d}",
                i // customers + 2,
                f"cu_01kc{i % customers:022d}",
                m.channel,
                m.provider_message_id,
                m.sender[0].identifier.value,
                m.sender[0].trust.value,
                m.content.text,
                json.dumps(m.content.metadata),
                m.sent_at.isoformat(),
                m.recipient,
            ),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    return ct_bytes, base.stat().st_size / n, per_table


def event_anatomy(n: int, customers: int) -> tuple[float, float, float, float]:
    """Average bytes of a message_received event, of its field names, and of its
    decision/resolution subtrees (what the plain row does not store)."""
    import msgspec

    rec = Recording()
    convs = ct.Conversations(rec, clock=ct.ManualClock(T0))  # type: ignore[arg-type]
    for m in reference_messages(n, customers):
        convs.ingest(m)
    sizes, names, decisions, empties = [], [], [], []

    def empty_bytes(value: Any) -> int:
        """Bytes of entries holding None, "", [] or {} (what omit_defaults would drop)."""
        if isinstance(value, dict):
            return sum(
                len(k) + 2 if v in (None, "", [], {}) else empty_bytes(v) for k, v in value.items()
            )
        if isinstance(value, list):  # a positional struct: a default takes one byte
            return sum(1 if v in (None, "", [], {}) else empty_bytes(v) for v in value)
        return 0

    def key_bytes(value: Any) -> int:
        if isinstance(value, dict):
            return sum(len(k) + 1 + key_bytes(v) for k, v in value.items())
        if isinstance(value, list):
            return sum(key_bytes(v) for v in value)
        return 0

    for b in rec.batches:
        for a in b.appends:
            for data in a.events:
                # A record is a version byte and an array (no field names), or a 0.1.0 map.
                positional = data[0] == codec.FORMAT_VERSION
                obj = msgspec.msgpack.decode(data[1:] if positional else data)
                tag = obj[0] if positional else obj.get("type")
                if tag != "message_received":
                    continue
                event = codec.decode_event(data)
                sizes.append(len(data))
                empties.append(empty_bytes(obj))
                names.append(key_bytes(obj))
                decisions.append(
                    sum(
                        len(msgspec.msgpack.encode(getattr(event, k)))
                        for k in ("decision", "resolution")
                    )
                )
    count = max(len(sizes), 1)
    return (
        sum(sizes) / count,
        sum(names) / count,
        sum(decisions) / count,
        sum(empties) / count,
    )


#: The rows ``--only`` may name.
ROWS = ("single", "store", "batch", "four", "sqlite")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--url", default=URL)
    parser.add_argument("--messages", type=int, default=None, help="per process")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--only", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW", help="rows to run"
    )
    args = parser.parse_args()
    only = set(args.only)
    n = args.messages or (200 if args.quick else 2_000)
    n4 = max(n // 2, 50)
    customers = max(n // 10, 10)
    batch = args.batch
    url = args.url

    messages = reference_messages(n, customers)
    results: list[tuple[str, float, float]] = []  # (label, convthread msg/s, baseline msg/s)
    if "single" in only:
        t_ct, t_base = interleaved(url, messages, 1, 10)
        results.append(("1 process, 1 message per transaction", n / t_ct, n / t_base))
    if "store" in only:
        t_st, t_base = store_level(url, messages, 10)
        results.append(("store.commit only, 1 message per transaction", n / t_st, n / t_base))
    if "batch" in only:
        t_ct, t_base = interleaved(url, messages, batch, 5)
        results.append((f"1 process, {batch} messages per transaction", n / t_ct, n / t_base))
    if "four" in only:
        t_ct = t_base = 0.0
        for _round in range(2):  # convthread, baseline, convthread, baseline
            schema, base = make_schema(url, False), make_schema(url, True)
            try:
                PostgresStore(url, schema=schema).close()  # migrate before the workers start
                t_ct += four_processes("convthread", url, schema, n4 // 2, max(customers // 2, 10))
                t_base += four_processes("baseline", url, base, n4 // 2, max(customers // 2, 10))
            finally:
                drop_schema(url, schema)
                drop_schema(url, base)
        results.append(("4 processes, 1 message per transaction", 4 * n4 / t_ct, 4 * n4 / t_base))

    print(f"convthread bench_postgres ({'quick' if args.quick else 'full'} run), {sys.platform}")
    print(
        f"  PostgreSQL {url.split('@')[-1]}; {n} messages per single-process run, "
        f"{n4} per process in the 4-process runs, {customers} customers"
    )
    print(f"  {'mode':<46} {'convthread':>12} {'plain psycopg':>14} {'ratio':>6}")
    for label, ct_rate, base_rate in results:
        print(
            f"  {label:<46} {ct_rate:>8,.0f} m/s {base_rate:>10,.0f} m/s {ct_rate / base_rate:>6.2f}"
        )
    if "sqlite" not in only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        ct_bytes, base_bytes, per_table = sqlite_bytes(n, customers, Path(tmp))
    print(
        f"  SQLite bytes per reference message: convthread {ct_bytes:,.0f}, "
        f"plain sqlite3 row {base_bytes:,.0f}, ratio {ct_bytes / base_bytes:.2f}"
    )
    size, names, decisions, empties = event_anatomy(min(n, 500), customers)
    print(
        f"  message_received event: {size:,.0f} bytes, of which map keys {names:,.0f} "
        f"(field names, metadata and evidence keys), "
        f"decision+resolution {decisions:,.0f}, empty/default entries {empties:,.0f} "
        f"(what omit_defaults=True would drop)"
    )
    if per_table:
        total = sum(per_table.values())
        parts = ", ".join(f"{k} {v / total:.0%}" for k, v in per_table.items() if v / total >= 0.01)
        print(f"  SQLite space by table/index: {parts}")


if __name__ == "__main__":
    main()
