"""``convthread feed`` and ``convthread consumers``."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import convthread as ct
from convthread.cli import main
from convthread.stores import SQLiteStore
from tests._feed_workers import message
from tests._workers import T0

ROOT = Path(__file__).resolve().parent.parent


def store_with_messages(path: Path, count: int = 3) -> int:
    with ct.Conversations(SQLiteStore(path), clock=ct.ManualClock(T0)) as convs:
        for i in range(count):
            convs.ingest(message("cli", i))
        return convs.last_position()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out=out)
    return status, out.getvalue()


def test_feed_prints_changes_and_json_lines(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    last = store_with_messages(db)
    status, text = run("feed", "--store", str(db))
    assert status == 0
    lines = text.splitlines()
    assert len(lines) == last and "customer.created" in lines[0]
    status, text = run("feed", "--store", str(db), "--after", "2", "--json")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["position"] for r in records] == list(range(3, last + 1))
    assert {"kind", "thread_id", "customer_id", "event", "at"} <= records[0].keys()


def test_a_consumer_resumes_and_consumers_lists_its_lag(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    last = store_with_messages(db)
    run("feed", "--store", str(db), "--consumer", "crm", "--limit", "2")
    status, text = run("feed", "--store", str(db), "--consumer", "crm", "--json")
    assert next(json.loads(line)["position"] for line in text.splitlines()) == 3
    run("feed", "--store", str(db), "--consumer", "bi", "--limit", "1")
    status, text = run("consumers", "--store", str(db))
    assert status == 0
    rows = [line.split() for line in text.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["bi", "1", str(last - 1)], ["crm", str(last), "0"]]
    assert rows[0] and text.splitlines()[0].split() == ["CONSUMER", "POSITION", "LAG", "UPDATED"]
    status, text = run("consumers", "--store", str(db), "--json")
    doc = json.loads(text)
    assert set(doc) == {"consumers", "last_position"} and doc["last_position"] == last
    assert [c["name"] for c in doc["consumers"]] == ["bi", "crm"]
    assert set(doc["consumers"][0]) == {"name", "tenant", "position", "lag", "updated_at"}


def test_no_consumers_and_an_empty_feed(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    assert run("consumers", "--store", str(db)) == (0, "no consumers\n")
    assert run("feed", "--store", str(db)) == (0, "")


def test_feed_pages_past_one_read_and_stops_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convthread.cli import _feed

    db = tmp_path / "s.db"
    last = store_with_messages(db, 4)
    monkeypatch.setattr(_feed, "_PAGE", 3)
    status, text = run("feed", "--store", str(db), "--json", "--consumer", "etl")
    assert [json.loads(line)["position"] for line in text.splitlines()] == list(range(1, last + 1))
    with ct.Conversations(SQLiteStore(db)) as convs:
        assert convs.consumer_position("etl") == last
    assert status == 0
    status, text = run("feed", "--store", str(db), "--limit", "5")
    assert status == 0 and len(text.splitlines()) == 5


@pytest.mark.parametrize("command", ["feed", "consumers"])
def test_a_missing_file_is_not_found(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(command, "--store", str(tmp_path / "none.db"))[0] == 1
    assert "no SQLite store at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("command", ["feed", "consumers"])
def test_the_store_from_the_environment_and_the_conventions_errors(
    tmp_path: Path,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "s.db"
    store_with_messages(db, 1)
    monkeypatch.setenv("CONVTHREAD_STORE", str(db))
    assert run(command)[0] == 0
    assert run(command, "--tenant", "acme")[0] == 2
    assert "default tenant only" in capsys.readouterr().err
    monkeypatch.delenv("CONVTHREAD_STORE")
    assert run(command)[0] == 2
    assert "pass --store URL or set CONVTHREAD_STORE" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--after", "-1"], ["--after", "x"], ["--limit", "0"]])
def test_bad_positions_and_limits_are_usage_errors(tmp_path: Path, bad: list[str]) -> None:
    db = tmp_path / "s.db"
    store_with_messages(db, 1)
    assert run("feed", "--store", str(db), *bad)[0] == 2


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 0)],
    ids=["ctrl-c-is-130", "sigterm-is-0"],
)
def test_follow_prints_new_changes_and_stops_on_a_signal_after_acknowledging(
    tmp_path: Path, signum: int, status: int
) -> None:
    """Ctrl-C is an interruption (130, as for every command); SIGTERM, how a service
    manager stops a follower, is a requested stop (0). Both acknowledge first."""
    db = tmp_path / "s.db"
    store_with_messages(db, 1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "convthread",
            "feed",
            "--store",
            str(db),
            "--follow",
            "--consumer",
            "tail",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "customer.created" in first
        with ct.Conversations(SQLiteStore(db), clock=ct.ManualClock(T0)) as convs:
            convs.ingest(message("more", 9))
            last = convs.last_position()
        seen = [first]
        while str(last) not in seen[-1].split()[0]:
            seen.append(proc.stdout.readline())
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    if signum == signal.SIGINT:
        assert f"interrupted; consumer 'tail' is at position {last}" in err
    else:
        assert err == ""
    with ct.Conversations(SQLiteStore(db)) as convs:
        for _ in range(50):  # the acknowledgement is written as the follower stops
            if convs.consumer_position("tail") == last:
                break
            time.sleep(0.05)
        assert convs.consumer_position("tail") == last
