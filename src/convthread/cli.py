"""The ``convthread`` command line: ``demo``, ``show``.

``convthread demo`` plays a realistic cross-channel journey into a SQLite file and prints
each thread as a timeline with channels, parties and the reason for every decision.
``convthread show`` prints a thread or a customer from an existing store.

The store is chosen by ``--store URL`` or the ``CONVTHREAD_STORE`` environment variable
(``sqlite:///path.db``, ``memory://``, ``postgresql://...``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from convthread import codec
from convthread._version import __version__
from convthread.domain.events import (
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
)
from convthread.domain.identifiers import email, handle, phone
from convthread.domain.model import Content, Inbound, SenderIdentifier, Trust
from convthread.errors import ConvthreadError, NotFound
from convthread.ports import ManualClock, SequentialIds
from convthread.service import Conversations, ThreadView
from convthread.stores import open_store

__all__ = ["main"]

DEFAULT_DEMO_DB = "convthread-demo.db"


def _store_url(args: argparse.Namespace, default: str | None) -> str:
    url: str | None = args.store or os.environ.get("CONVTHREAD_STORE") or default
    if url is None:
        raise SystemExit("no store given: pass --store URL or set CONVTHREAD_STORE")
    if "://" not in url:  # a bare path means a SQLite file
        url = "sqlite:///" + url
    return url


# --------------------------------------------------------------------------- rendering


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _clip(text: str, width: int = 72) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def print_thread(view: ThreadView, out: TextIO) -> None:
    """Print a thread as a timeline: each event with channel, party and reason."""
    state = view.state
    journey = " → ".join(state.channels)
    out.write(
        f"Thread {state.id}  customer {state.customer_id}  [{state.status.value}]\n"
        f"  channels: {journey}\n"
    )
    if state.predecessor:
        out.write(f"  follows: {state.predecessor}\n")
    for stored in view.events:
        _print_event(stored.seq, stored.event, out)
    out.write("\n")


def _print_event(seq: int, event: ThreadEvent, out: TextIO) -> None:
    if isinstance(event, ThreadStarted):
        topic = f" topic {event.topic!r}" if event.topic else ""
        out.write(f"  #{seq:<3} {_fmt_time(event.at)}  thread started on {event.channel}{topic}\n")
        return
    if isinstance(event, MessageReceived):
        who = f"customer via {event.sender.identifier} ({event.sender.trust.value})"
        out.write(
            f"  #{seq:<3} {_fmt_time(event.sent_at)}  {event.channel:<9} {who}\n"
            f"        “{_clip(event.content.text)}”\n"
        )
        if event.resolution is not None:
            out.write(f"        who:    [{event.resolution.rule}] {event.resolution.reason}\n")
        if event.decision is not None:
            out.write(f"        thread: [{event.decision.rule}] {event.decision.reason}\n")
        return
    if isinstance(event, MessageSent):
        out.write(
            f"  #{seq:<3} {_fmt_time(event.at)}  {event.channel:<9} {event.sender}\n"
            f"        “{_clip(event.content.text)}”\n"
        )
        return
    if isinstance(event, LifecycleChanged):
        out.write(
            f"  #{seq:<3} {_fmt_time(event.at)}  status → {event.status.value}: {event.reason}\n"
        )
        return
    tag = type(event).__struct_config__.tag
    out.write(f"  #{seq:<3} {_fmt_time(event.at)}  {tag}\n")


def print_customer(convs: Conversations, customer_id: str, out: TextIO) -> None:
    view = convs.customer(customer_id)
    out.write(f"Customer {view.id}\n  identifiers:\n")
    for ident, trust in sorted(view.state.identifiers.values()):
        out.write(f"    {ident} ({trust.value})\n")
    out.write(f"  threads: {', '.join(view.thread_ids) or '-'}\n\n")


# --------------------------------------------------------------------------- the demo


def demo_journey(convs: Conversations, clock: ManualClock) -> list[str]:
    """Play Dana's journey: a tweet, a DM, WhatsApp, e-mail, then a phone call.

    Returns the thread ids touched, in order. Every step is idempotent (redelivering the
    whole journey stores nothing twice).
    """
    t0 = clock.now()
    twitter_dana = handle("twitter", "@dana_k")
    dana_phone = phone("+44 7911 123456")
    dana_mail = email("Dana.K@Example.com")

    def at(minutes: float) -> datetime:
        moment = t0 + timedelta(minutes=minutes)
        clock.set(moment + timedelta(seconds=2))
        return moment

    touched: list[str] = []

    def inbound(
        channel: str,
        pid: str,
        minutes: float,
        text: str,
        sender: Sequence[SenderIdentifier],
        **extra: object,
    ) -> str:
        msg = Inbound(
            channel=channel,
            provider_message_id=pid,
            sender=tuple(sender),
            content=Content(text=text),
            sent_at=at(minutes),
            **extra,  # type: ignore[arg-type]
        )
        result = convs.ingest(msg)
        if result.thread_id not in touched:
            touched.append(result.thread_id)
        return result.thread_id

    # 1. A public mention on Twitter: the channel vouches for the handle.
    th = inbound(
        "twitter",
        "1790001",
        0,
        "@AcmeAir my refund for order AC-4471 still hasn't arrived, 3 weeks now",
        [SenderIdentifier(twitter_dana, Trust.ASSERTED)],
    )
    at(4)
    convs.send(
        th,
        "Sorry to hear that Dana! Please DM us so we can look into AC-4471.",
        sender="agent:sam",
        idempotency_key="demo-reply-1",
    )
    # 2. The DM: she types her phone number (a claim, not proof).
    inbound(
        "twitter",
        "dm-88120",
        9,
        "Hi, it's about AC-4471. Text me on +44 7911 123456 if easier",
        [
            SenderIdentifier(twitter_dana, Trust.ASSERTED),
            SenderIdentifier(dana_phone, Trust.CLAIMED),
        ],
    )
    # 3. An hour later, from the bus, on WhatsApp: WhatsApp asserts the number.
    inbound(
        "whatsapp",
        "wamid.HBgMNDQ3OTExMTIzNDU2FQIAEhgg",
        70,
        "On the bus now. Can you email me the refund confirmation? dana.k@example.com",
        [
            SenderIdentifier(dana_phone, Trust.ASSERTED),
            SenderIdentifier(dana_mail, Trust.CLAIMED),
        ],
    )
    at(85)
    convs.send(
        th,
        "We've emailed you the confirmation for AC-4471.",
        sender="agent:sam",
        channel="whatsapp",
        idempotency_key="demo-reply-2",
    )
    at(86)
    convs.send(
        th,
        "Refund confirmation for order AC-4471: EUR 212.40, issued 2026-03-02.",
        sender="agent:sam",
        channel="email",
        provider_message_id="<refund-ac4471@acme.example>",
        idempotency_key="demo-reply-3",
    )
    # 4. Her e-mail reply threads on In-Reply-To.
    inbound(
        "email",
        "<CAF7xk2m@mail.example.com>",
        140,
        "Thanks, but the amount is wrong: I paid EUR 245.90.",
        [SenderIdentifier(dana_mail, Trust.CLAIMED)],
        reply_to="<refund-ac4471@acme.example>",
        subject="Re: Refund confirmation AC-4471",
    )
    # 5. She calls: the carrier's caller id is asserted.
    inbound(
        "voice",
        "call-5521-seg-1",
        175,
        "I'm calling about my refund for AC-4471, the amount is wrong.",
        [SenderIdentifier(dana_phone, Trust.ASSERTED)],
    )
    return touched


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.store or os.environ.get("CONVTHREAD_STORE"):
        url = _store_url(args, None)
    else:
        path = Path(args.db)
        if args.fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        url = "sqlite:///" + str(path)
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    with Conversations(open_store(url), clock=clock, ids=SequentialIds()) as convs:
        out.write(f"Playing a cross-channel journey into {url}\n\n")
        touched = demo_journey(convs, clock)
        for thread_id in touched:
            print_thread(convs.thread(thread_id), out)
        customer_id = convs.thread_state(touched[0]).customer_id
        print_customer(convs, customer_id, out)
        again = demo_journey(convs, ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)))
        events = sum(len(convs.events(t)) for t in again)
        out.write(
            f"Replayed the whole journey: every delivery was recognised as a duplicate; "
            f"the thread still has {events} events.\n"
        )
    return 0


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    url = _store_url(args, None)
    with Conversations(open_store(url)) as convs:
        if args.json:
            if args.what == "thread":
                out.write(codec.to_json(convs.thread(args.id)).decode() + "\n")
            else:
                out.write(codec.to_json(convs.customer(args.id)).decode() + "\n")
            return 0
        if args.what == "thread":
            print_thread(convs.thread(args.id), out)
        else:
            print_customer(convs, args.id, out)
            for thread_id in convs.customer(args.id).thread_ids:
                print_thread(convs.thread(thread_id), out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convthread",
        description="Cross-channel conversation continuity for customer service.",
    )
    parser.add_argument("--version", action="version", version=f"convthread {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="play a cross-channel journey into a SQLite file")
    demo.add_argument("--db", default=DEFAULT_DEMO_DB, help="SQLite file (default: %(default)s)")
    demo.add_argument("--store", help="store URL instead of --db (or CONVTHREAD_STORE)")
    demo.add_argument(
        "--keep", dest="fresh", action="store_false", help="keep an existing demo file"
    )
    demo.set_defaults(func=_cmd_demo)

    show = sub.add_parser("show", help="print a thread or a customer from a store")
    show.add_argument("what", choices=["thread", "customer"])
    show.add_argument("id")
    show.add_argument("--store", help="store URL or SQLite path (or CONVTHREAD_STORE)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a timeline")
    show.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out or sys.stdout
    try:
        status: int = args.func(args, stream)
    except NotFound as exc:
        sys.stderr.write(f"convthread: {exc}\n")
        return 2
    except ConvthreadError as exc:
        sys.stderr.write(f"convthread: {type(exc).__name__}: {exc}\n")
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
