"""The command line and the examples, run as a user would run them."""

from __future__ import annotations

import io
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import convthread as ct
from convthread.cli import main
from convthread.stores import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> str:
    out = io.StringIO()
    assert main(list(args), out=out) == 0
    return out.getvalue()


def test_demo_plays_one_journey_across_channels_into_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    text = run_cli("demo", "--db", str(db))
    assert "channels: twitter → whatsapp → email → voice" in text
    # every customer message shows both decisions with their reason
    assert text.count("who:    [") == 5
    assert text.count("thread: [") == 5
    assert "[explicit_reference]" in text and "[recency]" in text
    assert "every delivery was recognised as a duplicate" in text
    # it really is in the SQLite file, one thread with all four channels
    with ct.Conversations(SQLiteStore(db)) as convs:
        states = convs.customer_threads(convs.find_customer(ct.phone("+447911123456")) or "")
        assert len(states) == 1
        assert states[0].channels == ("twitter", "whatsapp", "email", "voice")
        assert len(convs.events(states[0].id)) == 9


def test_demo_is_idempotent_when_the_file_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run_cli("demo", "--db", str(db))
    run_cli("demo", "--db", str(db), "--keep")
    with ct.Conversations(SQLiteStore(db)) as convs:
        assert len(convs.events("th_0001")) == 9


def test_show_prints_a_thread_and_a_customer(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run_cli("demo", "--db", str(db))
    thread = run_cli("show", "thread", "th_0001", "--store", f"sqlite:///{db}")
    assert "Thread th_0001" in thread and "voice" in thread
    customer = run_cli("show", "customer", "cu_0001", "--store", str(db))
    assert "phone:+447911123456 (asserted)" in customer
    as_json = run_cli("show", "thread", "th_0001", "--store", str(db), "--json")
    assert '"type":"message_received"' in as_json


def test_show_unknown_thread_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "empty.db"
    assert main(["show", "thread", "th_nope", "--store", str(db)]) == 2
    assert "no thread 'th_nope'" in capsys.readouterr().err


def test_store_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "env.db"
    run_cli("demo", "--db", str(db))
    monkeypatch.setenv("CONVTHREAD_STORE", f"sqlite:///{db}")
    assert "Thread th_0001" in run_cli("show", "thread", "th_0001")


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "convthread", "demo", "--db", str(tmp_path / "m.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "twitter → whatsapp → email → voice" in proc.stdout


def test_quickstart_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))
    thread_id = module["main"](tmp_path / "q.db")
    out = capsys.readouterr().out
    assert f"email -> {thread_id}" in out and "within the 24h00m window" in out
