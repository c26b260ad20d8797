"""Generate docs/api.md, the API reference, from the public modules' docstrings.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date

The reference lists, for every public module, each name in its ``__all__`` with its
signature (for classes: the constructor and public methods) and the first paragraph of
its docstring. tests/test_api_docs.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path

import msgspec

MODULES = [
    ("convthread", "The top-level package: the service, the vocabulary, the policies."),
    ("convthread.errors", "The one error hierarchy."),
    ("convthread.ports", "The store protocol (sync and async), clock and id source."),
    ("convthread.stores", "Stores and opening one by URL."),
    ("convthread.codec", "MessagePack for storage, JSON for export, JSON Schema."),
    ("convthread.importing", "Reading history files for import_history."),
    ("convthread.channels", "Channel adapters."),
    ("convthread.testing", "Strategies, conformance kits and the pytest plugin."),
    ("convthread.domain.segments", "Exact SMS segment counting."),
    ("convthread.domain.updates", "Channel results besides inbound messages."),
]

OUT = Path(__file__).with_name("api.md")


def _first_paragraph(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    para = doc.split("\n\n", 1)[0].strip()
    return " ".join(para.split())


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    # object reprs in defaults carry memory addresses, and set reprs follow hash order:
    # keep the output reproducible
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    return re.sub(r"(frozenset\(|set\()?\{([^{}]*)\}", _sorted_set, text)


def _sorted_set(match: re.Match[str]) -> str:
    prefix, body = match.group(1) or "", match.group(2)
    if not prefix and ":" in body:  # a dict literal: insertion order is stable
        return match.group(0)
    items = sorted(item.strip() for item in body.split(",") if item.strip())
    return prefix + "{" + ", ".join(items) + "}"


def _describe(name: str, obj: object) -> list[str]:
    lines: list[str] = []
    if inspect.isclass(obj):
        kind = "enum" if issubclass(obj, enum.Enum) else "class"
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
            fields = ", ".join(obj.__struct_fields__)
            lines.append(f"### `{name}` (struct)\n")
            lines.append(f"Fields: `{fields}`\n" if fields else "")
        elif kind == "enum":
            members = ", ".join(f"`{m.value}`" for m in obj)  # type: ignore[var-annotated]
            lines.append(f"### `{name}` (enum)\n")
            lines.append(f"Values: {members}\n")
        else:
            lines.append(f"### `{name}{_signature(obj)}`\n")
        summary = _first_paragraph(obj)
        if summary:
            lines.append(summary + "\n")
        methods = [
            (m, f)
            for m, f in inspect.getmembers(obj)
            if not m.startswith("_")
            and (inspect.isfunction(f) or inspect.ismethod(f))
            and m in vars(obj)
        ]
        for mname, fn in methods:
            doc = _first_paragraph(fn)
            lines.append(f"- `{mname}{_signature(fn)}`" + (f": {doc}" if doc else ""))
        if methods:
            lines.append("")
    elif callable(obj):
        lines.append(f"### `{name}{_signature(obj)}`\n")
        summary = _first_paragraph(obj)
        if summary:
            lines.append(summary + "\n")
    else:
        lines.append(f"### `{name}`\n")
        lines.append(f"Value: `{obj!r}`\n" if isinstance(obj, int | str) else "")
    return [line for line in lines if line is not None]


def render() -> str:
    parts = [
        "# API reference\n",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "Everything here is public and follows semantic versioning; anything else",
        "(modules and names starting with `_`) is private.\n",
    ]
    for module_name, blurb in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # pragma: no cover - a missing optional module
            parts.append(f"## `{module_name}`\n\n(not importable here: {exc})\n")
            continue
        parts.append(f"## `{module_name}`\n")
        parts.append(blurb + "\n")
        for name in sorted(getattr(module, "__all__", [])):
            if name.startswith("__"):
                continue
            parts.extend(_describe(name, getattr(module, name)))
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
