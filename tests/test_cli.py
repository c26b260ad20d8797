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
    assert "channels: twitter → twitter.dm → whatsapp → email → voice" in text
    # every customer message shows both decisions with their reason
    assert text.count("who:    [") == 7
    assert text.count("thread: [") == 7
    assert "[explicit_reference] the message replies to 'refund-ac4471@acme.example'" in text
    assert "[recency]" in text
    # the WhatsApp number was linked by the continuation code, with its evidence
    assert "phone:+447911123456 (asserted; token on whatsapp" in text
    assert "agent:lee took control (fencing token 1)" in text
    # the external audience sees no identifier
    external = text.split("external bot vendor", 1)[1]
    for secret in ("dana", "+447911123456", "2244", "example.com"):
        assert secret not in external
    assert "Redelivered all 7 inbound payloads: 7 recognised as duplicates" in text
    # it really is in the SQLite file: one customer, one thread across five channels
    with ct.Conversations(SQLiteStore(db)) as convs:
        states = convs.customer_threads(convs.find_customer(ct.phone("+447911123456")) or "")
        assert len(states) == 1
        assert states[0].channels == ("twitter", "twitter.dm", "whatsapp", "email", "voice")
        assert states[0].controller == ct.Party.parse("agent:lee")
        assert len(convs.events(states[0].id)) == 16


def test_demo_is_deterministic(tmp_path: Path) -> None:
    import re

    def masked(text: str) -> str:  # continuation codes come from `secrets`: they differ
        return re.sub(r"\b[0-9A-Z]{3}-[0-9A-Z]{3}-[0-9A-Z]{3}\b", "XXX-XXX-XXX", text)

    first = run_cli("demo", "--db", str(tmp_path / "a.db"))
    second = run_cli("demo", "--db", str(tmp_path / "a.db"))  # replaces the file
    assert first != second  # a fresh code each run
    assert masked(first) == masked(second)
    with ct.Conversations(SQLiteStore(tmp_path / "a.db")) as convs:
        assert len(convs.events("th_0001")) == 16


def test_show_prints_a_thread_and_a_customer(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    run_cli("demo", "--db", str(db))
    thread = run_cli("show", "thread", "th_0001", "--store", f"sqlite:///{db}")
    assert "Thread th_0001" in thread and "voice" in thread
    customer = run_cli("show", "customer", "cu_0001", "--store", str(db))
    assert "phone:+447911123456 (asserted)" in customer
    as_json = run_cli("show", "thread", "th_0001", "--store", str(db), "--json")
    assert '"type":"message_received"' in as_json


def test_show_unknown_thread_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "empty.db"
    SQLiteStore(db).close()  # an existing store without that thread
    assert main(["show", "thread", "th_nope", "--store", str(db)]) == 1
    assert "no thread 'th_nope'" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["path", "url", "environment"])
@pytest.mark.parametrize("what", ["thread", "customer"])
def test_show_refuses_a_sqlite_file_that_does_not_exist(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    form: str,
    what: str,
) -> None:
    typo = tmp_path / "typo.db"
    store = {"path": [str(typo)], "url": [f"sqlite:///{typo}"], "environment": []}[form]
    if form == "environment":
        monkeypatch.setenv("CONVTHREAD_STORE", str(typo))
    out = io.StringIO()
    assert main(["show", what, "x_1", *(["--store", *store] if store else [])], out=out) == 1
    err = capsys.readouterr().err
    assert f"no SQLite store at {typo}" in err and "does not exist" in err
    assert out.getvalue() == ""
    assert list(tmp_path.iterdir()) == []  # nothing created: no file, no -wal, no -shm


def test_writing_commands_still_create_their_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "new" / "fresh.db"
    db.parent.mkdir()
    run_cli("demo", "--store", f"sqlite:///{db}")
    assert db.is_file()
    assert "Thread th_0001" in run_cli("show", "thread", "th_0001", "--store", str(db))


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
    assert "twitter → twitter.dm → whatsapp → email → voice" in proc.stdout


def test_quickstart_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))
    thread_id = module["main"](tmp_path / "q.db")
    out = capsys.readouterr().out
    assert f"email -> {thread_id}" in out and "within the 24h00m window" in out


@pytest.mark.parametrize("which", ["snapshot", "events"])
def test_schema_command_prints_json_schema(which: str) -> None:
    import json

    schema = json.loads(run_cli("schema", which))
    assert schema.get("$defs")
    assert "$ref" in schema or "anyOf" in schema or "type" in schema
