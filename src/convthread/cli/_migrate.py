"""``convthread migrate [URL]``: a database upgraded to this release's schema version."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from convthread import codec
from convthread.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    STORE_VARIABLE,
    CliError,
    ProgressBar,
    command,
    isatty,
    missing_sqlite_file,
    print_json,
    store_options,
    store_url,
)
from convthread.stores import SchemaStatus, schema_status
from convthread.stores import migrate as migrate_store


def _print_status(status: SchemaStatus, out: TextIO) -> None:
    out.write(
        f"{status.store}: schema version {status.current}, this convthread writes {status.target}\n"
    )
    for step in status.pending:
        out.write(f"  step {step.version} ({step.kind}): {step.description}\n")


def run_migrate(args: argparse.Namespace, out: TextIO) -> int:
    url = store_url(args) if args.url is None else store_url(argparse.Namespace(store=args.url))
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise CliError(EXIT_NOT_FOUND, f"no SQLite store at {missing}: the file does not exist")
    # Read the status first, without changing anything: nothing runs before it is shown.
    status = schema_status(url)
    if not args.json:
        _print_status(status, out)
        out.flush()
    if args.dry_run or status.up_to_date:
        if args.json:
            print_json(_migrate_summary(status, ran=False), out)
        elif status.up_to_date:
            out.write("  nothing to do\n")
        else:
            out.write(f"  dry run: {len(status.pending)} step(s) would run\n")
        return EXIT_OK
    bars: dict[int, ProgressBar] = {}
    tty = isatty(sys.stderr)

    def progress(version: int, done: int, total: int) -> None:
        if not tty or total <= 0:
            return
        bar = bars.get(version)
        if bar is None:
            for other in bars.values():
                other.end()
            bar = bars[version] = ProgressBar(sys.stderr, total, label=f"step {version}")
        bar.total = max(total, 1)
        bar.draw(done, "rows" if done or total > 1 else "")

    try:
        migrate_store(url, progress=progress)
    finally:
        for bar in bars.values():
            bar.end()
    if args.json:
        print_json(_migrate_summary(status, ran=True), out)
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


def add_migrate(sub: Any) -> None:
    mig = command(
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
    store_options(
        mig,
        json_output='{"store", "from_version", "to_version", "target_version", "steps", '
        '"applied", "dry_run"}',
    )
    mig.set_defaults(func=run_migrate)
