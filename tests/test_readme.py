"""The README's two commands are the ones that work, and CI runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_shows_exactly_two_commands() -> None:
    blocks = sh_blocks()
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks)
    assert blocks[0].endswith("convthread demo")
    assert "pytest" in blocks[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = sh_blocks()[1]
    assert test_command in ci.splitlines()


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: object) -> None:
    import os

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has a quick start"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the quick start writes support.db
    try:
        namespace: dict[str, object] = {"__name__": "readme"}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "support.db").exists()
