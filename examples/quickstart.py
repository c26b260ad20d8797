"""A support back end in thirty lines: an SMS, then an e-mail, one thread.

Run: python examples/quickstart.py [path/to/store.db]
"""

from __future__ import annotations

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from convthread import (
    Content,
    Conversations,
    Inbound,
    ManualClock,
    SenderIdentifier,
    Trust,
    email,
    phone,
)


def main(db: Path) -> str:
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    clock = ManualClock(t0)  # in production, leave the default system clock
    convs = Conversations(f"sqlite:///{db}", clock=clock)
    sms = Inbound(
        channel="sms",
        provider_message_id="SM8f2c",
        sender=(
            SenderIdentifier(phone("+44 7911 123456"), Trust.ASSERTED),
            SenderIdentifier(email("dana.k@example.com"), Trust.CLAIMED),
        ),
        content=Content(text="Where is my order AC-4471?"),
        sent_at=t0,
    )
    first = convs.ingest(sms)
    clock.advance(minutes=3)
    convs.send(first.thread_id, "Looking into it!", sender="agent:alice")
    clock.advance(hours=1)
    mail = Inbound(
        channel="email",
        provider_message_id="<CAF7xk2m@mail.example.com>",
        sender=(SenderIdentifier(email("dana.k@example.com"), Trust.CLAIMED),),
        content=Content(text="Any news?"),
        sent_at=t0 + timedelta(hours=1),
    )
    second = convs.ingest(mail)
    print(f"sms   -> {first.thread_id}: {first.decision.reason}")
    print(f"email -> {second.thread_id}: {second.decision.reason}")
    assert second.thread_id == first.thread_id
    convs.close()
    return first.thread_id


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "quickstart.db")
