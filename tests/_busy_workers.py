"""A worker process for tests/test_busy_thread.py.

python -m tests._busy_workers URL PREFIX COUNT [THREADS]

Opens the store at URL, prints ``ready``, waits for a line on stdin (so that every
worker starts writing at the same moment), then ingests COUNT messages from the one
test customer from THREADS threads (8 by default) with the default retry budget, and
prints ``ok THREAD_ID SEQ`` or ``error TYPE MESSAGE`` for each.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import convthread as ct
from tests._thread_util import T0, msg


def main(argv: list[str]) -> None:
    url, prefix, count = argv[0], argv[1], int(argv[2])
    threads = int(argv[3]) if len(argv) > 3 else 8
    with ct.Conversations(url, clock=ct.ManualClock(T0)) as convs:

        def ingest(i: int) -> str:
            try:
                r = convs.ingest(msg(f"{prefix}-{i}", text=f"{prefix} {i}"))
            except Exception as exc:
                return f"error {type(exc).__name__} {exc}".replace("\n", " ")
            return f"ok {r.thread_id} {r.seq}"

        print("ready", flush=True)
        sys.stdin.readline()
        with ThreadPoolExecutor(threads) as pool:
            lines = list(pool.map(ingest, range(count)))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
