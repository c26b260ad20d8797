"""Every ```python block of docs/*.md runs, in order, in one fresh namespace per file.

A block may define a test function and call it. Blocks run in a temporary working
directory, so files they create do not land in the repository. A file with no python
block is reported as skipped with that reason, never passed over silently.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of each ```python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


DOC_FILES = sorted(DOCS.glob("*.md"))


def test_there_are_docs() -> None:
    assert DOC_FILES, f"no docs/*.md found under {DOCS}"


def test_block_extraction() -> None:
    sample = "text\n```python\nx = 1\n```\n```text\nnot code\n```\n```python\ny = x\n```\n"
    path = Path(__file__).with_name("_docs_sample.md")
    try:
        path.write_text(sample, encoding="utf-8")
        assert python_blocks(path) == [(3, "x = 1\n"), (9, "y = x\n")]
    finally:
        path.unlink()


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_doc_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip(f"docs/{path.name} has no ```python block")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for number, (line, code) in enumerate(blocks, 1):
        where = f"docs/{path.name}, python block {number} (line {line})"
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException as exc:  # reported with the block's location
            if isinstance(exc, (KeyboardInterrupt, pytest.skip.Exception)):
                raise
            pytest.fail(f"{where} failed:\n{traceback.format_exc()}", pytrace=False)


#: Guides whose python blocks must also pass ``mypy --strict``, as one module per guide
#: (the blocks of a guide run in one namespace, so later blocks use earlier names).
TYPE_CHECKED_DOCS = ("concepts.md", "quickstart.md", "stores.md")


@pytest.mark.parametrize("name", TYPE_CHECKED_DOCS)
def test_doc_python_blocks_type_check(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from mypy import api

    path = DOCS / name
    blocks = python_blocks(path)
    assert blocks, f"docs/{name} has no ```python block to type-check"
    module = tmp_path / f"docs_{path.stem}.py"
    # one line per doc line, so mypy's line numbers are the guide's
    lines = [""] * path.read_text(encoding="utf-8").count("\n")
    for line, code in blocks:
        for offset, text in enumerate(code.splitlines()):
            lines[line - 1 + offset] = text
    module.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cache = request.config.cache
    cache_dir = cache.mkdir("mypy-docs") if cache is not None else tmp_path / "mypy-cache"
    out, err, status = api.run(
        ["--strict", "--cache-dir", str(cache_dir), "--no-error-summary", str(module)]
    )
    errors = out.replace(str(module), f"docs/{name}")
    assert status == 0, f"mypy --strict on the python blocks of docs/{name}:\n{errors}{err}"
