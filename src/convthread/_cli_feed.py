"""The change feed's commands of the ``convthread`` command line, self-contained:
``convthread feed [--after N] [--limit N] [--follow] [--consumer NAME] [--json]`` and
``convthread consumers [--json]``. :func:`add_commands` adds them to the parser.

``feed`` prints the changes after position N (default 0), one line each (position,
time, kind, thread, customer), or one JSON object per line with ``--json`` (JSON
Lines: the whole :class:`~convthread.domain.feed.Change`, event included). With
``--follow`` it then waits for new changes until interrupted (Ctrl-C ends it with
status 0); with ``--consumer`` it starts after that consumer's checkpoint and
acknowledges what it printed. ``consumers`` prints each named consumer's position, lag
(positions behind the feed's last) and last acknowledgement.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from convthread import codec
from convthread.domain.feed import Change
from convthread.service import Conversations
from convthread.stores import open_store

__all__ = ["add_commands"]

#: Exit status when the store to read does not exist.
EXIT_NO_STORE = 2


def _open(args: argparse.Namespace) -> Conversations | None:
    url: str | None = args.store or os.environ.get("CONVTHREAD_STORE")
    if url is None:
        raise SystemExit("no store given: pass --store URL or set CONVTHREAD_STORE")
    if "://" not in url:  # a bare path means a SQLite file
        url = "sqlite:///" + url
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite" and not parts.netloc:
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if path not in ("", ".") and not os.path.isfile(path):
            sys.stderr.write(
                f"convthread: no SQLite store at {path} ({url}): the file does not exist, "
                "and read commands never create one\n"
            )
            return None
    return Conversations(open_store(url))


def _line(change: Change) -> str:
    return (
        f"{change.position:>10}  {change.at.isoformat(timespec='seconds')}  "
        f"{change.kind:<24} {change.thread_id or '-':<28} {change.customer_id or '-'}"
    )


def _print(change: Change, as_json: bool, out: TextIO) -> None:
    out.write((codec.to_json(change).decode() if as_json else _line(change)) + "\n")
    out.flush()


def _cmd_feed(args: argparse.Namespace, out: TextIO) -> int:
    convs = _open(args)
    if convs is None:
        return EXIT_NO_STORE
    with convs:
        if not args.follow:
            after = args.after
            if after is None:
                after = convs.consumer_position(args.consumer) if args.consumer else 0
            page = convs.changes(after=after, limit=args.limit)
            for change in page:
                _print(change, args.json, out)
            if args.consumer and page:
                convs.ack(args.consumer, page[-1].position)
            return 0
        feed = convs.follow(after=args.after, consumer=args.consumer, ack_every=1)
        with _closing_on_signals(feed.close):
            try:
                for change in feed:
                    _print(change, args.json, out)
            finally:
                feed.close()
    return 0


class _closing_on_signals:
    """SIGINT and SIGTERM close the follower (the main thread only), so it ends its
    wait, acknowledges what was printed and releases its connection."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._old: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, lambda _s, _f: self._close())

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _cmd_consumers(args: argparse.Namespace, out: TextIO) -> int:
    convs = _open(args)
    if convs is None:
        return EXIT_NO_STORE
    with convs:
        found = convs.consumers()
        if args.json:
            out.write(codec.to_json(found).decode() + "\n")
            return 0
        if not found:
            out.write("no consumers\n")
            return 0
        width = max(len("consumer"), *(len(c.name) for c in found))
        out.write(f"{'consumer':<{width}}  {'position':>10}  {'lag':>10}  updated\n")
        for c in found:
            when = c.updated_at.isoformat(timespec="seconds") if c.updated_at else "-"
            out.write(f"{c.name:<{width}}  {c.position:>10}  {c.lag:>10}  {when}\n")
    return 0


def _position(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a position is 0 or more")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``feed`` and ``consumers`` to the ``convthread`` parser's subcommands."""
    feed = sub.add_parser(
        "feed",
        help="print the change feed (what happened, in commit order); --follow waits for more",
        description="Print the changes after a position, in commit order. With --follow, "
        "keep printing new changes until interrupted. With --consumer, start after that "
        "consumer's checkpoint and acknowledge what is printed.",
    )
    feed.add_argument("--store", help="store URL or SQLite path (or CONVTHREAD_STORE)")
    feed.add_argument("--after", type=_position, help="start after this position (default 0)")
    feed.add_argument(
        "--limit", type=int, default=1000, help="changes to print without --follow (%(default)s)"
    )
    feed.add_argument("--follow", action="store_true", help="wait for new changes")
    feed.add_argument("--consumer", help="a named consumer: resume and acknowledge")
    feed.add_argument("--json", action="store_true", help="one JSON object per change")
    feed.set_defaults(func=_cmd_feed)

    consumers = sub.add_parser(
        "consumers", help="list the feed's named consumers: position, lag, last acknowledgement"
    )
    consumers.add_argument("--store", help="store URL or SQLite path (or CONVTHREAD_STORE)")
    consumers.add_argument("--json", action="store_true", help="print JSON")
    consumers.set_defaults(func=_cmd_consumers)
