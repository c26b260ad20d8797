"""Change feed figures on SQLite and PostgreSQL, each against a baseline of the same run.

    python bench/bench_feed.py [--quick] [--url URL] [--messages N] [--only ROW [ROW ...]]

Rows (``--only``): ``read``, ``follow``, ``cost``.

* ``read``: the feed read rate. N messages are ingested (each a few events: customer,
  identifier, thread, message), then the whole feed is read with ``changes(limit=1000)``
  (decoded, with kinds, threads and customers): changes per second, next to the store's
  raw ``read_positions`` over the same events (bytes only), the floor.
* ``follow``: the latency from commit to consumer. A writer ingests a message every few
  milliseconds while a follower (``follow()`` in a thread of the same process, woken by
  the store's watch: SQLite's data version, PostgreSQL's LISTEN/NOTIFY) receives the
  changes; latency = when the follower got the message's change minus when ``ingest()``
  returned (negative when the follower saw it first: reported as is). p50 and p99.
* ``cost``: what the feed adds to ingest. On PostgreSQL the only work the feed adds to
  a commit is its NOTIFY (positions and their lock predate the feed): N ingests into a
  store with notify (the default) and N into one with ``notify=False``, in alternating
  rounds in the same run; the ratio of their rates (aim: within 5%). On SQLite and in
  memory the feed adds nothing to a commit (followers poll the file's data version),
  so there is no row.

PostgreSQL URL: --url, else $CONVTHREAD_TEST_POSTGRES_URL, else
postgresql://postgres@127.0.0.1:5432/test; every run uses fresh schemas, dropped after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import convthread as ct
from convthread.ports import FeedReader
from convthread.stores import SQLiteStore
from convthread.stores.postgres import PostgresStore

URL = os.environ.get("CONVTHREAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]


def message(tag: str, i: int, customers: int = 500) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=f"{tag}-{i}",
        sender=(ct.SenderIdentifier(ct.phone(f"+1415555{i % customers:04d}"), ct.Trust.ASSERTED),),
        content=ct.Content(text=TEXT),
        sent_at=T0 + timedelta(seconds=i),
    )


def pg_store(*, notify: bool = True) -> PostgresStore:
    return PostgresStore(URL, schema=f"bench_feed_{uuid.uuid4().hex[:10]}", notify=notify)


def drop(store: ct.Store) -> None:
    if isinstance(store, PostgresStore):
        store.drop_schema()
    store.close()


def stores(tmp: Path, only_sqlite: bool) -> list[tuple[str, Callable[[], ct.Store]]]:
    out: list[tuple[str, Callable[[], ct.Store]]] = [
        ("sqlite", lambda: SQLiteStore(tmp / f"{uuid.uuid4().hex}.db", synchronous="NORMAL"))
    ]
    if not only_sqlite:
        out.append(("postgres", pg_store))
    return out


def fill(convs: ct.Conversations, n: int, tag: str) -> None:
    for i in range(n):
        convs.ingest(message(tag, i))


def row_read(name: str, make: Callable[[], ct.Store], n: int) -> None:
    store = make()
    try:
        convs = ct.Conversations(store, clock=ct.ManualClock(T0))
        fill(convs, n, "r")
        assert isinstance(store, FeedReader)
        best_raw = best_feed = 0.0
        total = 0
        for _ in range(3):
            start = time.perf_counter()
            after, total = 0, 0
            while records := store.read_positions("", after, 1000):
                after, total = records[-1].position, total + len(records)
            best_raw = max(best_raw, total / (time.perf_counter() - start))
            start = time.perf_counter()
            after, count = 0, 0
            while page := convs.changes(after=after, limit=1000):
                after, count = page[-1].position, count + len(page)
            best_feed = max(best_feed, count / (time.perf_counter() - start))
            assert count == total
        print(
            f"read   {name:<8} {total:>7} changes  changes(): {best_feed:>9,.0f}/s  "
            f"read_positions (bytes only): {best_raw:>9,.0f}/s  "
            f"ratio {best_feed / best_raw:.2f}"
        )
    finally:
        drop(store)


def row_follow(name: str, make: Callable[[], ct.Store], n: int) -> None:
    store = make()
    try:
        convs = ct.Conversations(store, clock=ct.ManualClock(T0))
        fill(convs, 5, "warm")
        committed: dict[tuple[str, int], float] = {}
        received: dict[tuple[str, int], float] = {}
        feed = convs.follow(after=convs.last_position(), poll=1.0)

        def follow() -> None:
            for change in feed:
                if change.kind == "message.received":
                    received[(change.stream, change.seq)] = time.perf_counter()

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(0.1)
        for i in range(n):
            r = convs.ingest(message("f", i))
            committed[(r.thread_id, r.seq)] = time.perf_counter()
            time.sleep(0.004)
        deadline = time.monotonic() + 30
        while len(received) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        feed.close()
        follower.join()
        lat = sorted((received[k] - committed[k]) * 1000 for k in committed if k in received)
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(
            f"follow {name:<8} {len(lat):>7} messages  commit->consumer p50 {p50:6.2f} ms  "
            f"p99 {p99:6.2f} ms  (missed: {n - len(lat)})"
        )
    finally:
        drop(store)


def row_cost(n: int, rounds: int) -> None:
    with_notify, without = pg_store(notify=True), pg_store(notify=False)
    try:
        pairs = [
            (with_notify, ct.Conversations(with_notify, clock=ct.ManualClock(T0))),
            (without, ct.Conversations(without, clock=ct.ManualClock(T0))),
        ]
        fill(pairs[0][1], 50, "warm")
        fill(pairs[1][1], 50, "warm")
        times: list[list[float]] = [[], []]
        for r in range(rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for k in order:
                convs = pairs[k][1]
                start = time.perf_counter()
                fill(convs, n, f"c{r}")
                times[k].append(time.perf_counter() - start)
        rate_on = n / statistics.median(times[0])
        rate_off = n / statistics.median(times[1])
        # Each round's pair ran back to back: the median of their ratios is the least
        # disturbed by load that comes and goes on a shared machine.
        paired = statistics.median(off / on for on, off in zip(times[0], times[1], strict=True))
        print(
            f"cost   postgres {n * rounds:>7} ingests each  with NOTIFY {rate_on:,.0f}/s  "
            f"without {rate_off:,.0f}/s  ratio {rate_on / rate_off:.3f}, "
            f"median paired ratio {paired:.3f} "
            f"(cost {100 * (1 - paired):+.1f}%; aim <= 5%)"
        )
    finally:
        drop(with_notify)
        drop(without)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs (a smoke test)")
    parser.add_argument("--url", help="PostgreSQL URL")
    parser.add_argument("--messages", type=int, help="messages per row")
    parser.add_argument("--only", nargs="+", choices=["read", "follow", "cost"])
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args(argv)
    global URL
    if args.url:
        URL = args.url
    n = args.messages or (100 if args.quick else 2000)
    rows = set(args.only or ["read", "follow", "cost"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in stores(Path(tmp), args.sqlite_only):
            if "read" in rows:
                row_read(name, make, n)
            if "follow" in rows:
                row_follow(name, make, min(n, 100 if args.quick else 500))
    if "cost" in rows and not args.sqlite_only:
        row_cost(max(n // 20, 25), 4 if args.quick else 20)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
