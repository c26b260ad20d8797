"""``convthread show thread|customer ID``: timelines, every event with its reason."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from convthread.cli._common import (
    EXIT_OK,
    command,
    fmt_time,
    open_for_reading,
    print_json,
    store_options,
)
from convthread.domain.events import (
    ContinuationIssued,
    ContinuationRedeemed,
    HandoffAccepted,
    HandoffOffered,
    HandoffRequested,
    IdentifierLinked,
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
)
from convthread.service import (
    Conversations,
    ThreadView,
)


def _clip(text: str, width: int = 72) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _said(channel: str, text: str) -> str:
    if text:
        return f"“{_clip(text)}”"
    return "(the call starts)" if channel == "voice" else "(no text)"


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
        out.write(f"  #{seq:<3} {fmt_time(event.at)}  thread started on {event.channel}{topic}\n")
        return
    if isinstance(event, MessageReceived):
        who = f"customer via {event.sender.identifier} ({event.sender.trust.value})"
        out.write(
            f"  #{seq:<3} {fmt_time(event.sent_at)}  {event.channel:<9} {who}\n"
            f"        {_said(event.channel, event.content.text)}\n"
        )
        if event.resolution is not None:
            out.write(f"        who:    [{event.resolution.rule}] {event.resolution.reason}\n")
        if event.decision is not None:
            out.write(f"        thread: [{event.decision.rule}] {event.decision.reason}\n")
        return
    if isinstance(event, MessageSent):
        out.write(
            f"  #{seq:<3} {fmt_time(event.at)}  {event.channel:<9} {event.sender}\n"
            f"        {_said(event.channel, event.content.text)}\n"
        )
        return
    if isinstance(event, HandoffRequested):
        why = f": {event.reason}" if event.reason else ""
        out.write(f"  #{seq:<3} {fmt_time(event.at)}  handoff requested → {event.target}{why}\n")
        return
    if isinstance(event, HandoffOffered):
        out.write(f"  #{seq:<3} {fmt_time(event.at)}  handoff offered to {event.offered_to}\n")
        return
    if isinstance(event, HandoffAccepted):
        out.write(
            f"  #{seq:<3} {fmt_time(event.at)}  {event.by} took control "
            f"(fencing token {event.fencing_token})\n"
        )
        return
    if isinstance(event, ContinuationIssued | ContinuationRedeemed):
        what = "issued" if isinstance(event, ContinuationIssued) else "redeemed"
        out.write(f"  #{seq:<3} {fmt_time(event.at)}  continuation code {what}\n")
        return
    if isinstance(event, LifecycleChanged):
        out.write(
            f"  #{seq:<3} {fmt_time(event.at)}  status → {event.status.value}: {event.reason}\n"
        )
        return
    tag = type(event).__struct_config__.tag
    out.write(f"  #{seq:<3} {fmt_time(event.at)}  {tag}\n")


def print_customer(convs: Conversations, customer_id: str, out: TextIO) -> None:
    """Print a customer: each identifier with its trust and how it was linked."""
    view = convs.customer(customer_id)
    how: dict[str, str] = {}
    for _seq, event in view.events:
        if isinstance(event, IdentifierLinked):
            ev = event.evidence
            where = f" on {ev.channel}" if ev.channel else ""
            by = f" by {ev.by}" if ev.by and not ev.by.startswith("channel:") else ""
            how[event.identifier.key] = f"{ev.method}{where}{by}"
    out.write(f"Customer {view.id}\n  identifiers:\n")
    for ident, trust in sorted(view.state.identifiers.values()):
        evidence = how.get(ident.key, "")
        out.write(f"    {ident} ({trust.value}{'; ' + evidence if evidence else ''})\n")
    out.write(f"  threads: {', '.join(view.thread_ids) or '-'}\n\n")


def run_show(args: argparse.Namespace, out: TextIO) -> int:
    with open_for_reading(args) as convs:
        if args.json:
            if args.what == "thread":
                print_json(convs.thread(args.id), out)
            else:
                print_json(convs.customer(args.id), out)
            return EXIT_OK
        if args.what == "thread":
            print_thread(convs.thread(args.id), out)
        else:
            print_customer(convs, args.id, out)
            for thread_id in convs.customer(args.id).thread_ids:
                print_thread(convs.thread(thread_id), out)
    return EXIT_OK


def add_show(sub: Any) -> None:
    show = command(
        sub,
        "show",
        help="print a thread or a customer as timelines, every event with its reason",
        example="convthread show thread th_0001 --store demo.db",
    )
    show.add_argument("what", choices=["thread", "customer"])
    show.add_argument("id", help="the thread or customer id")
    store_options(
        show,
        tenant=True,
        json_output="the ThreadView (state, events) or CustomerView (state, events, "
        "thread_ids), as the codec encodes them",
    )
    show.set_defaults(func=run_show)
