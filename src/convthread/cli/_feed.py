"""``convthread feed`` and ``convthread consumers``: the change feed and its named
consumers.

``feed`` prints the changes after a position, one line each (position, time, kind,
thread, customer), or one JSON object per line with ``--json`` (JSON Lines: the whole
:class:`~convthread.domain.feed.Change`, event included), so ``feed`` and ``feed
--follow`` print the same thing. ``--follow`` then waits for new changes until stopped:
Ctrl-C ends it with status 130, as any interrupted command; SIGTERM (how a service
manager stops a process) with 0. Either way the follower stops its wait, acknowledges
what it printed (with ``--consumer``) and releases its connection first. ``consumers``
prints each named consumer's position, lag and last acknowledgement.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from convthread.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    command,
    open_for_reading,
    positive,
    print_json,
    print_table,
    store_options,
)
from convthread.domain.feed import Change
from convthread.service import Conversations

#: Changes read per call while printing a page without ``--follow``.
_PAGE = 1000


def _line(change: Change) -> str:
    return (
        f"{change.position:>10}  {change.at.isoformat(timespec='seconds')}  "
        f"{change.kind:<24} {change.thread_id or '-':<28} {change.customer_id or '-'}"
    )


def _print_change(change: Change, as_json: bool, out: TextIO) -> None:
    if as_json:
        print_json(change, out)
    else:
        out.write(_line(change) + "\n")
    out.flush()


def run_feed(args: argparse.Namespace, out: TextIO) -> int:
    with open_for_reading(args) as convs:
        if args.follow:
            return _follow(convs, args, out)
        after = args.after
        if after is None:
            after = convs.consumer_position(args.consumer) if args.consumer else 0
        printed = 0
        while printed < args.limit:
            page = convs.changes(after=after, limit=min(args.limit - printed, _PAGE))
            for change in page:
                _print_change(change, args.json, out)
            if not page:
                break
            printed += len(page)
            after = page[-1].position
            if args.consumer:
                convs.ack(args.consumer, after)
    return EXIT_OK


def _follow(convs: Conversations, args: argparse.Namespace, out: TextIO) -> int:
    feed = convs.follow(after=args.after, consumer=args.consumer, ack_every=1)
    last: int | None = None
    with _StopOnSignals(feed.close) as stop:
        try:
            for change in feed:
                _print_change(change, args.json, out)
                last = change.position
        finally:
            feed.close()
    if stop.signal != signal.SIGINT:
        return EXIT_OK
    if args.consumer:
        where = f"consumer {args.consumer!r} is at position "
        where += f"{convs.consumer_position(args.consumer)}"
    elif last is not None:
        where = f"the last change printed is at position {last} (--after {last} resumes)"
    else:
        where = "no change printed"
    sys.stderr.write(f"convthread: interrupted; {where}\n")
    return EXIT_INTERRUPTED


class _StopOnSignals:
    """SIGINT and SIGTERM call ``stop`` (in the main thread only, where signals are
    delivered), so the follower ends its wait, acknowledges what was printed and
    releases its connection; :attr:`signal` records which one came."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._old: dict[int, Any] = {}
        self.signal: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self._stop()

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def add_feed(sub: Any) -> None:
    feed = command(
        sub,
        "feed",
        help="print the change feed (what happened, in commit order); --follow waits for more",
        description="Print the changes after a position, in commit order, one line each "
        "(position, time, kind, thread, customer). With --consumer, start after that "
        "consumer's checkpoint and acknowledge what is printed. With --follow, keep "
        "printing new changes until stopped: Ctrl-C exits 130, SIGTERM 0, after "
        "acknowledging what was printed.",
        example="convthread feed --store support.db --consumer crm-sync --follow --json",
    )
    feed.add_argument(
        "--after", type=_position, metavar="N", help="start after this position (default 0)"
    )
    feed.add_argument(
        "--limit",
        type=positive,
        default=1000,
        metavar="N",
        help="changes to print without --follow (%(default)s)",
    )
    feed.add_argument("--follow", action="store_true", help="then wait for new changes")
    feed.add_argument("--consumer", metavar="NAME", help="a named consumer: resume and acknowledge")
    store_options(
        feed,
        tenant=True,
        json_output="one JSON object per line (JSON Lines), each a change: "
        '{"position", "tenant", "kind", "thread_id", "customer_id", "stream", "seq", '
        '"at", "event"}',
    )
    feed.set_defaults(func=run_feed)


def run_consumers(args: argparse.Namespace, out: TextIO) -> int:
    with open_for_reading(args) as convs:
        found = convs.consumers()
        last = convs.last_position()
    if args.json:
        print_json({"consumers": found, "last_position": last}, out)
        return EXIT_OK
    if not found:
        out.write("no consumers\n")
        return EXIT_OK
    rows = [
        [
            c.name,
            str(c.position),
            str(c.lag),
            c.updated_at.isoformat(timespec="seconds") if c.updated_at else "-",
        ]
        for c in found
    ]
    print_table(["CONSUMER", "POSITION", "LAG", "UPDATED"], rows, out)
    return EXIT_OK


def add_consumers(sub: Any) -> None:
    consumers = command(
        sub,
        "consumers",
        help="list the feed's named consumers: position, lag, last acknowledgement",
        description="List the feed's named consumers, by name: the last position each "
        "acknowledged, its lag (positions behind the feed's last) and when it last moved.",
        example="convthread consumers --store support.db --json",
    )
    store_options(
        consumers,
        tenant=True,
        json_output='{"consumers": [{"name", "tenant", "position", "lag", "updated_at"}], '
        '"last_position"}',
    )
    consumers.set_defaults(func=run_consumers)


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (0 or more)")
    return value
