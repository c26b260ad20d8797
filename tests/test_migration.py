"""A database written by release 0.1.0 (storage schema 2) opens with the current code,
is upgraded to the current schema, and reads back exactly what that release read.

``tests/migration/release-0.1.0.db`` and ``release-0.1.0.json`` were made once by
``tests/migration/make_fixture.py`` under release 0.1.0; the tests work on copies.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from convthread import Conversations, ManualClock, codec
from convthread.cli import demo_conversations, main
from convthread.errors import SchemaError
from convthread.ports import Store
from convthread.stores import SQLiteStore, migrate, schema_status
from convthread.stores import sqlite as sqlite_store
from tests.conftest import POSTGRES_URL, require_postgres

HERE = Path(__file__).parent / "migration"
FIXTURE = HERE / "release-0.1.0.db"
EXPECTED: dict[str, Any] = json.loads((HERE / "release-0.1.0.json").read_text())


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A copy of the release 0.1.0 database (the kept file is never opened)."""
    copy = tmp_path / "release-0.1.0.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


def _projected(got: Any, want: Any) -> Any:
    """``got`` cut down to the fields ``want`` has: later releases may export more
    fields (a decision's ``code`` and ``params``), but every field 0.1.0 exported must
    still be there with the same value."""
    if isinstance(want, dict) and isinstance(got, dict):
        return {k: _projected(got[k], v) if k in got else "<missing>" for k, v in want.items()}
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [_projected(g, w) for g, w in zip(got, want, strict=True)]
    return got


def _same(label: str, got: Any, want: Any) -> None:
    """Assert that ``got`` exports every field of ``want`` with the same value, as JSON
    (as the fixture was written: tuples become lists), printing a unified diff if not."""
    got = _projected(json.loads(json.dumps(got)), want)
    if got == want:
        return
    a = json.dumps(want, indent=1, sort_keys=True).splitlines()
    b = json.dumps(got, indent=1, sort_keys=True).splitlines()
    diff = "\n".join(difflib.unified_diff(a, b, "release 0.1.0", "now", lineterm=""))
    pytest.fail(f"{label} differs from what release 0.1.0 read:\n{diff}", pytrace=False)


def _clock() -> ManualClock:
    as_of = EXPECTED["snapshot"]["as_of"].replace("Z", "+00:00")
    return ManualClock(datetime.fromisoformat(as_of))


def _check_reads(convs: Conversations) -> None:
    """Every read the fixture recorded gives the same result now."""
    for tid, want in EXPECTED["threads"].items():
        _same(f"thread_state({tid})", codec.to_builtins(convs.thread_state(tid)), want["state"])
        _same(f"events({tid})", [codec.to_builtins(e) for e in convs.events(tid)], want["events"])
    for cid, want in EXPECTED["customers"].items():
        _same(f"customer({cid})", codec.to_builtins(convs.customer(cid)), want)
    snap = EXPECTED["snapshot"]
    got = convs.snapshot(snap["thread_id"], audience=snap["audience"])
    _same(f"snapshot({snap['thread_id']})", codec.to_builtins(got), snap)


def _append_order(path: Path) -> list[tuple[str, int]]:
    """The events of the kept fixture in the order release 0.1.0 appended them (rowid)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT stream, seq FROM events ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _check_positions(store: Store, order: list[tuple[str, int]], *, exact: bool = True) -> None:
    """Positions are positive, unique and increase in the order events were appended
    (``exact=False``: within each stream only, as PostgreSQL's schema 2 kept no order
    across streams: the migration numbers rows as they lie in the table)."""
    position = {}
    for stream in dict.fromkeys(s for s, _ in order):
        for r in store.read(stream):
            position[(r.stream, r.seq)] = r.position
    assert set(position) == set(order)
    assert min(position.values()) > 0
    assert len(set(position.values())) == len(position)
    if not exact:
        order = sorted(order)  # by stream, then seq
        pairs = itertools.pairwise(order)
        assert all(position[a] < position[b] for a, b in pairs if a[0] == b[0])
        return
    in_order = [position[key] for key in order]
    assert all(a < b for a, b in itertools.pairwise(in_order)), in_order


def _no_erased_text(path: Path) -> None:
    needle = EXPECTED["erased_text"].encode()
    for file in path.parent.glob(path.name + "*"):
        assert needle not in file.read_bytes(), file


def test_the_kept_fixture_is_release_0_1_0_at_schema_2() -> None:
    status = schema_status(f"sqlite:///{FIXTURE}")  # read-only: the file stays as it is
    assert (status.current, status.target) == (2, sqlite_store.SCHEMA_VERSION)
    assert [s.version for s in status.pending] == list(range(3, status.target + 1))


def test_opening_the_release_0_1_0_file_upgrades_it(old_db: Path) -> None:
    order = _append_order(FIXTURE)
    store = SQLiteStore(old_db)
    assert store.schema_version == sqlite_store.SCHEMA_VERSION
    _check_positions(store, order)
    with Conversations(store, clock=_clock()) as convs:
        _check_reads(convs)
        store.scrub()
    _no_erased_text(old_db)
    assert schema_status(f"sqlite:///{old_db}").up_to_date


def test_the_upgraded_file_takes_new_events_after_the_old(old_db: Path) -> None:
    order = _append_order(FIXTURE)
    clock = _clock()
    convs = demo_conversations(f"sqlite:///{old_db}", clock)
    tid = EXPECTED["snapshot"]["thread_id"]
    before = max(r.position for s, _ in order for r in convs.store.read(s))
    convs.send(tid, "A reply after the upgrade", sender=EXPECTED["snapshot"]["controller"])
    newest = convs.store.read(tid)[-1]
    assert newest.position > before
    convs.close()


def test_migrate_command_dry_run_then_run(old_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    untouched = old_db.read_bytes()
    assert main(["migrate", str(old_db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "schema version 2, this convthread writes" in out and "step 3" in out
    assert "dry run" in out
    assert old_db.read_bytes() == untouched  # shown, not run
    assert main(["migrate", f"sqlite:///{old_db}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["from_version"] == 2 and summary["applied"] is True
    assert summary["to_version"] == summary["target_version"] == sqlite_store.SCHEMA_VERSION
    assert next(s["version"] for s in summary["steps"]) == 3
    assert main(["migrate", str(old_db)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    store = SQLiteStore(old_db)
    _check_positions(store, _append_order(FIXTURE))
    with Conversations(store, clock=_clock()) as convs:
        _check_reads(convs)
        store.scrub()
    _no_erased_text(old_db)


def test_migrate_reports_progress_per_step(old_db: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    before = migrate(f"sqlite:///{old_db}", progress=lambda v, d, t: calls.append((v, d, t)))
    assert before.current == 2
    steps = {v for v, _, _ in calls}
    assert steps == {s.version for s in before.pending}
    rows = [(d, t) for v, d, t in calls if v == 3]
    events, entries = len(_append_order(FIXTURE)), 56
    assert rows[-1] == (events + entries, events + entries)
    assert [d for d, _ in rows] == sorted(d for d, _ in rows)


def test_migrate_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", str(tmp_path / "missing.db")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()
    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    conn.commit()
    conn.close()
    assert main(["migrate", str(newer), "--dry-run"]) == 4  # refused: see cli exit statuses
    err = capsys.readouterr().err
    assert "SchemaError" in err and "schema version 999" in err and "Upgrade convthread" in err
    with pytest.raises(SchemaError):
        SQLiteStore(newer)
    assert main(["migrate", "memory://"]) == 4
    assert "no schema" in capsys.readouterr().err


# -- PostgreSQL: a schema as release 0.1.0 left it, holding the fixture's rows


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_postgres()
    import psycopg

    schema = f"mig_{os.getpid()}_{random.randrange(10**6)}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _pg_at_schema_2(schema: str) -> None:
    """Create ``schema`` by steps 1 and 2 only and copy the fixture's rows into it, in
    the order release 0.1.0 appended the events."""
    import psycopg

    from convthread.stores.postgres import MIGRATIONS

    q = f'"{schema}"'
    src = sqlite3.connect(f"{FIXTURE.resolve().as_uri()}?mode=ro", uri=True)
    events = src.execute("SELECT stream, seq, data FROM events ORDER BY rowid").fetchall()
    entries = src.execute("SELECT ns, key, version, value FROM kv").fetchall()
    src.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
        conn.execute(f"CREATE SCHEMA {q}")
        conn.execute(
            f"CREATE TABLE {q}.schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version in (1, 2):
            step = MIGRATIONS[version]
            assert isinstance(step, tuple)
            for statement in step:
                conn.execute(statement.replace("{s}", q))
            conn.execute(f"INSERT INTO {q}.schema_version (version) VALUES (%s)", (version,))
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {q}.events VALUES (%s, %s, %s)", events)
            cur.executemany(
                f"INSERT INTO {q}.kv VALUES (%s, %s, %s, %s)",
                [(ns, key.encode("utf-8", "surrogatepass"), v, val) for ns, key, v, val in entries],
            )


def _pg_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}schema={schema}"


def test_postgres_schema_2_opens_and_upgrades(pg_schema: str) -> None:
    from convthread.stores.postgres import SCHEMA_VERSION, PostgresStore

    _pg_at_schema_2(pg_schema)
    assert schema_status(_pg_url(pg_schema)).current == 2
    store = PostgresStore(POSTGRES_URL, schema=pg_schema)
    assert store.schema_version == SCHEMA_VERSION
    _check_positions(store, _append_order(FIXTURE), exact=False)
    with Conversations(store, clock=_clock()) as convs:
        _check_reads(convs)
        tid = EXPECTED["snapshot"]["thread_id"]
        last = convs.store.read(tid)[-1].position
        convs.send(tid, "A reply after the upgrade", sender=EXPECTED["snapshot"]["controller"])
        assert convs.store.read(tid)[-1].position > last


def test_postgres_migrate_command(pg_schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    from convthread.stores.postgres import SCHEMA_VERSION, PostgresStore

    _pg_at_schema_2(pg_schema)
    assert main(["migrate", _pg_url(pg_schema), "--dry-run"]) == 0
    assert "schema version 2" in capsys.readouterr().out
    assert schema_status(_pg_url(pg_schema)).current == 2
    assert main(["migrate", _pg_url(pg_schema), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["from_version"], summary["to_version"]) == (2, SCHEMA_VERSION)
    assert schema_status(_pg_url(pg_schema)).up_to_date
    store = PostgresStore(POSTGRES_URL, schema=pg_schema)
    _check_positions(store, _append_order(FIXTURE), exact=False)
    with Conversations(store, clock=_clock()) as convs:
        _check_reads(convs)
