"""docs/api.md is generated from the docstrings and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_api_reference_lists_the_public_names() -> None:
    import convthread

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in convthread.__all__:
        if name.startswith("__"):
            continue
        assert f"`{name}" in text, f"{name} is missing from docs/api.md"
