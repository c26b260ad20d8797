"""A database written by release 0.1.0 reads back the same after its thread entries
become thread heads: by SQLite's migration (a copy of the file), and by the key-value
adapter over the same entries left as they are (a store of the 0.1 protocol)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread import codec
from convthread.ports import Append, Batch, Put
from convthread.stores import MemoryStore, SQLiteStore
from convthread.stores._kv import with_heads

HERE = Path(__file__).parent / "migration"
EXPECTED: dict[str, Any] = json.loads((HERE / "release-0.1.0.json").read_text())


def _sqlite(tmp_path: Path) -> ct.Conversations:
    db = tmp_path / "copy.db"
    shutil.copy(HERE / "release-0.1.0.db", db)
    store = SQLiteStore(db)
    assert store.schema_version >= 3
    return ct.Conversations(store)


def _kv_adapter(tmp_path: Path) -> ct.Conversations:
    """The 0.1.0 file's rows, as they are, in a store without heads."""
    mem = MemoryStore()
    conn = sqlite3.connect(HERE / "release-0.1.0.db")
    try:
        streams: dict[str, list[bytes]] = {}
        for stream, _seq, data in conn.execute(
            "SELECT stream, seq, data FROM events ORDER BY stream, seq"
        ):
            streams.setdefault(stream, []).append(data)
        puts = [
            Put(ns, key, value)
            for ns, key, value, version in conn.execute("SELECT ns, key, value, version FROM kv")
            for _ in range(version)  # the same versions as in the file
        ]
    finally:
        conn.close()
    mem.commit(
        Batch(appends=tuple(Append(s, 0, tuple(ev)) for s, ev in streams.items()), puts=tuple(puts))
    )
    return ct.Conversations(with_heads(mem))


@pytest.fixture(params=["sqlite migration", "kv adapter"])
def convs(request: pytest.FixtureRequest, tmp_path: Path) -> ct.Conversations:
    make = _sqlite if request.param == "sqlite migration" else _kv_adapter
    return make(tmp_path)


def _activity(state: dict[str, Any]) -> tuple[datetime, str]:
    when = state.get("last_activity") or state["created_at"]
    return datetime.fromisoformat(when), state["id"]


def _listing(convs: ct.Conversations, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = convs.threads(limit=2, cursor=cursor, **filters)
        ids.extend(t.id for t in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def _json(value: object) -> Any:
    """``value`` as the fixture holds it (written by ``json.dumps``)."""
    return json.loads(json.dumps(codec.to_builtins(value)))


def test_thread_states_read_back_the_same(convs: ct.Conversations) -> None:
    """(Events and the rest of each read are tests/test_migration.py's.)"""
    for tid, want in EXPECTED["threads"].items():
        assert _json(convs.thread_state(tid)) == want["state"], tid
        assert len(convs.events(tid)) == len(want["events"]), tid
    for cid, want in EXPECTED["customers"].items():
        assert list(convs.customer(cid).thread_ids) == want["thread_ids"], cid


def test_threads_listings_are_the_same(convs: ct.Conversations) -> None:
    states = [t["state"] for t in EXPECTED["threads"].values()]
    everything = sorted(states, key=_activity)
    assert _listing(convs) == [s["id"] for s in everything]
    for status in {s["status"] for s in states}:
        want = [s["id"] for s in everything if s["status"] == status]
        assert _listing(convs, status=status) == want, status
    for cid in {s["customer_id"] for s in states}:
        want = [s["id"] for s in everything if s["customer_id"] == cid]
        assert _listing(convs, customer=cid) == want, cid
    for channel in {c for s in states for c in s["channels"]}:
        want = [s["id"] for s in everything if channel in s["channels"]]
        assert _listing(convs, channel=channel) == want, channel


def test_the_migration_leaves_no_old_thread_entries(tmp_path: Path) -> None:
    convs = _sqlite(tmp_path)
    store = convs.store
    assert isinstance(store, SQLiteStore)
    for ns in ("thread", "tactive", "tchannel", "snooze", "cthreads"):
        assert store.scan(ns) == [], ns
    assert len(store.find_heads(ct.ports.HeadQuery(limit=1000))) == len(EXPECTED["threads"])
    # and the store goes on working: a new message continues its customer's thread
    tid = next(iter(EXPECTED["threads"]))
    sent = convs.send(tid, "still here", sender="agent:lee")
    assert convs.thread_state(tid).version == sent.seq
