"""``convthread threads``: threads by status, channel, customer, controller and activity."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from convthread.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    command,
    fmt_time,
    open_for_reading,
    positive,
    print_json,
    print_table,
    store_options,
)
from convthread.domain.events import (
    ThreadStatus,
)
from convthread.domain.thread import ThreadState

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


def thread_row(state: ThreadState) -> dict[str, object]:
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


def run_threads(args: argparse.Namespace, out: TextIO) -> int:
    if args.active_since and args.active_until and args.active_since > args.active_until:
        raise CliError(EXIT_USAGE, "--active-since is later than --active-until")
    found: list[ThreadState] = []
    cursor = args.cursor
    with open_for_reading(args) as convs:
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
        print_json({"threads": [thread_row(t) for t in found], "next_cursor": cursor}, out)
        return EXIT_OK
    rows = [
        [
            t.id,
            t.customer_id,
            t.status.value,
            " → ".join(t.channels),
            fmt_time(t.last_activity),
            str(t.message_count),
            str(t.controller) if t.controller else "-",
        ]
        for t in found
    ]
    if not rows:
        out.write("no threads match\n")
    else:
        headers = ["THREAD", "CUSTOMER", "STATUS", "CHANNELS", "LAST ACTIVITY", "MSGS"]
        print_table([*headers, "CONTROLLER"], rows, out)
    if cursor is not None:
        out.write(f"more: --cursor {cursor}\n")
    return EXIT_OK


def add_threads(sub: Any) -> None:
    threads = command(
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
    threads.add_argument("--limit", type=positive, default=50, help="at most (%(default)s)")
    threads.add_argument("--cursor", help="the cursor a previous page printed")
    threads.add_argument("--all", action="store_true", help="follow every page")
    store_options(
        threads,
        tenant=True,
        json_output='{"threads": [{"id", "customer_id", "status", "channels", '
        '"last_channel", "topic", "created_at", "last_activity", "message_count", '
        '"controller", "snoozed_until"}], "next_cursor"}',
    )
    threads.set_defaults(func=run_threads)
