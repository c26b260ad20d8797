"""SQLite across processes: dedup survives restarts; concurrent writers lose nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import convthread as ct
from convthread.stores import SQLiteStore
from tests._workers import T0, fixed_message

ROOT = Path(__file__).resolve().parent.parent


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests._workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.split()


def test_redelivery_in_a_new_process_is_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ct.Conversations(SQLiteStore(db), clock=ct.ManualClock(T0)) as convs:
        first = convs.ingest(fixed_message())
        assert convs.ingest(fixed_message()).duplicate
    out = finish(worker("redeliver", str(db)))
    assert out == [first.thread_id, str(first.seq), "True"]
    with ct.Conversations(SQLiteStore(db)) as convs:
        events = convs.events(first.thread_id)
        received = [e for e in events if isinstance(e.event, ct.MessageReceived)]
        assert len(received) == 1


def test_two_processes_and_two_threads_writing_one_thread(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ct.Conversations(SQLiteStore(db), clock=ct.ManualClock(T0)) as convs:
        thread_id = convs.ingest(fixed_message()).thread_id
    procs = [
        worker("send", str(db), thread_id, "30", "alice"),
        worker("send", str(db), thread_id, "30", "bob"),
        worker("ingest", str(db), "p3", "30"),
    ]
    # and two threads of this process at the same time
    from concurrent.futures import ThreadPoolExecutor

    with ct.Conversations(SQLiteStore(db), clock=ct.ManualClock(T0), max_retries=200) as convs:
        with ThreadPoolExecutor(2) as pool:
            local = list(
                pool.map(
                    lambda i: convs.send(thread_id, f"local {i}", sender="agent:carol").seq,
                    range(30),
                )
            )
        seqs = [int(s) for p in procs for s in finish(p)] + local
        assert len(seqs) == 120
        assert len(set(seqs)) == 120  # no two writes got the same sequence number
        events = convs.events(thread_id)
        assert [e.seq for e in events] == list(range(1, 123))  # gap-free, nothing lost
        texts = [
            e.event.content.text
            for e in events
            if isinstance(e.event, ct.MessageSent | ct.MessageReceived)
        ]
        for tag in ("alice", "bob", "local", "p3"):
            assert sum(t.startswith(tag + " ") for t in texts) == 30
