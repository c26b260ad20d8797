"""``convthread schema snapshot|events``: the JSON Schema (2020-12) of snapshots or events."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from convthread.cli._common import (
    EXIT_OK,
    command,
    store_options,
)


def run_schema(args: argparse.Namespace, out: TextIO) -> int:
    from convthread.codec import event_schema
    from convthread.domain.snapshot import snapshot_schema

    schema = snapshot_schema() if args.which == "snapshot" else event_schema()
    out.write(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return EXIT_OK


def add_schema(sub: Any) -> None:
    schema = command(
        sub,
        "schema",
        help="print the JSON Schema (2020-12) of snapshots or events",
        example="convthread schema snapshot > snapshot.schema.json",
    )
    schema.add_argument("which", choices=["snapshot", "events"])
    store_options(schema, store=False, json_output="the schema (always JSON)")
    schema.set_defaults(func=run_schema)
