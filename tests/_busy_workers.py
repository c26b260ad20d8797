"""A worker process for tests/test_busy_thread.py.

python -m tests._busy_workers URL PREFIX COUNT [THREADS | async]

Opens the store at URL, prints ``ready``, waits for a line on stdin (so that every
worker starts writing at the same moment), then ingests COUNT messages from the one
test customer from THREADS threads (8 by default), or all at once from one
``AsyncConversations`` (``async``), with the default retry budget, and prints
``ok THREAD_ID SEQ`` or ``error TYPE MESSAGE`` for each.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import convthread as ct
from tests._thread_util import T0, msg


def line(result: ct.IngestResult | BaseException) -> str:
    if isinstance(result, BaseException):
        return f"error {type(result).__name__} {result}".replace("\n", " ")
    return f"ok {result.thread_id} {result.seq}"


async def main_async(url: str, prefix: str, count: int) -> None:
    async with ct.AsyncConversations(url, clock=ct.ManualClock(T0)) as convs:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(
            *(convs.ingest(msg(f"{prefix}-{i}", text=f"{prefix} {i}")) for i in range(count)),
            return_exceptions=True,
        )
    print("\n".join(line(r) for r in results), flush=True)


def main(argv: list[str]) -> None:
    url, prefix, count = argv[0], argv[1], int(argv[2])
    if len(argv) > 3 and argv[3] == "async":
        asyncio.run(main_async(url, prefix, count))
        return
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
