"""Ingest and load figures, with a plain-sqlite3 baseline in the same run.

    python bench/bench_ingest.py [--quick] [--messages N]

Prints messages/s for ingest into memory and into SQLite (one commit per message), the
time to load a 100-message thread, and the same work done with plain ``sqlite3`` (same
PRAGMAs: WAL, synchronous=FULL), with the ratios.

The reference message has 12 fields: channel, provider message id, sender (phone,
asserted), a 200-character text, 5 metadata items, the provider timestamp, recipient,
reply-to, subject, and the ids convthread adds (customer, thread, sequence).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import convthread as ct
from convthread.stores import MemoryStore, SQLiteStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]
META = {"campaign": "spring", "locale": "en-GB", "segment": "gold", "device": "ios", "ab": "b"}


def reference_messages(n: int, customers: int) -> list[ct.Inbound]:
    phones = [f"+4479111{i:05d}" for i in range(customers)]
    senders = [(ct.SenderIdentifier(ct.phone(p), ct.Trust.ASSERTED),) for p in phones]
    return [
        ct.Inbound(
            channel="sms",
            provider_message_id=f"SM{i:012d}",
            sender=senders[i % customers],
            content=ct.Content(text=TEXT, metadata=META),
            sent_at=T0 + timedelta(seconds=i),
            recipient="+441234567890",
            subject="",
        )
        for i in range(n)
    ]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} msg/s"


def bench_convthread(store: ct.Store, messages: list[ct.Inbound]) -> float:
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    start = time.perf_counter()
    for m in messages:
        convs.ingest(m)
    elapsed = time.perf_counter() - start
    return elapsed


def bench_load(store: ct.Store, repeats: int = 50) -> float:
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    messages = [
        ct.Inbound(
            channel="sms",
            provider_message_id=f"LOAD{i}",
            sender=(ct.SenderIdentifier(ct.phone("+447911123999"), ct.Trust.ASSERTED),),
            content=ct.Content(text=TEXT, metadata=META),
            sent_at=T0 + timedelta(seconds=i),
        )
        for i in range(99)
    ]
    thread_id = ""
    for m in messages:
        thread_id = convs.ingest(m).thread_id
    assert len(convs.events(thread_id)) == 100
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        view = convs.thread(thread_id)
        times.append(time.perf_counter() - start)
        assert len(view.events) == 100
    return statistics.median(times)


def baseline(path: Path, messages: list[ct.Inbound]) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, thread_id TEXT, seq INTEGER, "
        "customer_id TEXT, channel TEXT, provider_message_id TEXT UNIQUE, sender TEXT, "
        "trust TEXT, text TEXT, metadata TEXT, sent_at TEXT, recipient TEXT)"
    )
    conn.execute("CREATE INDEX messages_thread ON messages (thread_id, seq)")
    start = time.perf_counter()
    for i, m in enumerate(messages):
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO messages (thread_id, seq, customer_id, channel, provider_message_id, "
            "sender, trust, text, metadata, sent_at, recipient) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"th_{i % 1000}",
                i // 1000 + 1,
                f"cu_{i % 1000}",
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
    ingest = time.perf_counter() - start
    for i in range(100):
        conn.execute(
            "INSERT INTO messages (thread_id, seq, customer_id, channel, provider_message_id, "
            "sender, trust, text, metadata, sent_at, recipient) "
            "VALUES ('th_load', ?, 'cu_x', 'sms', ?, '+447911123999', 'asserted', ?, ?, ?, '')",
            (i + 1, f"LOAD{i}", TEXT, json.dumps(META), T0.isoformat()),
        )
    times = []
    for _ in range(50):
        start = time.perf_counter()
        rows = conn.execute(
            "SELECT * FROM messages WHERE thread_id = 'th_load' ORDER BY seq"
        ).fetchall()
        decoded = [(r[0], r[8], json.loads(r[9]), datetime.fromisoformat(r[10])) for r in rows]
        times.append(time.perf_counter() - start)
        assert len(decoded) == 100
    conn.close()
    return ingest, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--messages", type=int, default=None)
    args = parser.parse_args()
    n_mem = args.messages or (2_000 if args.quick else 50_000)
    n_sql = args.messages or (500 if args.quick else 5_000)
    customers = 1_000

    mem_msgs = reference_messages(n_mem, customers)
    sql_msgs = reference_messages(n_sql, customers)
    mem_time = bench_convthread(MemoryStore(), mem_msgs)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "ct.db")
        sql_time = bench_convthread(store, sql_msgs)
        store.close()
        load_store = SQLiteStore(Path(tmp) / "load.db")
        load_time = bench_load(load_store)
        load_store.close()
        mem_load = bench_load(MemoryStore())
        base_ingest, base_load = baseline(Path(tmp) / "base.db", sql_msgs)

    print(f"convthread bench_ingest ({'quick' if args.quick else 'full'} run)")
    print(f"  reference message: 12 fields, {len(TEXT)}-char text, {len(META)} metadata items")
    print(f"  ingest, memory    ({n_mem:>6} msgs, {customers} customers): {rate(n_mem, mem_time)}")
    print(f"  ingest, SQLite    ({n_sql:>6} msgs, 1 commit each):   {rate(n_sql, sql_time)}")
    print(f"  plain sqlite3     ({n_sql:>6} rows, 1 commit each):   {rate(n_sql, base_ingest)}")
    print(f"  ratio SQLite ingest / plain sqlite3 insert: {base_ingest / sql_time:.2f}")
    print(f"  load 100-message thread, SQLite: {load_time * 1e3:8.3f} ms (median of 50)")
    print(f"  load 100-message thread, memory: {mem_load * 1e3:8.3f} ms (median of 50)")
    print(f"  plain sqlite3 select+decode 100: {base_load * 1e3:8.3f} ms (median of 50)")
    print(f"  ratio SQLite load / plain sqlite3 load: {load_time / base_load:.2f}x the time")


if __name__ == "__main__":
    main()
