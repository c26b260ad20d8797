"""Worker processes for tests/test_faults.py and bench/bench_postgres.py.

python -m tests._fault_workers ingest STORE_URL WORKER COUNT CUSTOMERS [REDELIVER_OF]
    ingest COUNT messages (customers round-robin over 3 channels); after each ingest
    returns, print "pid thread seq dup" and flush (the acknowledgement). With
    REDELIVER_OF, also redeliver every 20th message of that worker.
python -m tests._fault_workers forever STORE_URL WORKER CUSTOMERS
    ingest until killed (for the SIGKILL test).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import convthread as ct
from convthread.stores import open_store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
CHANNELS = ("sms", "whatsapp", "email")


def message(worker: int, i: int, customers: int) -> ct.Inbound:
    """Message ``i`` of ``worker``: deterministic, so a redelivery is the same payload."""
    c = (worker * 7919 + i) % customers
    channel = CHANNELS[i % 3]
    account = ct.SenderIdentifier(ct.account("shop", f"cust-{c:04d}"), ct.Trust.VERIFIED, "login")
    if channel == "email":
        own = ct.SenderIdentifier(ct.email(f"c{c:04d}@example.com"), ct.Trust.CLAIMED)
    else:
        own = ct.SenderIdentifier(ct.phone(f"+4479111{c:05d}"), ct.Trust.ASSERTED)
    return ct.Inbound(
        channel=channel,
        provider_message_id=f"w{worker}-m{i}",
        sender=(account, own),
        content=ct.Content(text=f"hello from worker {worker}, message {i}"),
        sent_at=T0 + timedelta(seconds=i),
    )


def ingest_all(convs: ct.Conversations, items: Iterable[ct.Inbound]) -> None:
    out = sys.stdout
    for inbound in items:
        r = convs.ingest(inbound)
        out.write(f"{inbound.provider_message_id} {r.thread_id} {r.seq} {int(r.duplicate)}\n")
        out.flush()


def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    convs = ct.Conversations(open_store(url), clock=ct.ManualClock(T0), max_retries=1000)
    try:
        if command == "ingest":
            worker, count, customers = int(argv[2]), int(argv[3]), int(argv[4])
            other = int(argv[5]) if len(argv) > 5 else None

            def items() -> Iterable[ct.Inbound]:
                for i in range(count):
                    yield message(worker, i, customers)
                    if other is not None and i % 20 == 0:
                        yield message(other, i, customers)

            ingest_all(convs, items())
        elif command == "forever":
            worker, customers = int(argv[2]), int(argv[3])
            ingest_all(convs, (message(worker, i, customers) for i in itertools.count()))
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        convs.close()


if __name__ == "__main__":
    main(sys.argv[1:])
