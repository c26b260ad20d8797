"""``convthread import PATH``: history imported with its own times. The readers are
imported when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from convthread.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    CliError,
    ProgressBar,
    check_tenant,
    command,
    isatty,
    positive,
    print_json,
    store_options,
    store_url,
)
from convthread.service import (
    Conversations,
    ImportSummary,
    history_order,
)
from convthread.stores import open_store

if TYPE_CHECKING:
    from convthread.importing import HistoryInput


def _history_source(args: argparse.Namespace) -> Iterable[HistoryInput]:
    from convthread.importing import read_email_folder, read_jsonl, read_twitter_csv

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


def run_import(args: argparse.Namespace, out: TextIO) -> int:
    check_tenant(args)
    url = store_url(args)
    items = history_order(_history_source(args))
    bar = ProgressBar(sys.stderr, len(items)) if isatty(sys.stderr) else None
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
        print_json(summary, out)
    else:
        out.write(f"Imported history from {args.path} into {url}\n")
        _print_summary(summary, out)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def add_import(sub: Any) -> None:
    imp = command(
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
        "--chunk-size", type=positive, default=200, help="messages per transaction (%(default)s)"
    )
    imp.add_argument("--pattern", default="*.eml", help="files of a folder (%(default)s)")
    store_options(
        imp,
        tenant=True,
        json_output="the ImportSummary (read, imported, skipped, failed, ignored, "
        "new_threads, ignored_kinds, failures)",
    )
    imp.set_defaults(func=run_import)
