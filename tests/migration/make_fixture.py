"""Write ``release-0.1.0.db`` and ``release-0.1.0.json``: a SQLite database made by
convthread 0.1.0 (storage schema 2) and what that release read back from it.

This script ran once, under release 0.1.0, to make the two files beside it; they are
kept unchanged so the migration tests open a database exactly as that release left it.
Running it again under a later release makes a different file: do not overwrite them.

    python tests/migration/make_fixture.py tests/migration
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

from convthread import Content, Inbound, ManualClock, SenderIdentifier, Trust, codec, phone
from convthread.cli._demo import DEMO_T0, demo_conversations, demo_journey
from convthread.domain.identifiers import email as email_address


def main(folder: Path) -> None:
    db = folder / "release-0.1.0.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    clock = ManualClock(DEMO_T0)
    convs = demo_conversations(f"sqlite:///{db}", clock)
    run = demo_journey(convs, clock)

    # Two more customers: one merged into the other and unmerged again, one merged for
    # good, one erased; statuses, attributes, intents, a snoozed and a resolved thread.
    t = DEMO_T0 + timedelta(hours=5)

    def sms(n: int, number: str, text: str, minutes: float) -> Inbound:
        at = t + timedelta(minutes=minutes)
        clock.set(at + timedelta(seconds=1))
        return Inbound(
            channel="sms",
            provider_message_id=f"SM{n:030d}",
            sender=(SenderIdentifier(phone(number), Trust.ASSERTED),),
            content=Content(text=text),
            sent_at=at,
        )

    def mail(n: int, address: str, text: str, minutes: float) -> Inbound:
        at = t + timedelta(minutes=minutes)
        clock.set(at + timedelta(seconds=1))
        return Inbound(
            channel="email",
            provider_message_id=f"m{n}@mail.example",
            sender=(SenderIdentifier(email_address(address), Trust.CLAIMED),),
            content=Content(text=text, metadata={"subject": "Order AC-9"}),
            sent_at=at,
        )

    a = convs.ingest(sms(1, "+447911123001", "Hi, my parcel AC-9 is late", 0))
    b = convs.ingest(mail(2, "ravi@example.org", "Writing about AC-9 again", 3))
    convs.ingest(sms(3, "+447911123001", "Any news?", 6))
    convs.set_attribute(a.thread_id, "order", "AC-9", by="agent:kim")
    convs.record_intent(a.thread_id, "where_is_my_order", confidence=0.9, by="bot:triage")
    undone = convs.merge(a.customer_id, b.customer_id, by="agent:kim", reason="same person")
    convs.unmerge(undone.merge_id, by="agent:kim", reason="two people after all")
    kept = convs.merge(a.customer_id, b.customer_id, by="agent:kim", reason="confirmed by phone")
    convs.snooze(a.thread_id, t + timedelta(days=2), by="agent:kim", reason="waiting on courier")
    convs.resolve(run.threads[-1], by="agent:lee", reason="refund corrected")
    gone = convs.ingest(sms(4, "+447911123099", "Please delete my data", 20))
    convs.ingest(sms(5, "+447911123099", "My card is 4111 1111 1111 1111", 21))
    convs.erase_customer(gone.customer_id, by="agent:kim")

    threads = [*run.threads, a.thread_id, b.thread_id, gone.thread_id]
    expected = {
        "threads": {
            tid: {
                "state": codec.to_builtins(convs.thread_state(tid)),
                "events": [codec.to_builtins(e) for e in convs.events(tid)],
            }
            for tid in dict.fromkeys(threads)
        },
        "customers": {
            cid: codec.to_builtins(convs.customer(cid))
            for cid in dict.fromkeys([run_customer(convs, run), a.customer_id])
        },
        "merge_kept": kept.merge_id,
        "erased_customer": gone.customer_id,
        "erased_text": "4111 1111 1111 1111",
        "snapshot": codec.to_builtins(convs.snapshot(run.threads[0], audience="agent")),
    }
    convs.close()
    (folder / "release-0.1.0.json").write_text(json.dumps(expected, indent=1, sort_keys=True))


def run_customer(convs: object, run: object) -> str:
    from convthread import Conversations
    from convthread.cli._demo import DemoRun

    assert isinstance(convs, Conversations) and isinstance(run, DemoRun)
    return convs.thread_state(run.threads[0]).customer_id


if __name__ == "__main__":
    main(Path(sys.argv[1]))
