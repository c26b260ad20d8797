"""Positions are in commit order under concurrent writers: a reader that has seen
position p never later sees a new event at a position <= p (PostgreSQL, SQLite)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from convthread.ports import Append, Batch, Store
from convthread.stores import SQLiteStore
from tests.conftest import POSTGRES_URL, require_postgres

WRITERS, COMMITS = 4, 40


def _race(store: Store, snapshot: Callable[[], set[int]]) -> list[str]:
    """WRITERS threads commit COMMITS batches each to a stream of their own while a reader
    takes snapshots of every position; the violations it saw."""
    done = threading.Event()
    errors: list[str] = []

    def write(n: int) -> None:
        for i in range(COMMITS):
            store.commit(Batch(appends=(Append(f"w{n}", i, (b"e",)),)))

    def read() -> None:
        try:
            watch()
        except Exception as exc:  # the test must fail, not lose the reader
            errors.append(f"reader failed: {exc!r}")

    def watch() -> None:
        seen: set[int] = set()
        while True:
            last = done.is_set()
            now = snapshot()
            fresh = now - seen
            if seen and fresh and min(fresh) <= max(seen):
                errors.append(f"{sorted(fresh)} appeared after {max(seen)} was seen")
            seen |= now
            if last:
                return

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    positions = [r.position for n in range(WRITERS) for r in store.read(f"w{n}")]
    assert len(set(positions)) == WRITERS * COMMITS
    return errors


def test_postgres_positions_are_in_commit_order() -> None:
    require_postgres()
    import os
    import random

    import psycopg

    from convthread.stores.postgres import PostgresStore

    schema = f"pos_{os.getpid()}_{random.randrange(10**6)}"
    store = PostgresStore(POSTGRES_URL, schema=schema, max_size=WRITERS + 1)
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:

            def snapshot() -> set[int]:
                rows = conn.execute(f'SELECT position FROM "{schema}".events').fetchall()
                return {int(r[0]) for r in rows}

            assert _race(store, snapshot) == []
    finally:
        store.drop_schema()
        store.close()


def test_sqlite_positions_are_in_commit_order(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    with SQLiteStore(path) as store:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        def snapshot() -> set[int]:
            return {int(r[0]) for r in conn.execute("SELECT position FROM events")}

        try:
            assert _race(store, snapshot) == []
        finally:
            conn.close()


def test_a_failed_commit_leaves_later_positions_increasing(tmp_path: Path) -> None:
    from convthread.errors import ConflictError

    with SQLiteStore(tmp_path / "f.db") as store:
        store.commit(Batch(appends=(Append("s", 0, (b"a",)),)))
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("t", 0, (b"x", b"x")), Append("s", 0, (b"b",)))))
        store.commit(Batch(appends=(Append("t", 0, (b"y",)),)))
        assert store.read("s")[0].position < store.read("t")[0].position
