"""The downstream example (examples/downstream) runs green, and its deliberately broken
handler is caught with a small, shrunk journey."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "downstream"


def run_example(tmp_path: Path, handler: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["DOWNSTREAM_HANDLER"] = handler
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path / "hypothesis")  # no replay, no litter
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        # a fixed seed: the size of the shrunk journey is asserted, so make it reproducible
        [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider",
         "--hypothesis-seed=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_the_downstream_example_passes(tmp_path: Path) -> None:
    proc = run_example(tmp_path, "handler")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b4 passed\b", proc.stdout), proc.stdout


@pytest.mark.slow
def test_a_broken_handler_is_caught_with_a_small_journey(tmp_path: Path) -> None:
    proc = run_example(tmp_path, "broken_handler")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "test_every_message_is_routed_once_and_a_thread_stays_in_its_queue FAILED" in out or (
        "FAILED" in out and "test_every_message_is_routed_once" in out
    ), out
    found = re.search(r"journey=Journey\((\d+) steps?: (.*)\)", out)
    assert found, f"no falsifying journey in the output:\n{out}"
    assert int(found.group(1)) == 2, found.group(0)  # a message and its redelivery
    assert "redelivery of #" in found.group(2), found.group(0)
