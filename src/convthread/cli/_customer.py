"""``convthread customer ID|--identifier KIND:VALUE``: a customer's identifiers, their
trust and evidence, and threads."""

from __future__ import annotations

import argparse
import re
from typing import Any, TextIO

from convthread import codec
from convthread.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    command,
    fmt_time,
    open_for_reading,
    print_json,
    print_table,
    store_options,
)
from convthread.cli._threads import thread_row
from convthread.domain.events import (
    IdentifierLinked,
    IdentifierVerified,
)
from convthread.domain.identifiers import normalize_identifier
from convthread.domain.model import Identifier
from convthread.errors import ConvthreadError
from convthread.service import (
    Conversations,
)

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
        "threads": [thread_row(t) for t in threads],
    }


def run_customer(args: argparse.Namespace, out: TextIO) -> int:
    if (args.id is None) == (args.identifier is None):
        raise CliError(EXIT_USAGE, "name the customer by id or by --identifier, not both")
    with open_for_reading(args) as convs:
        customer_id = args.id
        if args.identifier is not None:
            ident = _identifier(args.identifier)
            customer_id = convs.find_customer(ident)
            if customer_id is None:
                raise CliError(EXIT_NOT_FOUND, f"no customer has the identifier {ident}")
        doc = _customer_document(convs, customer_id)
    if args.json:
        print_json(doc, out)
        return EXIT_OK
    out.write(f"Customer {doc['id']}  (since {fmt_time(doc['created_at'])})\n")
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
        print_table(["IDENTIFIER", "TRUST", "EVIDENCE", "DETAIL"], rows, out)
    else:
        out.write("  no identifiers\n")
    thread_rows = [
        [
            t["id"],
            str(t["status"]),
            " → ".join(t["channels"]),
            fmt_time(t["last_activity"]),
            str(t["message_count"]),
        ]
        for t in doc["threads"]
    ]
    out.write("\n")
    if thread_rows:
        print_table(["THREAD", "STATUS", "CHANNELS", "LAST ACTIVITY", "MSGS"], thread_rows, out)
    else:
        out.write("no threads\n")
    return EXIT_OK


def add_customer(sub: Any) -> None:
    customer = command(
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
    store_options(
        customer,
        tenant=True,
        json_output='{"id", "created_at", "merged_into", "erased", "identifiers": '
        '[{"identifier", "kind", "scope", "value", "trust", "evidence": {"method", '
        '"channel", "by", "at", "detail"}, "history": [{"customer_id", "seq", "type", '
        '"description"}]}], "threads": [as convthread threads --json]}',
    )
    customer.set_defaults(func=run_customer)
