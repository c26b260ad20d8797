"""The ``convthread`` command line.

Commands: ``demo``, ``show``, ``threads``, ``customer``, ``schema``, ``import``,
``migrate``, ``completion``, ``feed`` and ``consumers``; ``convthread COMMAND --help``
ends with an example.

Layout: this module has :func:`main`, :func:`build_parser` and :data:`COMMANDS`;
``_common`` the conventions' helpers; one private module per command or small group
(``_demo``, ``_show``, ``_threads``, ``_customer``, ``_schema``, ``_import``,
``_migrate``, ``_completion``, ``_feed`` for ``feed`` and ``consumers``). Modules that
``--help`` does not need (rich, shtab, the channel adapters, the history readers) are
imported by the command that runs, so ``convthread --help`` stays quick.

Conventions (every command follows them; a new command gets them from the helpers in
``_common``):

* **One module per command.** ``run_NAME(args, out) -> int`` does the work and returns
  the exit status; ``add_NAME(sub)`` declares its parser with ``command`` (help,
  description and an example) and ``store_options``. :func:`build_parser` calls every
  function in :data:`COMMANDS`, in order.
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
  ``--json`` prints one JSON document instead, whose shape each command's help states
  (``feed``, which streams, prints one document per line: JSON Lines). Messages about
  failures go to stderr, prefixed ``convthread:``. Long work (``import``, ``migrate``)
  draws a progress bar on stderr when stderr is a terminal.
* **Exit status**: ``EXIT_OK`` 0 done; ``EXIT_NOT_FOUND`` 1 the thread, customer,
  identifier or store file named does not exist; ``EXIT_USAGE`` 2 bad arguments
  (argparse's own errors included); ``EXIT_SOME_FAILED`` 3 an import finished with
  messages it could not record; ``EXIT_FAILED`` 4 the library or the store refused or
  failed (a schema newer than this release, an unreachable database, invalid input);
  ``EXIT_INTERRUPTED`` 130 interrupted (Ctrl-C). ``feed --follow`` ends only when
  stopped: Ctrl-C is 130 like any interruption, SIGTERM (a service manager stopping it)
  is 0; either way what it printed is acknowledged first.
* **Completion**: ``convthread completion bash|zsh`` prints a completion script
  generated from the parsers (with ``shtab``, in the ``cli`` extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from convthread._version import __version__
from convthread.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    STORE_VARIABLE,
    CliError,
)
from convthread.cli._completion import add_completion
from convthread.cli._customer import add_customer
from convthread.cli._demo import add_demo
from convthread.cli._feed import add_consumers, add_feed
from convthread.cli._import import add_import
from convthread.cli._migrate import add_migrate
from convthread.cli._schema import add_schema
from convthread.cli._show import add_show
from convthread.cli._threads import add_threads
from convthread.errors import ConvthreadError, NotFound

__all__ = ["main"]

#: Every command's parser declaration, in the order ``--help`` lists them.
COMMANDS: list[Callable[[Any], None]] = [
    add_demo,
    add_show,
    add_threads,
    add_customer,
    add_schema,
    add_import,
    add_migrate,
    add_completion,
    add_feed,
    add_consumers,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``convthread`` parser, with every command in :data:`COMMANDS`."""
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
