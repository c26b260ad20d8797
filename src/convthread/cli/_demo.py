"""``convthread demo``: a cross-channel journey played through the channel adapters into a
new SQLite file, printed as timelines. The channel adapters are imported when it runs."""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TextIO

from convthread.cli._common import (
    EXIT_OK,
    STORE_VARIABLE,
    command,
    print_json,
    store_options,
    store_url,
)
from convthread.cli._show import print_customer, print_thread
from convthread.domain.handoff import MovedToChannel
from convthread.domain.identifiers import email as email_address
from convthread.domain.model import Inbound, Trust
from convthread.domain.tokens import KeyRing
from convthread.ports import ManualClock, SequentialIds
from convthread.service import (
    Conversations,
    IngestResult,
)
from convthread.stores import open_store

DEFAULT_DEMO_DB = "convthread-demo.db"
DEMO_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
#: A demo signing key. In production, load keys from your secret store.
DEMO_KEYS = KeyRing({"demo-2026-03": b"demo-only-key-not-for-production!"}, current="demo-2026-03")
DANA_PHONE = "+447911123456"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tweet(t: datetime) -> bytes:
    """A public mention, as the Twitter/X API v2 delivers it."""
    return json.dumps(
        {
            "data": {
                "id": "1790001",
                "text": "@AcmeAir my refund for order AC-4471 still hasn't arrived, 3 weeks now",
                "author_id": "2244",
                "conversation_id": "1790001",
                "created_at": _iso(t),
            },
            "includes": {"users": [{"id": "2244", "username": "dana_k", "name": "Dana K"}]},
        }
    ).encode()


def _dm(t: datetime) -> bytes:
    """A direct message event, Twitter/X API v2."""
    return json.dumps(
        {
            "data": [
                {
                    "id": "88120",
                    "event_type": "MessageCreate",
                    "text": "Hi, it's about AC-4471. Could we go on on WhatsApp? Out all day",
                    "sender_id": "2244",
                    "dm_conversation_id": "1000-2244",
                    "created_at": _iso(t),
                }
            ],
            "includes": {"users": [{"id": "2244", "username": "dana_k"}]},
        }
    ).encode()


def _whatsapp(t: datetime, wamid: str, text: str) -> bytes:
    """A WhatsApp Cloud API webhook with one text message."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "441234567890", "phone_number_id": "1122334455"},
        "contacts": [{"profile": {"name": "Dana"}, "wa_id": DANA_PHONE[1:]}],
        "messages": [
            {
                "from": DANA_PHONE[1:],
                "id": wamid,
                "timestamp": str(int(t.timestamp())),
                "text": {"body": text},
                "type": "text",
            }
        ],
    }
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1234", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(envelope).encode()


def _mail(t: datetime) -> bytes:
    """Dana's e-mail reply, raw RFC 5322, quoting the confirmation she got."""
    return (
        "From: Dana K <Dana.K@example.com>\r\n"
        "To: refunds@acme.example\r\n"
        "Subject: Re: Refund confirmation AC-4471\r\n"
        f"Date: {format_datetime(t)}\r\n"
        "Message-ID: <CAF7xk2m@mail.example.com>\r\n"
        "In-Reply-To: <refund-ac4471@acme.example>\r\n"
        "References: <refund-ac4471@acme.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Thanks, but the amount is wrong: I paid EUR 245.90, not 212.40.\r\n"
        "\r\n"
        "On Mon, 2 Mar 2026 at 10:26, Acme Refunds <refunds@acme.example> wrote:\r\n"
        "> Refund confirmation for order AC-4471: EUR 212.40.\r\n"
    ).encode()


def _call(t: datetime, kind: str, **extra: object) -> bytes:
    """A voice event: the call starting, or a final transcript segment."""
    event: dict[str, object] = {
        "type": kind,
        "call_id": "CA5521",
        "from": DANA_PHONE,
        "to": "+441234567890",
        "at": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    event.update(extra)
    return json.dumps(event).encode()


def _only_inbound(results: Sequence[object]) -> Inbound:
    inbound = [r for r in results if isinstance(r, Inbound)]
    if len(inbound) != 1:
        raise ValueError(f"expected one inbound message, got {results!r}")
    return inbound[0]


def demo_conversations(store_url: str, clock: ManualClock) -> Conversations:
    """The service as the demo runs it: deterministic clock and ids, a handoff rule that
    sends calls to the voice queue, and continuation-token keys."""
    return Conversations(
        open_store(store_url),
        clock=clock,
        ids=SequentialIds(),
        handoff_rules=[MovedToChannel(target="queue:voice", channel="voice")],
        token_keys=DEMO_KEYS,
    )


class DemoRun:
    """What the demo played: the threads it touched and every inbound delivery."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.deliveries: list[Inbound] = []


def demo_journey(convs: Conversations, clock: ManualClock) -> DemoRun:
    """Play Dana's journey through the channel adapters: a public tweet, a DM, WhatsApp
    (bridged by a continuation code), e-mail, then a phone call handed to an agent.

    Returns the threads touched, in order, and the inbound deliveries (redelivering any
    of them stores nothing twice).
    """
    from convthread.channels import email, social, voice, whatsapp

    t0 = DEMO_T0
    run = DemoRun()

    def at(minutes: float) -> datetime:
        moment = t0 + timedelta(minutes=minutes)
        clock.set(moment + timedelta(seconds=2))
        return moment

    def deliver(result: Inbound) -> IngestResult:
        outcome = convs.ingest(result)
        run.deliveries.append(result)
        if outcome.thread_id not in run.threads:
            run.threads.append(outcome.thread_id)
        return outcome

    # 1. A public mention: the platform asserts the handle.
    first = deliver(_only_inbound(social.parse(_tweet(at(0)))))
    thread = first.thread_id
    at(4)
    convs.send(
        thread,
        "Sorry to hear that, Dana! Please DM us so we can look into AC-4471.",
        sender="agent:sam",
        idempotency_key="demo-reply-1",
    )
    # 2. The DM: same person (same Twitter account), a private channel.
    deliver(_only_inbound(social.parse(_dm(at(9)))))
    # Twitter cannot prove a phone number: the agent gives a continuation code instead.
    at(11)
    code = convs.issue_continuation(thread, ttl=timedelta(hours=4), by="agent:sam")
    convs.send(
        thread,
        f"Of course! WhatsApp us at +44 1234 567890 and send the code {code.code}",
        sender="agent:sam",
        channel="twitter.dm",
        idempotency_key="demo-reply-2",
    )
    # 3. An hour later, from the bus: WhatsApp asserts her number; the code links it.
    whatsapp_msg = _only_inbound(
        whatsapp.parse(_whatsapp(at(70), "wamid.HBgMNDQ3OTExMTIzNDU2", f"Code {code.code}"))
    )
    if convs.find_customer(whatsapp_msg.sender[0].identifier) is None:
        convs.redeem_continuation(code.code, sender=whatsapp_msg.sender[0], channel="whatsapp")
    deliver(whatsapp_msg)
    deliver(
        _only_inbound(
            whatsapp.parse(
                _whatsapp(
                    at(72),
                    "wamid.HBgMNDQ3OTExMTIzNDU3",
                    "Can you email me the refund confirmation? dana.k@example.com",
                )
            )
        )
    )
    customer = first.customer_id
    dana_mail = email_address("dana.k@example.com")
    if convs.find_customer(dana_mail) is None:
        convs.link(
            customer,
            dana_mail,
            trust=Trust.CLAIMED,
            by="agent:sam",
            channel="whatsapp",
            detail="typed by the customer on WhatsApp",
        )
    at(86)
    convs.send(
        thread,
        "Refund confirmation for order AC-4471: EUR 212.40.",
        sender="agent:sam",
        channel="email",
        # the e-mail adapter writes Message-IDs without their angle brackets
        provider_message_id="refund-ac4471@acme.example",
        idempotency_key="demo-reply-3",
    )
    # 4. Her e-mail reply threads on In-Reply-To; the address is only a claim.
    deliver(_only_inbound(email.parse(_mail(at(140)), received_at=at(140))))
    # 5. She calls: the carrier's caller id is asserted; the rule hands the call to the
    # voice queue, and an agent takes it with the full context.
    call = deliver(_only_inbound(voice.parse(_call(at(175), "call.ringing"))))
    deliver(
        _only_inbound(
            voice.parse(
                _call(
                    at(176),
                    "transcript",
                    segment_id="1",
                    speaker="caller",
                    is_final=True,
                    text="I'm calling about my refund for AC-4471, the amount is wrong",
                )
            )
        )
    )
    if call.handoff is not None and not call.duplicate:
        at(177)
        convs.offer_handoff(call.handoff.handoff_id, to="agent:lee", ttl=timedelta(minutes=2))
        convs.accept_handoff(call.handoff.handoff_id, by="agent:lee")
    return run


def run_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.store or os.environ.get(STORE_VARIABLE):
        url = store_url(args)
    else:
        path = Path(args.db)
        for suffix in ("", "-wal", "-shm"):  # the demo starts from an empty file
            Path(str(path) + suffix).unlink(missing_ok=True)
        url = "sqlite:///" + str(path)
    clock = ManualClock(DEMO_T0)
    text: TextIO = io.StringIO() if args.json else out  # under --json the text is dropped
    with demo_conversations(url, clock) as convs:
        text.write(f"Playing a cross-channel journey into {url}\n\n")
        run = demo_journey(convs, clock)
        touched = run.threads
        for thread_id in touched:
            print_thread(convs.thread(thread_id), text)
        customer_id = convs.thread_state(touched[0]).customer_id
        print_customer(convs, customer_id, text)
        snapshot = convs.snapshot(touched[-1], audience="agent", max_messages=6)
        text.write("What agent:lee sees when the call is handed over (agent snapshot):\n\n")
        text.write(snapshot.render("text", max_chars=1200) + "\n\n")
        external = convs.snapshot(touched[-1], audience="bot_vendor", max_messages=3)
        text.write("The same thread as an external bot vendor may see it (redacted):\n\n")
        text.write(external.render("text", max_chars=600) + "\n\n")
        events = len(convs.events(touched[-1]))
        duplicates = sum(convs.ingest(inbound).duplicate for inbound in run.deliveries)
        again = len(convs.events(touched[-1]))
        text.write(
            f"Redelivered all {len(run.deliveries)} inbound payloads: {duplicates} recognised "
            f"as duplicates; the thread has {again} events, as before ({events}).\n"
        )
    if args.json:
        print_json(
            {
                "store": url,
                "threads": touched,
                "customer_id": customer_id,
                "deliveries": len(run.deliveries),
                "duplicates": duplicates,
                "events": again,
            },
            out,
        )
    return EXIT_OK


def add_demo(sub: Any) -> None:
    demo = command(
        sub,
        "demo",
        help="play a cross-channel journey into a SQLite file",
        description="Play a realistic journey (tweet, DM, WhatsApp, e-mail, a call handed "
        "to an agent) into a new SQLite file and print each thread as a timeline, with "
        "the reason for every decision.",
        example="convthread demo --db demo.db && convthread threads --store demo.db",
    )
    demo.add_argument(
        "--db",
        default=DEFAULT_DEMO_DB,
        help="SQLite file, replaced if it exists (default: %(default)s)",
    )
    store_options(
        demo,
        json_output='{"store", "threads": [ids], "customer_id", "deliveries", "duplicates", '
        '"events"} instead of the timelines',
    )
    demo.set_defaults(func=run_demo)
