"""The ``convthread`` command line.

Commands: ``demo``, ``show``, ``threads``, ``customer``, ``schema``, ``import``,
``migrate`` and ``completion``; ``convthread COMMAND --help`` ends with an example.

Conventions (every command follows them; a new command gets them from the helpers below):

* **One function per command.** ``_cmd_NAME(args, out) -> int`` does the work and
  returns the exit status; ``_add_NAME(sub)`` declares its parser with :func:`_command`
  (help, description and an example) and :func:`_store_options`. ``build_parser`` calls
  every ``_add_*`` function in :data:`COMMANDS` order.
* **The store**: ``--store URL`` (``sqlite:///path.db``, ``memory://``,
  ``postgresql://...``; a bare path is a SQLite file), else the ``CONVTHREAD_STORE``
  environment variable. A command that only reads refuses a SQLite file that does not
  exist (exit 1) rather than create an empty database there; commands that write create
  it. ``migrate`` also takes the store as its argument.
* **The tenant**: ``--tenant NAME`` on commands that read or write conversation data.
  The service works in the store's default tenant only, so ``default`` (the default) is
  the only value accepted today; any other is a usage error (exit 2).
* **Output**: text for people on stdout (tables drawn with ``rich`` on a terminal when it
  is installed, ``pip install 'convthread[cli]'``, plain aligned columns otherwise);
  ``--json`` prints one JSON document instead, whose shape each command's help states.
  Messages about failures go to stderr, prefixed ``convthread:``. Long work (``import``,
  ``migrate``) draws a progress bar on stderr when stderr is a terminal.
* **Exit status**: :data:`EXIT_OK` 0 done; :data:`EXIT_NOT_FOUND` 1 the thread,
  customer, identifier or store file named does not exist; :data:`EXIT_USAGE` 2 bad
  arguments (argparse's own errors included); :data:`EXIT_SOME_FAILED` 3 an import
  finished with messages it could not record; :data:`EXIT_FAILED` 4 the library or the
  store refused or failed (a schema newer than this release, an unreachable database,
  invalid input); :data:`EXIT_INTERRUPTED` 130 interrupted (Ctrl-C).
* **Completion**: ``convthread completion bash|zsh`` prints a completion script
  generated from the parsers (with ``shtab``, in the ``cli`` extra).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from convthread import codec
from convthread._version import __version__
from convthread.channels import email, social, voice, whatsapp
from convthread.domain.events import (
    ContinuationIssued,
    ContinuationRedeemed,
    HandoffAccepted,
    HandoffOffered,
    HandoffRequested,
    IdentifierLinked,
    IdentifierVerified,
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.handoff import MovedToChannel
from convthread.domain.identifiers import email as email_address
from convthread.domain.identifiers import normalize_identifier
from convthread.domain.model import Identifier, Inbound, Trust
from convthread.domain.thread import ThreadState
from convthread.domain.tokens import KeyRing
from convthread.errors import ConvthreadError, NotFound
from convthread.importing import HistoryInput, read_email_folder, read_jsonl, read_twitter_csv
from convthread.ports import DEFAULT_TENANT, ManualClock, SequentialIds
from convthread.service import (
    Conversations,
    ImportSummary,
    IngestResult,
    ThreadView,
    history_order,
)
from convthread.stores import SchemaStatus, open_store, schema_status
from convthread.stores import migrate as migrate_store

__all__ = ["main"]

DEFAULT_DEMO_DB = "convthread-demo.db"

#: Exit statuses (see the module docstring).
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130
#: Exit status of a read command whose SQLite file does not exist (not found).
EXIT_NO_STORE = EXIT_NOT_FOUND

#: The environment variable read when ``--store`` is not given.
STORE_VARIABLE = "CONVTHREAD_STORE"
#: The name ``--tenant`` gives the store's default tenant.
DEFAULT_TENANT_NAME = "default"


class CliError(Exception):
    """A command that cannot go on: ``message`` goes to stderr, ``status`` is the exit
    status. Raised by the shared helpers and commands, turned into output by ``main``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- shared helpers


def _command(
    sub: Any, name: str, *, help: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    """A sub-command's parser: its one-line help, a description, and an example (shown
    last by ``--help``)."""
    text = description or help[:1].upper() + help[1:] + "."
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(text, 80),
        epilog="example:\n  " + example.replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _store_options(
    parser: argparse.ArgumentParser,
    *,
    store: bool = True,
    tenant: bool = False,
    json_output: str | None = None,
) -> None:
    """The shared options: ``--store`` (with the environment fallback), ``--tenant``
    where a command reads or writes conversation data, ``--json`` with the shape of what
    it prints (``json_output``)."""
    if store:
        parser.add_argument(
            "--store",
            metavar="URL",
            help=f"store URL or SQLite path (default: ${STORE_VARIABLE})",
        )
    if tenant:
        parser.add_argument(
            "--tenant",
            default=DEFAULT_TENANT_NAME,
            help="the tenant (only %(default)s: the service has no tenant selection yet)",
        )
    if json_output is not None:
        parser.add_argument("--json", action="store_true", help=f"print JSON: {json_output}")


def _store_url(args: argparse.Namespace, default: str | None = None) -> str:
    """The store ``--store`` or the environment names (a bare path is a SQLite file)."""
    url: str | None = getattr(args, "store", None) or os.environ.get(STORE_VARIABLE) or default
    if not url:
        raise CliError(EXIT_USAGE, f"no store given: pass --store URL or set {STORE_VARIABLE}")
    if "://" not in url:  # a bare path means a SQLite file
        url = "sqlite:///" + url
    return url


def _check_tenant(args: argparse.Namespace) -> str:
    """The store tenant ``--tenant`` names; only the default one exists for the service."""
    name = getattr(args, "tenant", DEFAULT_TENANT_NAME)
    if name not in (DEFAULT_TENANT_NAME, DEFAULT_TENANT):
        raise CliError(
            EXIT_USAGE,
            f"tenant {name!r}: this release's service works in the default tenant only "
            f"(--tenant {DEFAULT_TENANT_NAME})",
        )
    return DEFAULT_TENANT


def _missing_sqlite_file(url: str) -> Path | None:
    """The path of the SQLite file ``url`` names when that file does not exist."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite" and not parts.netloc:
        path = Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))
        if str(path) not in ("", ".") and not path.is_file():
            return path
    return None


def _open_existing(url: str) -> Conversations:
    """The service over the store ``url`` names, for a command that only reads. A SQLite
    file that does not exist is refused (opening it would create an empty database)."""
    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise CliError(
            EXIT_NOT_FOUND,
            f"no SQLite store at {missing} ({url}): the file does not exist, "
            "and read commands never create one",
        )
    return Conversations(open_store(url))


def _open_for_reading(args: argparse.Namespace) -> Conversations:
    """The service for a read command: store and tenant from the shared options."""
    _check_tenant(args)
    return _open_existing(_store_url(args))


def _print_json(value: object, out: TextIO) -> None:
    """One JSON document on its own line (msgspec structs, enums and times included)."""
    out.write(codec.to_json(value).decode() + "\n")


def _print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, title: str = ""
) -> None:
    """A table for people: drawn by rich on a terminal when rich is installed, plain
    columns (two spaces apart, no trailing spaces) otherwise."""
    if _isatty(out):
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(*headers, title=title or None, show_edge=False)
            for row in rows:
                table.add_row(*row)
            Console(file=out).print(table)
            return
    if title:
        out.write(title + "\n")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line)]
        out.write("  ".join(cells).rstrip() + "\n")


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- rendering


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


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
        out.write(f"  #{seq:<3} {_fmt_time(event.at)}  thread started on {event.channel}{topic}\n")
        return
    if isinstance(event, MessageReceived):
        who = f"customer via {event.sender.identifier} ({event.sender.trust.value})"
        out.write(
            f"  #{seq:<3} {_fmt_time(event.sent_at)}  {event.channel:<9} {who}\n"
            f"        {_said(event.channel, event.content.text)}\n"
        )
        if event.resolution is not None:
            out.write(f"        who:    [{event.resolution.rule}] {event.resolution.reason}\n")
        if event.decision is not None:
            out.write(f"        thread: [{event.decision.rule}] {event.decision.reason}\n")
        return
    if isinstance(event, MessageSent):
        out.write(
            f"  #{seq:<3} {_fmt_time(event.at)}  {event.channel:<9} {event.sender}\n"
            f"        {_said(event.channel, event.content.text)}\n"
        )
        return
    if isinstance(event, HandoffRequested):
        why = f": {event.reason}" if event.reason else ""
        out.write(f"  #{seq:<3} {_fmt_time(event.at)}  handoff requested → {event.target}{why}\n")
        return
    if isinstance(event, HandoffOffered):
        out.write(f"  #{seq:<3} {_fmt_time(event.at)}  handoff offered to {event.offered_to}\n")
        return
    if isinstance(event, HandoffAccepted):
        out.write(
            f"  #{seq:<3} {_fmt_time(event.at)}  {event.by} took control "
            f"(fencing token {event.fencing_token})\n"
        )
        return
    if isinstance(event, ContinuationIssued | ContinuationRedeemed):
        what = "issued" if isinstance(event, ContinuationIssued) else "redeemed"
        out.write(f"  #{seq:<3} {_fmt_time(event.at)}  continuation code {what}\n")
        return
    if isinstance(event, LifecycleChanged):
        out.write(
            f"  #{seq:<3} {_fmt_time(event.at)}  status → {event.status.value}: {event.reason}\n"
        )
        return
    tag = type(event).__struct_config__.tag
    out.write(f"  #{seq:<3} {_fmt_time(event.at)}  {tag}\n")


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


# --------------------------------------------------------------------------- the demo

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


# --------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.store or os.environ.get(STORE_VARIABLE):
        url = _store_url(args)
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
        _print_json(
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


def _add_demo(sub: Any) -> None:
    demo = _command(
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
    _store_options(
        demo,
        json_output='{"store", "threads": [ids], "customer_id", "deliveries", "duplicates", '
        '"events"} instead of the timelines',
    )
    demo.set_defaults(func=_cmd_demo)


# --------------------------------------------------------------------------- show


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    with _open_for_reading(args) as convs:
        if args.json:
            if args.what == "thread":
                _print_json(convs.thread(args.id), out)
            else:
                _print_json(convs.customer(args.id), out)
            return EXIT_OK
        if args.what == "thread":
            print_thread(convs.thread(args.id), out)
        else:
            print_customer(convs, args.id, out)
            for thread_id in convs.customer(args.id).thread_ids:
                print_thread(convs.thread(thread_id), out)
    return EXIT_OK


def _add_show(sub: Any) -> None:
    show = _command(
        sub,
        "show",
        help="print a thread or a customer as timelines, every event with its reason",
        example="convthread show thread th_0001 --store demo.db",
    )
    show.add_argument("what", choices=["thread", "customer"])
    show.add_argument("id", help="the thread or customer id")
    _store_options(
        show,
        tenant=True,
        json_output="the ThreadView (state, events) or CustomerView (state, events, "
        "thread_ids), as the codec encodes them",
    )
    show.set_defaults(func=_cmd_show)


# --------------------------------------------------------------------------- threads

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _moment(text: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset), or a duration before now (``90m``,
    ``24h``, ``7d``, ``2w``)."""
    found = _DURATION.match(text.strip())
    if found:
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor a duration such as 90m, 24h, 7d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _thread_row(state: ThreadState) -> dict[str, object]:
    return {
        "id": state.id,
        "customer_id": state.customer_id,
        "status": state.status.value,
        "channels": list(state.channels),
        "last_channel": state.last_channel,
        "topic": state.topic,
        "created_at": state.created_at,
        "last_activity": state.last_activity,
        "message_count": state.message_count,
        "controller": str(state.controller) if state.controller else None,
        "snoozed_until": state.snoozed_until,
    }


def _cmd_threads(args: argparse.Namespace, out: TextIO) -> int:
    if args.active_since and args.active_until and args.active_since > args.active_until:
        raise CliError(EXIT_USAGE, "--active-since is later than --active-until")
    found: list[ThreadState] = []
    cursor = args.cursor
    with _open_for_reading(args) as convs:
        while True:
            page = convs.threads(
                customer=args.customer,
                status=args.status,
                channel=args.channel,
                controller=args.controller,
                active_after=args.active_since,
                active_before=args.active_until,
                limit=min(args.limit - len(found), 1000) if not args.all else 1000,
                cursor=cursor,
            )
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None or (not args.all and len(found) >= args.limit):
                break
    if args.json:
        _print_json({"threads": [_thread_row(t) for t in found], "next_cursor": cursor}, out)
        return EXIT_OK
    rows = [
        [
            t.id,
            t.customer_id,
            t.status.value,
            " → ".join(t.channels),
            _fmt_time(t.last_activity),
            str(t.message_count),
            str(t.controller) if t.controller else "-",
        ]
        for t in found
    ]
    if not rows:
        out.write("no threads match\n")
    else:
        headers = ["THREAD", "CUSTOMER", "STATUS", "CHANNELS", "LAST ACTIVITY", "MSGS"]
        _print_table([*headers, "CONTROLLER"], rows, out)
    if cursor is not None:
        out.write(f"more: --cursor {cursor}\n")
    return EXIT_OK


def _add_threads(sub: Any) -> None:
    threads = _command(
        sub,
        "threads",
        help="list threads by status, channel, customer, controller and activity",
        description="List threads, oldest activity first, a page at a time (--limit; "
        "--cursor continues where a page ended, --all follows every page). Times are "
        "ISO 8601 (UTC without an offset) or a duration before now: 90m, 24h, 7d, 2w.",
        example="convthread threads --status open --channel whatsapp --active-since 24h",
    )
    threads.add_argument(
        "--status",
        choices=[s.value for s in ThreadStatus],
        help="only threads in this status",
    )
    threads.add_argument("--channel", help="only threads that used this channel (sms, ...)")
    threads.add_argument("--customer", metavar="ID", help="only this customer's threads")
    threads.add_argument(
        "--controller", metavar="PARTY", help="only threads this party controls (agent:lee)"
    )
    threads.add_argument(
        "--active-since", type=_moment, metavar="TIME", help="last activity at or after"
    )
    threads.add_argument(
        "--active-until", type=_moment, metavar="TIME", help="last activity at or before"
    )
    threads.add_argument("--limit", type=_positive, default=50, help="at most (%(default)s)")
    threads.add_argument("--cursor", help="the cursor a previous page printed")
    threads.add_argument("--all", action="store_true", help="follow every page")
    _store_options(
        threads,
        tenant=True,
        json_output='{"threads": [{"id", "customer_id", "status", "channels", '
        '"last_channel", "topic", "created_at", "last_activity", "message_count", '
        '"controller", "snoozed_until"}], "next_cursor"}',
    )
    threads.set_defaults(func=_cmd_threads)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


# --------------------------------------------------------------------------- customer

_IDENTIFIER = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?:(.+)$")


def _identifier(text: str) -> Identifier:
    """``kind:value`` or ``kind[scope]:value``, as convthread prints identifiers."""
    found = _IDENTIFIER.match(text.strip())
    if not found:
        raise CliError(
            EXIT_USAGE,
            f"{text!r} is not an identifier: write kind:value or kind[scope]:value "
            "(phone:+447911123456, email:dana@example.com, handle[twitter]:dana_k)",
        )
    kind, scope, value = found.group(1), found.group(2) or "", found.group(3)
    try:
        return normalize_identifier(kind, value, scope=scope)
    except ConvthreadError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None


def _customer_document(convs: Conversations, customer_id: str) -> dict[str, Any]:
    view = convs.customer(customer_id)
    evidence: dict[str, dict[str, object]] = {}
    for _seq, event in view.events:
        if isinstance(event, IdentifierLinked | IdentifierVerified):
            evidence[event.identifier.key] = codec.to_builtins(event.evidence)
    identifiers = []
    for ident, trust in sorted(view.state.identifiers.values()):
        explained = convs.explain(ident)
        lines = explained.render().splitlines()[1:]
        identifiers.append(
            {
                "identifier": str(ident),
                "kind": ident.kind,
                "scope": ident.scope,
                "value": ident.value,
                "trust": trust.value,
                "evidence": evidence.get(ident.key, {}),
                "history": [
                    {
                        "customer_id": step.customer_id,
                        "seq": step.seq,
                        "type": type(step.event).__struct_config__.tag,
                        "description": line.strip().split(" ", 1)[-1],
                    }
                    for step, line in zip(explained.steps, lines, strict=False)
                ],
            }
        )
    threads = convs.customer_threads(customer_id)
    return {
        "id": view.id,
        "created_at": view.state.created_at,
        "merged_into": view.state.merged_into,
        "erased": view.state.erased,
        "identifiers": identifiers,
        "threads": [_thread_row(t) for t in threads],
    }


def _cmd_customer(args: argparse.Namespace, out: TextIO) -> int:
    if (args.id is None) == (args.identifier is None):
        raise CliError(EXIT_USAGE, "name the customer by id or by --identifier, not both")
    with _open_for_reading(args) as convs:
        customer_id = args.id
        if args.identifier is not None:
            ident = _identifier(args.identifier)
            customer_id = convs.find_customer(ident)
            if customer_id is None:
                raise CliError(EXIT_NOT_FOUND, f"no customer has the identifier {ident}")
        doc = _customer_document(convs, customer_id)
    if args.json:
        _print_json(doc, out)
        return EXIT_OK
    out.write(f"Customer {doc['id']}  (since {_fmt_time(doc['created_at'])})\n")
    if doc["merged_into"]:
        out.write(f"  merged into {doc['merged_into']}\n")
    if doc["erased"]:
        out.write("  erased\n")
    rows = []
    for item in doc["identifiers"]:
        ev = item["evidence"]
        how = " ".join(
            part
            for part in (
                str(ev.get("method", "")),
                f"on {ev['channel']}" if ev.get("channel") else "",
                f"by {ev['by']}" if ev.get("by") else "",
            )
            if part
        )
        rows.append([item["identifier"], item["trust"], how or "-", str(ev.get("detail", ""))])
    if rows:
        _print_table(["IDENTIFIER", "TRUST", "EVIDENCE", "DETAIL"], rows, out)
    else:
        out.write("  no identifiers\n")
    thread_rows = [
        [
            t["id"],
            str(t["status"]),
            " → ".join(t["channels"]),
            _fmt_time(t["last_activity"]),
            str(t["message_count"]),
        ]
        for t in doc["threads"]
    ]
    out.write("\n")
    if thread_rows:
        _print_table(["THREAD", "STATUS", "CHANNELS", "LAST ACTIVITY", "MSGS"], thread_rows, out)
    else:
        out.write("no threads\n")
    return EXIT_OK


def _add_customer(sub: Any) -> None:
    customer = _command(
        sub,
        "customer",
        help="print a customer by id or identifier: identifiers, trust, evidence, threads",
        example="convthread customer --identifier phone:+447911123456 --store demo.db",
    )
    customer.add_argument("id", nargs="?", help="the customer id (or use --identifier)")
    customer.add_argument(
        "-i",
        "--identifier",
        metavar="KIND:VALUE",
        help="find the customer by identifier: phone:+447911123456, email:a@b.example, "
        "handle[twitter]:dana_k",
    )
    _store_options(
        customer,
        tenant=True,
        json_output='{"id", "created_at", "merged_into", "erased", "identifiers": '
        '[{"identifier", "kind", "scope", "value", "trust", "evidence": {"method", '
        '"channel", "by", "at", "detail"}, "history": [{"customer_id", "seq", "type", '
        '"description"}]}], "threads": [as convthread threads --json]}',
    )
    customer.set_defaults(func=_cmd_customer)


# --------------------------------------------------------------------------- schema


def _cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    from convthread.codec import event_schema
    from convthread.domain.snapshot import snapshot_schema

    schema = snapshot_schema() if args.which == "snapshot" else event_schema()
    out.write(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return EXIT_OK


def _add_schema(sub: Any) -> None:
    schema = _command(
        sub,
        "schema",
        help="print the JSON Schema (2020-12) of snapshots or events",
        example="convthread schema snapshot > snapshot.schema.json",
    )
    schema.add_argument("which", choices=["snapshot", "events"])
    _store_options(schema, store=False, json_output="the schema (always JSON)")
    schema.set_defaults(func=_cmd_schema)


# --------------------------------------------------------------------------- import


class _ProgressBar:
    """A one-line progress bar on ``stream`` (stderr), redrawn after each chunk."""

    def __init__(
        self, stream: TextIO, total: int, width: int = 30, *, label: str = "importing"
    ) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.width = width
        self.label = label
        self.drawn = False

    def __call__(self, summary: ImportSummary) -> None:
        self.draw(
            summary.read,
            f"({summary.imported} new, {summary.skipped} already in, {summary.failed} failed)",
        )

    def draw(self, done: int, note: str = "") -> None:
        done = min(done, self.total)
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {note}".rstrip())
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _history_source(args: argparse.Namespace) -> Iterable[HistoryInput]:
    path = Path(args.path)
    if not path.exists():
        raise CliError(EXIT_NOT_FOUND, f"{path} does not exist")
    channel = args.channel
    if path.is_dir():
        if channel not in (None, "email"):
            raise CliError(EXIT_USAGE, "a folder is read as raw e-mails (--channel email)")
        return read_email_folder(path, pattern=args.pattern)
    if path.suffix.lower() == ".csv":
        if channel not in (None, "twitter"):
            raise CliError(EXIT_USAGE, "a CSV is read as Twitter support tweets")
        return read_twitter_csv(path)
    if channel is None:
        raise CliError(EXIT_USAGE, "a JSONL file needs --channel (whatsapp, email, ...)")
    return read_jsonl(path, channel)


def _print_summary(summary: ImportSummary, out: TextIO) -> None:
    out.write(
        f"  read {summary.read}: imported {summary.imported}, skipped {summary.skipped} "
        f"(already in), failed {summary.failed}, ignored {summary.ignored}; "
        f"{summary.new_threads} new threads\n"
    )
    for kind, count in summary.ignored_kinds.items():
        out.write(f"  ignored {kind}: {count} (not a message)\n")
    for f in summary.failures:
        where = f" ({f.where})" if f.where else ""
        what = f"{f.channel} {f.provider_message_id}".strip() or "-"
        out.write(f"  failed #{f.index} {what}{where}: {f.error}: {f.reason}\n")


def _cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    _check_tenant(args)
    url = _store_url(args)
    items = history_order(_history_source(args))
    bar = _ProgressBar(sys.stderr, len(items)) if _isatty(sys.stderr) else None
    last: list[ImportSummary] = [ImportSummary()]

    def progress(summary: ImportSummary) -> None:
        last[0] = summary
        if bar is not None:
            bar(summary)

    with Conversations(open_store(url)) as convs:
        try:
            summary = convs.import_history(items, chunk_size=args.chunk_size, progress=progress)
        except KeyboardInterrupt:
            if bar is not None:
                bar.end()
            done = last[0]
            sys.stderr.write(
                f"convthread: interrupted after {done.read} of {len(items)} messages "
                f"({done.imported} imported); run the same command again to resume\n"
            )
            return EXIT_INTERRUPTED
    if bar is not None:
        bar.end()
    if args.json:
        _print_json(summary, out)
    else:
        out.write(f"Imported history from {args.path} into {url}\n")
        _print_summary(summary, out)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def _add_import(sub: Any) -> None:
    imp = _command(
        sub,
        "import",
        help="import history with its own times (JSONL payloads, e-mail folder, Twitter CSV)",
        description="Import history: each message is recorded at its own time. A rerun "
        "skips what is already in, so an interrupted import resumes. A progress bar on "
        "stderr when it is a terminal. Exit status 3 when some messages could not be "
        "recorded (the summary says why).",
        example="convthread import export.jsonl --channel whatsapp --store support.db",
    )
    imp.add_argument("path", help="a JSONL file of raw payloads, a folder of e-mails, or a CSV")
    imp.add_argument("--channel", help="the channel of a JSONL file's payloads (whatsapp, ...)")
    imp.add_argument(
        "--chunk-size", type=_positive, default=200, help="messages per transaction (%(default)s)"
    )
    imp.add_argument("--pattern", default="*.eml", help="files of a folder (%(default)s)")
    _store_options(
        imp,
        tenant=True,
        json_output="the ImportSummary (read, imported, skipped, failed, ignored, "
        "new_threads, ignored_kinds, failures)",
    )
    imp.set_defaults(func=_cmd_import)


# --------------------------------------------------------------------------- migrate


def _print_status(status: SchemaStatus, out: TextIO) -> None:
    out.write(
        f"{status.store}: schema version {status.current}, this convthread writes {status.target}\n"
    )
    for step in status.pending:
        out.write(f"  step {step.version} ({step.kind}): {step.description}\n")


def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    url = _store_url(args) if args.url is None else _store_url(argparse.Namespace(store=args.url))
    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise CliError(EXIT_NOT_FOUND, f"no SQLite store at {missing}: the file does not exist")
    # Read the status first, without changing anything: nothing runs before it is shown.
    status = schema_status(url)
    if not args.json:
        _print_status(status, out)
        out.flush()
    if args.dry_run or status.up_to_date:
        if args.json:
            _print_json(_migrate_summary(status, ran=False), out)
        elif status.up_to_date:
            out.write("  nothing to do\n")
        else:
            out.write(f"  dry run: {len(status.pending)} step(s) would run\n")
        return EXIT_OK
    bars: dict[int, _ProgressBar] = {}
    tty = _isatty(sys.stderr)

    def progress(version: int, done: int, total: int) -> None:
        if not tty or total <= 0:
            return
        bar = bars.get(version)
        if bar is None:
            for other in bars.values():
                other.end()
            bar = bars[version] = _ProgressBar(sys.stderr, total, label=f"step {version}")
        bar.total = max(total, 1)
        bar.draw(done, "rows" if done or total > 1 else "")

    try:
        migrate_store(url, progress=progress)
    finally:
        for bar in bars.values():
            bar.end()
    if args.json:
        _print_json(_migrate_summary(status, ran=True), out)
    else:
        out.write(f"  migrated to schema version {status.target}\n")
    return EXIT_OK


def _migrate_summary(status: SchemaStatus, *, ran: bool) -> dict[str, object]:
    return {
        "store": status.store,
        "from_version": status.current,
        "to_version": status.target if ran else status.current,
        "target_version": status.target,
        "steps": [codec.to_builtins(step) for step in status.pending],
        "applied": ran and not status.up_to_date,
        "dry_run": not ran and not status.up_to_date,
    }


def _add_migrate(sub: Any) -> None:
    mig = _command(
        sub,
        "migrate",
        help="upgrade a database written by an earlier release to this schema version",
        description="Print the database's schema version, this release's and the pending "
        "steps, then run them, each in a transaction of its own (a progress bar on a "
        "terminal). Exit status 0 when done or nothing to do, 1 when the SQLite file does "
        "not exist, 4 on an error (a database newer than this release, one that cannot be "
        "reached, a failed step: the database stays at the last step that completed).",
        example="convthread migrate support.db --dry-run && convthread migrate support.db",
    )
    mig.add_argument(
        "url",
        nargs="?",
        help=f"store URL or SQLite path (default: --store, then ${STORE_VARIABLE})",
    )
    mig.add_argument("--dry-run", action="store_true", help="only print what would run")
    _store_options(
        mig,
        json_output='{"store", "from_version", "to_version", "target_version", "steps", '
        '"applied", "dry_run"}',
    )
    mig.set_defaults(func=_cmd_migrate)


# --------------------------------------------------------------------------- completion


def _cmd_completion(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import shtab
    except ImportError:
        raise CliError(
            EXIT_FAILED,
            "shell completion is generated by shtab: pip install 'convthread[cli]'",
        ) from None
    out.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _add_completion(sub: Any) -> None:
    completion = _command(
        sub,
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for every command and option. Load it "
        "from your shell's start-up file (needs shtab: pip install 'convthread[cli]').",
        example='eval "$(convthread completion bash)"    # in ~/.bashrc\n'
        "convthread completion zsh > ~/.zfunc/_convthread",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(func=_cmd_completion)


# --------------------------------------------------------------------------- feed


def _add_feed_commands(sub: Any) -> None:
    from convthread import _cli_feed

    _cli_feed.add_commands(sub)  # feed, consumers


# --------------------------------------------------------------------------- main

#: Every command's parser declaration, in the order ``--help`` lists them.
COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_show,
    _add_threads,
    _add_customer,
    _add_schema,
    _add_import,
    _add_migrate,
    _add_completion,
    _add_feed_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convthread",
        description="Cross-channel conversation continuity for customer service.",
        epilog="exit status: 0 ok, 1 not found, 2 usage, 3 import finished with "
        "failures, 4 refused or failed, 130 interrupted. The store: --store URL or "
        f"${STORE_VARIABLE}. `convthread COMMAND --help` shows an example.",
    )
    parser.add_argument("--version", action="version", version=f"convthread {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    stream = out or sys.stdout
    try:
        status: int = args.func(args, stream)
    except CliError as exc:
        sys.stderr.write(f"convthread: {exc.message}\n")
        return exc.status
    except NotFound as exc:
        sys.stderr.write(f"convthread: {exc}\n")
        return EXIT_NOT_FOUND
    except ConvthreadError as exc:
        sys.stderr.write(f"convthread: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("convthread: interrupted\n")
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
