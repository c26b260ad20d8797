"""``convthread feed`` and ``convthread consumers``."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    status, text = run("consumers", "--store", str(db), "--json")
    assert [c["name"] for c in json.loads(text)] == ["bi", "crm"]


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    for command in ("feed", "consumers"):
        assert run(command, "--store", str(tmp_path / "none.db"))[0] == 2
    assert not (tmp_path / "none.db").exists()


def test_follow_prints_new_changes_and_ends_on_sigint(tmp_path: Path) -> None:
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
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    with ct.Conversations(SQLiteStore(db)) as convs:
        for _ in range(50):  # the acknowledgement is written as the follower stops
            if convs.consumer_position("tail") == last:
                break
            time.sleep(0.05)
        assert convs.consumer_position("tail") == last
