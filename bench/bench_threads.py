"""Ingest with continuity: 100,000 messages from 10,000 customers over 4 channels.

Prints, in one run:

* memory: ``Conversations.ingest`` per message on the in-memory store;
* SQLite, one commit per message (``ingest``), and batched (``ingest_many``, 100 messages
  per transaction), on a file with WAL and ``synchronous=FULL`` (the store's defaults);
* the plain-``sqlite3`` baseline on the same kind of file with the same PRAGMAs: one
  commit per row, and 100 rows per transaction (one row per message: an
  ``events(stream, seq, data)`` row holding the message's encoded bytes);
* the ratios against their aims.

Inbound messages are built before timing (that is the channel adapter's work); every
timed ``ingest`` runs the whole pipeline: deduplicate, resolve the customer, choose the
thread (continuity), append, index, commit.

    python bench/bench_threads.py            # the full run
    python bench/bench_threads.py --quick    # a small smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import convthread as ct
from convthread import codec
from convthread.stores import MemoryStore, SQLiteStore

CHANNELS = ("sms", "whatsapp", "webchat", "voice")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
AIM_MEMORY = 110_000
AIM_PER_MESSAGE = 0.8
AIM_BATCHED = 0.7
BATCH = 100


def make_messages(n: int, customers: int) -> list[ct.Inbound]:
    """``n`` messages, customers taking turns, each on one of 4 channels, a minute apart
    for a customer (so recency continues their thread across channels)."""

    def ident(c: int) -> ct.Identifier:
        return (
            ct.phone(f"+1415555{c:04d}") if customers <= 10_000 else ct.email(f"c{c}@example.com")
        )

    senders = [(ct.SenderIdentifier(ident(c), ct.Trust.ASSERTED),) for c in range(customers)]
    out = []
    for i in range(n):
        c = i % customers
        turn = i // customers
        out.append(
            ct.Inbound(
                channel=CHANNELS[(c + turn) % 4],
                provider_message_id=f"m{i:07d}",
                sender=senders[c],
                content=ct.Content(text=f"message {turn} from customer {c}"),
                sent_at=T0 + timedelta(minutes=turn, microseconds=c),
            )
        )
    return out


def run_memory(messages: list[ct.Inbound], profile: bool) -> float:
    convs = ct.Conversations(MemoryStore(), clock=ct.ManualClock(T0))
    ingest = convs.ingest
    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    for m in messages:
        ingest(m)
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - start
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    check(convs, messages)
    return len(messages) / elapsed


def _floor_event(m: ct.Inbound, key: str, tid: str, cid: str, now: datetime) -> ct.ThreadEvent:
    """The floors' MessageReceived: what ingest records, with two short decisions."""
    from convthread.domain.events import Decision, MessageReceived

    sender = m.sender[0]
    return MessageReceived(
        at=now,
        channel=m.channel,
        provider_message_id=m.provider_message_id,
        idempotency_key=key,
        fingerprint="",
        sender=sender,
        content=m.content,
        sent_at=m.sent_at,
        decision=Decision.text("recency", f"continues {tid}"),
        resolution=Decision.text("known", f"{sender.identifier.key} -> {cid}"),
    )


def floor(messages: list[ct.Inbound]) -> float:
    """The least work any event-sourced ingest with explained continuity does per message,
    written as tightly as CPython allows, with none of convthread's checks: look up the
    dedupe key, the sender's customer and its live thread in dicts; build the
    ``MessageReceived`` event with its two decisions; encode it; append it; write the
    dedupe entry and the thread's new state (version, last activity). No identity policy,
    no continuity rules, no validation, no fingerprint, no store protocol, no indexes.

    What this reaches bounds what the full pipeline can reach on this interpreter."""

    encode = codec.encode
    seen: dict[str, tuple[str, int]] = {}
    owner: dict[str, str] = {}
    live: dict[str, list[object]] = {}
    streams: dict[str, list[bytes]] = {}
    now = T0
    start = time.perf_counter()
    for m in messages:
        key = f"{m.channel}|{m.provider_message_id}"
        if key in seen:
            continue
        sender = m.sender[0]
        ikey = sender.identifier.key
        cid = owner.get(ikey)
        if cid is None:
            cid = owner[ikey] = f"cu_{len(owner)}"
        thread = live.get(cid)
        if thread is None:
            thread = live[cid] = [f"th_{cid}", 0, now]
        tid = str(thread[0])
        event = _floor_event(m, key, tid, cid, now)
        streams.setdefault(tid, []).append(encode(event))
        thread[1] = int(thread[1]) + 1  # type: ignore[call-overload]
        thread[2] = m.sent_at
        seen[key] = (tid, int(thread[1]))  # type: ignore[call-overload]
    return len(messages) / (time.perf_counter() - start)


def floor_store(messages: list[ct.Inbound]) -> float:
    """:func:`floor`, plus what the store protocol asks of every ingest (the batch that
    ``ingest`` commits for a message continuing a live thread): the thread's head
    written by compare-and-set (the store moves its indexes), the dedupe entry put, all
    committed atomically to a ``MemoryStore``. Still no identity policy,
    continuity rules, validation or fingerprint."""
    from convthread._heads import head_of
    from convthread.domain.events import ThreadStarted
    from convthread.domain.thread import ThreadState, evolve, start_state
    from convthread.ports import ABSENT, Append, Batch, HeadWrite, Put
    from convthread.service._core import NS_MSG, TENANT, MsgRef

    encode = codec.encode
    store = MemoryStore()
    owner: dict[str, str] = {}
    live: dict[str, tuple[ThreadState, int]] = {}  # customer -> (state, item version)
    now = T0
    start = time.perf_counter()
    for m in messages:
        key = f"{m.channel}|{m.provider_message_id}"
        if store.get(NS_MSG, key) is not None:
            continue
        sender = m.sender[0]
        ikey = sender.identifier.key
        cid = owner.get(ikey)
        if cid is None:
            cid = owner[ikey] = f"cu_{len(owner)}"
        entry = live.get(cid)
        if entry is None:
            tid = f"th_{cid}"
            started = ThreadStarted(at=now, customer_id=cid, channel=m.channel)
            state, version, appends = start_state(tid, started), ABSENT, [encode(started)]
        else:
            state, version = entry
            tid, appends = state.id, []
        event = _floor_event(m, key, tid, cid, now)
        appends.append(encode(event))
        base = 0 if entry is None else state.version
        seq = state.version + 1
        new = evolve(state, seq, event)
        store.commit(
            Batch(
                appends=(Append(tid, base, tuple(appends)),),
                puts=(Put(NS_MSG, key, encode(MsgRef(tid, seq, cid)), ABSENT),),
                heads=(HeadWrite(head_of(new, TENANT), version),),
            )
        )
        live[cid] = (new, 1 if entry is None else version + 1)
    return len(messages) / (time.perf_counter() - start)


def run_sqlite(messages: list[ct.Inbound], path: Path, batched: bool) -> float:
    store = SQLiteStore(path)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    start = time.perf_counter()
    if batched:
        for i in range(0, len(messages), BATCH):
            convs.ingest_many(messages[i : i + BATCH])
    else:
        for m in messages:
            convs.ingest(m)
    elapsed = time.perf_counter() - start
    check(convs, messages)
    convs.close()
    return len(messages) / elapsed


def check(convs: ct.Conversations, messages: list[ct.Inbound]) -> None:
    """Every message stored once, in its customer's one thread."""
    last = messages[-1]
    loc = convs.find_message(last.channel, last.provider_message_id)
    assert loc is not None
    state = convs.thread_state(loc.thread_id)
    per_customer = len(messages) // len({m.sender for m in messages})
    assert state.message_count == per_customer, (state.message_count, per_customer)
    assert len(state.channels) == min(4, per_customer)


def baseline(messages: list[ct.Inbound], path: Path, per_txn: int) -> float:
    """Plain sqlite3: one events row per message, ``per_txn`` rows per transaction."""
    rows = [
        (f"th_{i % 10_000:05d}", i // 10_000 + 1, codec.encode(m)) for i, m in enumerate(messages)
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute(
        "CREATE TABLE events (stream TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (stream, seq)) WITHOUT ROWID"
    )
    sql = "INSERT INTO events (stream, seq, data) VALUES (?, ?, ?)"
    start = time.perf_counter()
    for i in range(0, len(rows), per_txn):
        conn.execute("BEGIN IMMEDIATE")
        for row in rows[i : i + per_txn]:
            conn.execute(sql, row)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 500 customers")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the memory run")
    parser.add_argument("--dir", default=None, help="where to put the SQLite files")
    args = parser.parse_args(argv)
    n, customers = (5_000, 500) if args.quick else (args.messages, args.customers)
    messages = make_messages(n, customers)
    print(
        f"convthread {ct.__version__}, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}"
    )
    print(f"{n:,} messages, {customers:,} customers, {len(CHANNELS)} channels")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        mem = run_memory(messages, args.profile)
        print(
            f"memory   ingest                      {mem:>10,.0f} msg/s   (aim {AIM_MEMORY:,})",
            flush=True,
        )
        low = max(floor(messages) for _ in range(3))
        print(
            f"floor    least work per message      {low:>10,.0f} msg/s   (see floor(): an upper"
            " bound for any full pipeline here)",
            flush=True,
        )
        low_store = max(floor_store(messages) for _ in range(3))
        print(
            f"floor    + the store protocol        {low_store:>10,.0f} msg/s   (see floor_store())",
            flush=True,
        )
        base1 = baseline(messages, d / "base1.db", 1)
        print(f"sqlite3  baseline, 1 row/commit      {base1:>10,.0f} rows/s", flush=True)
        base100 = baseline(messages, d / "base100.db", BATCH)
        print(f"sqlite3  baseline, {BATCH} rows/commit    {base100:>10,.0f} rows/s", flush=True)
        per_msg = run_sqlite(messages, d / "per_message.db", batched=False)
        print(f"SQLite   ingest, 1 commit/message    {per_msg:>10,.0f} msg/s", flush=True)
        batched = run_sqlite(messages, d / "batched.db", batched=True)
        print(f"SQLite   ingest_many, {BATCH}/commit     {batched:>10,.0f} msg/s", flush=True)
    r1, r2 = per_msg / base1, batched / base100
    print()
    print(
        f"memory vs aim                  {mem / AIM_MEMORY:6.2f}  ({'met' if mem >= AIM_MEMORY else 'NOT met'})"
    )
    print(
        f"per-message vs 1 row/commit    {r1:6.2f}  (aim {AIM_PER_MESSAGE}: {'met' if r1 >= AIM_PER_MESSAGE else 'NOT met'})"
    )
    print(
        f"batched vs {BATCH} rows/commit     {r2:6.2f}  (aim {AIM_BATCHED}: {'met' if r2 >= AIM_BATCHED else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main(sys.argv[1:]))
