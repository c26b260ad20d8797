"""Worker entry points for the change feed's multi-process tests.

python -m tests._feed_workers write URL PREFIX COUNT      ingest COUNT messages
python -m tests._feed_workers consume URL NAME LOG CRASH  follow as NAME, append each
    position to LOG (the effect), die hard (no ack) after CRASH changes (0: never),
    stop once the feed's last position is reached and nothing more is written
python -m tests._feed_workers track URL NAME CRASH        follow as NAME, count each
    change into the same store with commit_tracked, die hard after CRASH changes
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import convthread as ct
from convthread.ports import Batch, Put
from convthread.stores import open_store
from tests._workers import T0

#: The consumer's own namespace (commit_tracked refuses the service's).
NS: str = "tally"


def message(prefix: str, i: int) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=f"{prefix}-{i}",
        sender=(ct.SenderIdentifier(ct.phone(f"+1415555{i % 7:04d}"), ct.Trust.ASSERTED),),
        content=ct.Content(text=f"{prefix} {i}"),
        sent_at=T0 + timedelta(seconds=i),
    )


def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    convs = ct.Conversations(open_store(url), clock=ct.ManualClock(T0), max_retries=500)
    try:
        if command == "write":
            prefix, count = argv[2], int(argv[3])
            for i in range(count):
                convs.ingest(message(prefix, i))
        elif command == "consume":
            name, log, crash = argv[2], argv[3], int(argv[4])
            consume(convs, name, log, crash)
        elif command == "track":
            name, crash = argv[2], int(argv[3])
            track(convs, name, crash)
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        convs.close()


def consume(convs: ct.Conversations, name: str, log: str, crash: int) -> None:
    handled = 0
    last = convs.last_position()
    with convs.follow(consumer=name, poll=0.05, ack_every=1) as feed, open(log, "a") as out:
        if feed.position >= last:
            return
        for change in feed:
            out.write(f"{change.position}\n")  # the effect
            out.flush()
            os.fsync(out.fileno())
            handled += 1
            if crash and handled == crash:
                os._exit(3)  # killed between the effect and its acknowledgement
            if change.position >= last:
                break
    convs.ack(name, last)


def track(convs: ct.Conversations, name: str, crash: int) -> None:
    handled = 0
    last = convs.last_position()
    with convs.follow(consumer=name, poll=0.05) as feed:
        if feed.position >= last:
            return
        for change in feed:
            item = convs.store.get(NS, "count")
            count = int(item.value) if item is not None else 0
            effect = Batch(
                puts=(
                    Put(NS, "count", b"%d" % (count + 1)),
                    Put(NS, f"p{change.position:012d}", b"1"),
                )
            )
            convs.commit_tracked(effect, ct.Tracking(name, change.position))
            handled += 1
            if crash and handled == crash:
                os._exit(3)  # killed after the tracked commit, before the follower's ack
            if change.position >= last:
                break


if __name__ == "__main__":
    main(sys.argv[1:])
