"""The ``convthread`` command line: ``demo``, ``show``, ``schema``, ``import``, ``migrate``.

``convthread demo`` plays a realistic cross-channel journey into a SQLite file and prints
each thread as a timeline with channels, parties and the reason for every decision.
``convthread show`` prints a thread or a customer from an existing store.
``convthread schema snapshot|events`` prints a JSON Schema (2020-12).
``convthread import PATH`` imports history with its own times (see docs/import.md): a
progress bar on stderr when it is a terminal, a summary (``--json`` for JSON) at the end.
``convthread migrate URL`` upgrades a database written by an earlier release: it prints
the current and target schema versions and the pending steps, then runs them (a progress
bar on a terminal); ``--dry-run`` only prints, ``--json`` prints a summary as JSON.

The store is chosen by ``--store URL`` or the ``CONVTHREAD_STORE`` environment variable
(``sqlite:///path.db``, ``memory://``, ``postgresql://...``). A command that only reads
(``show``) refuses a SQLite path whose file does not exist, with exit status 2, rather
than create an empty database there; commands that write (``demo``) create the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import TextIO
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
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
)
from convthread.domain.handoff import MovedToChannel
from convthread.domain.identifiers import email as email_address
from convthread.domain.model import Inbound, Trust
from convthread.domain.tokens import KeyRing
from convthread.errors import ConvthreadError, NotFound
from convthread.importing import HistoryInput, read_email_folder, read_jsonl, read_twitter_csv
from convthread.ports import ManualClock, SequentialIds
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


def _store_url(args: argparse.Namespace, default: str | None) -> str:
    url: str | None = args.store or os.environ.get("CONVTHREAD_STORE") or default
    if url is None:
        raise SystemExit("no store given: pass --store URL or set CONVTHREAD_STORE")
    if "://" not in url:  # a bare path means a SQLite file
        url = "sqlite:///" + url
    return url


#: Exit status of a read command whose SQLite file does not exist.
EXIT_NO_STORE = 2


def _open_existing(url: str) -> Conversations | None:
    """The service over the store ``url`` names, for a command that only reads. A SQLite
    file that does not exist is refused (opening it would create an empty database): the
    reason goes to stderr and the result is ``None``. Other schemes open as usual."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite" and not parts.netloc:
        path = Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))
        if str(path) not in ("", ".") and not path.is_file():
            sys.stderr.write(
                f"convthread: no SQLite store at {path} ({url}): the file does not exist, "
                "and read commands never create one\n"
            )
            return None
    return Conversations(open_store(url))


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


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.store or os.environ.get("CONVTHREAD_STORE"):
        url = _store_url(args, None)
    else:
        path = Path(args.db)
        for suffix in ("", "-wal", "-shm"):  # the demo starts from an empty file
            Path(str(path) + suffix).unlink(missing_ok=True)
        url = "sqlite:///" + str(path)
    clock = ManualClock(DEMO_T0)
    with demo_conversations(url, clock) as convs:
        out.write(f"Playing a cross-channel journey into {url}\n\n")
        run = demo_journey(convs, clock)
        touched = run.threads
        for thread_id in touched:
            print_thread(convs.thread(thread_id), out)
        customer_id = convs.thread_state(touched[0]).customer_id
        print_customer(convs, customer_id, out)
        snapshot = convs.snapshot(touched[-1], audience="agent", max_messages=6)
        out.write("What agent:lee sees when the call is handed over (agent snapshot):\n\n")
        out.write(snapshot.render("text", max_chars=1200) + "\n\n")
        external = convs.snapshot(touched[-1], audience="bot_vendor", max_messages=3)
        out.write("The same thread as an external bot vendor may see it (redacted):\n\n")
        out.write(external.render("text", max_chars=600) + "\n\n")
        events = len(convs.events(touched[-1]))
        duplicates = sum(convs.ingest(inbound).duplicate for inbound in run.deliveries)
        again = len(convs.events(touched[-1]))
        out.write(
            f"Redelivered all {len(run.deliveries)} inbound payloads: {duplicates} recognised "
            f"as duplicates; the thread has {again} events, as before ({events}).\n"
        )
    return 0


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    opened = _open_existing(_store_url(args, None))
    if opened is None:
        return EXIT_NO_STORE
    with opened as convs:
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


def _cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from convthread.codec import event_schema
    from convthread.domain.snapshot import snapshot_schema

    schema = snapshot_schema() if args.which == "snapshot" else event_schema()
    out.write(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return 0


# --------------------------------------------------------------------------- import

#: Exit status of an import that finished with messages it could not record.
EXIT_SOME_FAILED = 3


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
        raise SystemExit(f"convthread: {path} does not exist")
    channel = args.channel
    if path.is_dir():
        if channel not in (None, "email"):
            raise SystemExit("convthread: a folder is read as raw e-mails (--channel email)")
        return read_email_folder(path, pattern=args.pattern)
    if path.suffix.lower() == ".csv":
        if channel not in (None, "twitter"):
            raise SystemExit("convthread: a CSV is read as Twitter support tweets")
        return read_twitter_csv(path)
    if channel is None:
        raise SystemExit("convthread: a JSONL file needs --channel (whatsapp, email, ...)")
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
    url = _store_url(args, None)
    items = history_order(_history_source(args))
    bar = _ProgressBar(sys.stderr, len(items)) if sys.stderr.isatty() else None
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
            return 130
    if bar is not None:
        bar.end()
    if args.json:
        out.write(codec.to_json(summary).decode() + "\n")
    else:
        out.write(f"Imported history from {args.path} into {url}\n")
        _print_summary(summary, out)
    return EXIT_SOME_FAILED if summary.failed else 0


# --------------------------------------------------------------------------- migrate

#: Exit status of ``migrate`` when the database cannot be opened or a step fails.
EXIT_MIGRATE_FAILED = 1


def _migrate_url(target: str) -> str:
    return target if "://" in target else "sqlite:///" + target


def _print_status(status: SchemaStatus, out: TextIO) -> None:
    out.write(
        f"{status.store}: schema version {status.current}, this convthread writes {status.target}\n"
    )
    for step in status.pending:
        out.write(f"  step {step.version} ({step.kind}): {step.description}\n")


def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    url = _migrate_url(args.url)
    # Read the status first, without changing anything: nothing runs before it is shown.
    status = schema_status(url)
    if not args.json:
        _print_status(status, out)
        out.flush()
    if args.dry_run or status.up_to_date:
        if args.json:
            out.write(codec.to_json(_migrate_summary(status, ran=False)).decode() + "\n")
        elif status.up_to_date:
            out.write("  nothing to do\n")
        else:
            out.write(f"  dry run: {len(status.pending)} step(s) would run\n")
        return 0
    bars: dict[int, _ProgressBar] = {}
    tty = sys.stderr.isatty()

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
        out.write(codec.to_json(_migrate_summary(status, ran=True)).decode() + "\n")
    else:
        out.write(f"  migrated to schema version {status.target}\n")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convthread",
        description="Cross-channel conversation continuity for customer service.",
    )
    parser.add_argument("--version", action="version", version=f"convthread {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="play a cross-channel journey into a SQLite file")
    demo.add_argument(
        "--db",
        default=DEFAULT_DEMO_DB,
        help="SQLite file, replaced if it exists (default: %(default)s)",
    )
    demo.add_argument("--store", help="store URL instead of --db (or CONVTHREAD_STORE)")
    demo.set_defaults(func=_cmd_demo)

    show = sub.add_parser("show", help="print a thread or a customer from a store")
    show.add_argument("what", choices=["thread", "customer"])
    show.add_argument("id")
    show.add_argument("--store", help="store URL or SQLite path (or CONVTHREAD_STORE)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a timeline")
    show.set_defaults(func=_cmd_show)

    schema = sub.add_parser("schema", help="print the JSON Schema of snapshots or events")
    schema.add_argument("which", choices=["snapshot", "events"])
    schema.set_defaults(func=_cmd_schema)

    imp = sub.add_parser(
        "import",
        help="import history with its own times (JSONL payloads, e-mail folder, Twitter CSV)",
        description="Import history: each message is recorded at its own time. A rerun "
        "skips what is already in, so an interrupted import resumes. Exit status 3 when "
        "some messages could not be recorded (the summary says why).",
    )
    imp.add_argument("path", help="a JSONL file of raw payloads, a folder of e-mails, or a CSV")
    imp.add_argument("--channel", help="the channel of a JSONL file's payloads (whatsapp, ...)")
    imp.add_argument("--store", help="store URL or SQLite path (or CONVTHREAD_STORE)")
    imp.add_argument(
        "--chunk-size", type=int, default=200, help="messages per transaction (%(default)s)"
    )
    imp.add_argument("--pattern", default="*.eml", help="files of a folder (%(default)s)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=_cmd_import)

    mig = sub.add_parser(
        "migrate",
        help="upgrade a database written by an earlier release to this schema version",
        description="Print the database's schema version, this release's and the pending "
        "steps, then run them, each in a transaction of its own (a progress bar on a "
        "terminal). Exit status 0 when done or nothing to do, 1 on an error (a database "
        "newer than this release, a missing file, a failed step: the database stays at "
        "the last step that completed).",
    )
    mig.add_argument("url", help="store URL (sqlite:///file.db, postgresql://...) or SQLite path")
    mig.add_argument("--dry-run", action="store_true", help="only print what would run")
    mig.add_argument("--json", action="store_true", help="print a summary as JSON")
    mig.set_defaults(func=_cmd_migrate)

    from convthread import _cli_feed

    _cli_feed.add_commands(sub)  # feed, consumers
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
