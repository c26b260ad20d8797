"""Worker entry points run in separate processes by the multi-process tests.

python -m tests._workers ingest DB PREFIX COUNT      ingest COUNT messages, print seqs
python -m tests._workers send DB THREAD COUNT TAG    send COUNT replies to THREAD
python -m tests._workers redeliver DB                ingest the fixed message once
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import convthread as ct
from convthread.stores import SQLiteStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
PHONE = ct.phone("+447911123456")


def fixed_message(pid: str = "SM-fixed", text: str = "hello") -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=pid,
        sender=(ct.SenderIdentifier(PHONE, ct.Trust.ASSERTED),),
        content=ct.Content(text=text),
        sent_at=T0,
    )


def main(argv: list[str]) -> None:
    command, db = argv[0], argv[1]
    convs = ct.Conversations(SQLiteStore(db), clock=ct.ManualClock(T0), max_retries=200)
    try:
        if command == "redeliver":
            r = convs.ingest(fixed_message())
            print(r.thread_id, r.seq, r.duplicate)
        elif command == "ingest":
            prefix, count = argv[2], int(argv[3])
            for i in range(count):
                r = convs.ingest(fixed_message(f"{prefix}-{i}", f"{prefix} {i}"))
                print(r.seq, flush=True)
        elif command == "send":
            thread, count, tag = argv[2], int(argv[3]), argv[4]
            for i in range(count):
                print(convs.send(thread, f"{tag} {i}", sender=f"agent:{tag}").seq, flush=True)
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        convs.close()


if __name__ == "__main__":
    main(sys.argv[1:])
