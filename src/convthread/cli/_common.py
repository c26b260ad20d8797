"""The conventions every command follows, as helpers: the exit statuses, :class:`CliError`,
the parser of a command (:func:`command`, :func:`store_options`), opening the store
(:func:`open_for_reading`), printing (:func:`print_json`, :func:`print_table`) and a
progress bar. See :mod:`convthread.cli` for the conventions themselves."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from convthread import codec
from convthread.ports import DEFAULT_TENANT
from convthread.service import Conversations, ImportSummary
from convthread.stores import open_store

#: Exit statuses (see the package docstring, :mod:`convthread.cli`).
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130

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


def command(
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


def store_options(
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


def store_url(args: argparse.Namespace, default: str | None = None) -> str:
    """The store ``--store`` or the environment names (a bare path is a SQLite file)."""
    url: str | None = getattr(args, "store", None) or os.environ.get(STORE_VARIABLE) or default
    if not url:
        raise CliError(EXIT_USAGE, f"no store given: pass --store URL or set {STORE_VARIABLE}")
    if "://" not in url:  # a bare path means a SQLite file
        url = "sqlite:///" + url
    return url


def check_tenant(args: argparse.Namespace) -> str:
    """The store tenant ``--tenant`` names; only the default one exists for the service."""
    name = getattr(args, "tenant", DEFAULT_TENANT_NAME)
    if name not in (DEFAULT_TENANT_NAME, DEFAULT_TENANT):
        raise CliError(
            EXIT_USAGE,
            f"tenant {name!r}: this release's service works in the default tenant only "
            f"(--tenant {DEFAULT_TENANT_NAME})",
        )
    return DEFAULT_TENANT


def missing_sqlite_file(url: str) -> Path | None:
    """The path of the SQLite file ``url`` names when that file does not exist."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "sqlite" and not parts.netloc:
        path = Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))
        if str(path) not in ("", ".") and not path.is_file():
            return path
    return None


def open_existing(url: str) -> Conversations:
    """The service over the store ``url`` names, for a command that only reads. A SQLite
    file that does not exist is refused (opening it would create an empty database)."""
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise CliError(
            EXIT_NOT_FOUND,
            f"no SQLite store at {missing} ({url}): the file does not exist, "
            "and read commands never create one",
        )
    return Conversations(open_store(url))


def open_for_reading(args: argparse.Namespace) -> Conversations:
    """The service for a read command: store and tenant from the shared options."""
    check_tenant(args)
    return open_existing(store_url(args))


def print_json(value: object, out: TextIO) -> None:
    """One JSON document on its own line (msgspec structs, enums and times included)."""
    out.write(codec.to_json(value).decode() + "\n")


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, title: str = ""
) -> None:
    """A table for people: drawn by rich on a terminal when rich is installed, plain
    columns (two spaces apart, no trailing spaces) otherwise."""
    if isatty(out):
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


def isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


class ProgressBar:
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
