"""The change feed across processes, on SQLite and PostgreSQL: a follower sees every
change of four concurrent writer processes exactly once, in position order; a consumer
killed between its effect and its acknowledgement resumes without losing a change."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import convthread as ct
from convthread.stores import open_store
from tests._feed_workers import NS

ROOT = Path(__file__).resolve().parent.parent
WRITERS, MESSAGES = 4, 25


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests._feed_workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], code: int = 0) -> None:
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err


def every_position(convs: ct.Conversations) -> list[int]:
    out: list[int] = []
    while page := convs.changes(after=out[-1] if out else 0, limit=1000):
        out.extend(c.position for c in page)
    return out


def test_a_follower_sees_every_change_of_four_writer_processes_once(store_url: str) -> None:
    convs = ct.Conversations(open_store(store_url))
    seen: list[int] = []
    feed = convs.follow(poll=0.2)
    follower = threading.Thread(target=lambda: seen.extend(c.position for c in feed))
    follower.start()
    try:
        writers = [worker("write", store_url, f"w{n}", str(MESSAGES)) for n in range(WRITERS)]
        for proc in writers:
            finish(proc)
        last = convs.last_position()
        deadline = threading.Event()
        while not seen or seen[-1] < last:
            assert not deadline.wait(0.02) and follower.is_alive()
    finally:
        feed.close()
        follower.join(timeout=10)
    assert not follower.is_alive()
    full = every_position(convs)
    assert len(full) >= WRITERS * MESSAGES  # a message is several events
    assert seen == full  # each once, in position order, none skipped
    convs.close()


def test_a_consumer_killed_between_effect_and_ack_loses_nothing(
    store_url: str, tmp_path: Path
) -> None:
    finish(worker("write", store_url, "a", "12"))
    log = tmp_path / "effects.log"
    finish(worker("consume", store_url, "mailer", str(log), "5"), code=3)
    finish(worker("consume", store_url, "mailer", str(log), "7"), code=3)
    finish(worker("consume", store_url, "mailer", str(log), "0"))
    with ct.Conversations(open_store(store_url)) as convs:
        full = every_position(convs)
        effects = [int(line) for line in log.read_text().split()]
        assert sorted(set(effects)) == full  # nothing lost
        # Acknowledging every change: only the one being handled when a process died
        # came again (once per crash).
        assert len(effects) - len(full) == 2
        (mailer,) = convs.consumers()
        assert (mailer.name, mailer.position, mailer.lag) == ("mailer", full[-1], 0)


def test_a_tracked_consumer_killed_after_its_commit_applies_each_change_once(
    store_url: str,
) -> None:
    finish(worker("write", store_url, "b", "10"))
    finish(worker("track", store_url, "tally", "4"), code=3)
    finish(worker("track", store_url, "tally", "9"), code=3)
    finish(worker("track", store_url, "tally", "0"))
    with ct.Conversations(open_store(store_url)) as convs:
        full = every_position(convs)
        count = convs.store.get(NS, "count")
        assert count is not None and int(count.value) == len(full)
        assert convs.consumer_position("tally") == full[-1]
