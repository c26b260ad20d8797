"""Our stores run the conformance kit (convthread.testing.store_conformance): the memory,
SQLite and PostgreSQL stores all of it; the asyncio PostgreSQL store its multi-get cases
here (tests/test_store_urls.py runs the rest of the kit against it)."""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from convthread.errors import ConflictError, StoreError
from convthread.ports import ABSENT, Append, Batch, HeadQuery, Item, MultiGet, Put, Store
from convthread.stores import MemoryStore, SQLiteStore
from convthread.stores._kv import with_heads
from convthread.testing.store_conformance import StoreConformance

from .conftest import POSTGRES_URL, require_postgres

_counter = itertools.count()


class TestMemoryStore(StoreConformance):
    positions = True

    def make_store(self) -> Store:
        return MemoryStore()


def test_memory_store_offers_no_multi_get() -> None:
    """In-process reads cost nothing: the service prefetches only where it pays."""
    assert not isinstance(MemoryStore(), MultiGet)


class TestSQLiteStore(StoreConformance):
    persistent = True
    multi_process = True
    scrubs_files = True
    multi_get = True
    positions = True

    def make_store(self) -> Store:
        return SQLiteStore(self.tmp_path / f"kit-{next(_counter)}.db")

    def reopen_store(self, store: Store) -> Store:
        assert isinstance(store, SQLiteStore)
        store.close()
        return SQLiteStore(store.path)

    def store_opener(self, store: Store) -> functools.partial[Store]:
        assert isinstance(store, SQLiteStore)
        return functools.partial(SQLiteStore, store.path)

    def store_files(self, store: Store) -> list[Path]:
        assert isinstance(store, SQLiteStore)
        return [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]


class TestPostgresStore(StoreConformance):
    persistent = True
    multi_process = True
    multi_get = True
    positions = True
    # Every example is a fresh schema (a pool, a migration, a drop): fewer of them.
    machine_settings = settings(
        max_examples=12,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @pytest.fixture(autouse=True)
    def _needs_postgres(self) -> None:
        require_postgres()

    def make_store(self) -> Store:
        from convthread.stores.postgres import PostgresStore

        schema = f"kit_{os.getpid()}_{next(_counter)}"
        store = PostgresStore(POSTGRES_URL, schema=schema, max_size=10)
        store.drop_schema()
        store.close()
        return PostgresStore(POSTGRES_URL, schema=schema, max_size=10)

    def reopen_store(self, store: Store) -> Store:
        from convthread.stores.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        store.close()
        return PostgresStore(POSTGRES_URL, schema=store.schema, max_size=10)

    def store_opener(self, store: Store) -> functools.partial[Store]:
        from convthread.stores.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        return functools.partial(PostgresStore, POSTGRES_URL, schema=store.schema)

    def discard_store(self, store: Store) -> None:
        from convthread.stores.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        try:
            if not store._closed:
                store.drop_schema()
            else:
                with PostgresStore(POSTGRES_URL, schema=store.schema) as again:
                    again.drop_schema()
        finally:
            store.close()


# -- the key-value adapter: heads kept in the generic index of each store


class TestKVHeadsOverMemory(StoreConformance):
    """The adapter a store without head methods runs behind, over the reference."""

    def make_store(self) -> Store:
        return with_heads(MemoryStore())


class TestKVHeadsOverSQLite(StoreConformance):
    multi_get = True

    def make_store(self) -> Store:
        return with_heads(SQLiteStore(self.tmp_path / f"kv-{next(_counter)}.db"))


class TestKVHeadsOverPostgres(StoreConformance):
    multi_get = True
    machine_settings = TestPostgresStore.machine_settings

    @pytest.fixture(autouse=True)
    def _needs_postgres(self) -> None:
        require_postgres()

    def make_store(self) -> Store:
        from convthread.stores.postgres import PostgresStore

        schema = f"kvkit_{os.getpid()}_{next(_counter)}"
        return with_heads(PostgresStore(POSTGRES_URL, schema=schema, max_size=10))

    def discard_store(self, store: Store) -> None:
        from convthread.stores.postgres import PostgresStore

        inner = store.inner  # type: ignore[attr-defined]
        assert isinstance(inner, PostgresStore)
        try:
            if not inner._closed:
                inner.drop_schema()
            else:
                with PostgresStore(POSTGRES_URL, schema=inner.schema) as again:
                    again.drop_schema()
        finally:
            inner.close()


def test_a_store_without_heads_runs_behind_the_adapter() -> None:
    """A store of the 0.1 protocol (no head methods) is wrapped by the service, and its
    threads are kept in the index namespaces that protocol's releases used."""
    import convthread as ct
    from convthread.stores._kv import KVHeads

    class OldStore:
        def __init__(self) -> None:
            self.mem = MemoryStore()

        def __getattr__(self, name: str) -> object:
            if name in ("get_heads", "find_heads", "get_multi", "get_multi_heads"):
                raise AttributeError(name)
            return getattr(self.mem, name)

    old = OldStore()
    convs = ct.Conversations(old, ids=ct.SequentialIds())  # type: ignore[arg-type]
    assert isinstance(convs.store, KVHeads)
    r = convs.ingest(
        ct.Inbound(
            channel="sms",
            provider_message_id="m1",
            sender=(ct.SenderIdentifier(ct.phone("+14155550100"), ct.Trust.ASSERTED),),
            content=ct.Content(text="hi"),
            sent_at=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc),
        )
    )
    assert [t.id for t in convs.threads().items] == [r.thread_id]
    assert [k for k, _ in old.mem.scan("thread")] == [r.thread_id]
    assert [k for k, _ in old.mem.scan("cthreads")] == [f"{r.customer_id}|{r.thread_id}"]
    assert old.mem.find_heads(HeadQuery()) == []  # nothing in the native heads


# -- PostgreSQL: schema migration and the server-side checks of a commit


@pytest.fixture
def pg_fresh_schema() -> Iterator[str]:
    require_postgres()
    import psycopg

    schema = f"mig_{os.getpid()}_{next(_counter)}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_schema_1_migrates_forward(pg_fresh_schema: str) -> None:
    """A database written by a release with schema version 1 opens, migrates, keeps its
    data, and commits with the server-side checks of version 2."""
    import psycopg

    from convthread.stores.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore

    schema = pg_fresh_schema
    q = f'"{schema}"'
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # what version 1 created
        conn.execute(f"CREATE SCHEMA {q}")
        conn.execute(
            f"CREATE TABLE {q}.schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for statement in MIGRATIONS[1]:
            conn.execute(statement.replace("{s}", q))
        conn.execute(f"INSERT INTO {q}.schema_version (version) VALUES (1)")
        conn.execute(f"INSERT INTO {q}.events VALUES ('s', 1, 'e1')")
        conn.execute(f"INSERT INTO {q}.kv VALUES ('ns', 'k'::bytea, 3, 'v')")
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        assert SCHEMA_VERSION >= 2 and store.schema_version == SCHEMA_VERSION
        assert store.version("s") == 1 and store.get("ns", "k") == Item(b"v", 3)
        with pytest.raises(ConflictError, match="ns/k is at version 3, expected 2"):
            store.commit(
                Batch(appends=(Append("s", 1, (b"e2",)),), puts=(Put("ns", "k", b"x", 2),))
            )
        with pytest.raises(ConflictError, match="stream 's' is at version 1, expected 0"):
            store.commit(Batch(appends=(Append("s", 0, (b"e2",)),)))
        with pytest.raises(ConflictError, match="ns/k already exists"):
            store.commit(Batch(puts=(Put("ns", "k", b"x", ABSENT),)))
        store.commit(Batch(appends=(Append("s", 1, (b"e2",)),), puts=(Put("ns", "k", b"x", 3),)))
        assert store.version("s") == 2 and store.get("ns", "k") == Item(b"x", 4)
        assert store.get_multi([("ns", "k"), ("ns", "k"), ("ns", "none")]) == {
            ("ns", "k"): Item(b"x", 4)
        }


def test_postgres_commit_is_one_round_trip(
    pg_fresh_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit is one statement sent on its own (its own implicit transaction: one round
    trip), with no BEGIN or COMMIT; a batch that needs a refusal after it, or that
    appends to existing streams (it first waits for their holds), goes in one pipeline
    (one Sync). Failed checks leave nothing behind and the pooled connection usable, its
    prepared statements included."""
    import psycopg

    from convthread.stores.postgres import PostgresStore

    calls: list[str] = []
    real_execute = psycopg.Connection.execute
    real_pipeline = psycopg.Connection.pipeline

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        where = "in pipeline" if self._pipeline else "alone"
        calls.append(f"{where}: {str(query).split()[0]}")
        return real_execute(self, query, *args, **kwargs)

    def pipeline(self: psycopg.Connection[Any]) -> Any:
        calls.append("pipeline")
        return real_pipeline(self)

    with PostgresStore(POSTGRES_URL, schema=pg_fresh_schema, max_size=1) as store:
        store.commit(Batch(puts=(Put("ns", "k", b"v", ABSENT),)))
        monkeypatch.setattr(psycopg.Connection, "execute", execute)
        monkeypatch.setattr(psycopg.Connection, "pipeline", pipeline)
        for i in range(20):  # past psycopg's prepare threshold, failures in between
            batch = Batch(
                appends=(Append("s", i, (b"e%d" % i,)),),
                puts=(Put("ns", "k", b"%d" % i, i + 1), Put("ns", f"n{i}", b"", ABSENT)),
            )
            calls.clear()
            store.commit(batch)
            if i == 0:  # one statement, no pipeline needed
                assert calls == ["alone: WITH"], calls
            else:  # the wait for holds of "s", then the batch
                assert calls == ["pipeline", "in pipeline: SELECT", "in pipeline: WITH"], calls
            # Two statements (check versions, refuse a double append): the second one
            # runs, or the first fails and it is skipped. A statement psycopg prepared
            # and a pipeline then skipped would fail on every later use ("prepared
            # statement does not exist"): the refusal is never prepared (it always fails).
            with pytest.raises(StoreError, match="at most once"):
                store.commit(Batch(appends=(Append("t", 0, ()), Append("t", 0, ()))))
            with pytest.raises(ConflictError):
                store.commit(Batch(appends=(Append("s", 0, ()), Append("s", 0, ()))))
        monkeypatch.undo()
        assert store.version("s") == 20 and store.get("ns", "k") == Item(b"19", 21)
        assert len(store.scan("ns")) == 21


def test_postgres_refusals_say_what_failed(pg_fresh_schema: str) -> None:
    """Each kind of failed expectation names the entry, what it is and what was expected;
    text PostgreSQL cannot hold is a StoreError, keys may hold anything."""
    from convthread.ports import Delete, Rewrite
    from convthread.stores.postgres import PostgresStore

    with PostgresStore(POSTGRES_URL, schema=pg_fresh_schema) as store:
        odd = "k\x00\ud800é"  # NUL and a lone surrogate: fine in a key (stored as bytes)
        store.commit(Batch(appends=(Append("s", 0, (b"a",)),), puts=(Put("ns", odd, b"v"),)))
        assert store.get_multi([("ns", odd)]) == {("ns", odd): Item(b"v", 1)}
        cases: list[tuple[Batch, type[Exception], str]] = [
            (Batch(puts=(Put("ns", "gone", b"x", 3),)), ConflictError, "ns/gone does not exist"),
            (Batch(puts=(Put("ns", odd, b"x", 2),)), ConflictError, "is at version 1, expected 2"),
            (Batch(puts=(Put("ns", odd, b"x", ABSENT),)), ConflictError, "already exists"),
            (Batch(deletes=(Delete("ns", odd, 4),)), ConflictError, "version 1, expected 4"),
            (Batch(deletes=(Delete("ns", odd, ABSENT),)), ConflictError, "already exists"),
            (Batch(deletes=(Delete("ns", "gone", 1),)), ConflictError, "gone does not exist"),
            (
                Batch(puts=(Put("ns", "j", b"", ABSENT), Put("ns", "j", b"", 2))),
                ConflictError,
                "two different versions",
            ),
            (
                Batch(appends=(Append("s", 1, (b"b",)),), rewrites=(Rewrite("s", 2, b"x"),)),
                StoreError,
                "cannot rewrite missing event 's'#2",
            ),
            (Batch(appends=(Append("s\x00", 0, (b"b",)),)), StoreError, "PostgreSQL"),
            (Batch(puts=(Put("n\x00s", "k", b""),)), StoreError, "PostgreSQL"),
        ]
        for batch, error, words in cases:
            with pytest.raises(error, match=words):
                store.commit(batch)
        assert store.read("s") == [store.read("s")[0]] and store.version("s") == 1
        assert store.scan("ns") == [(odd, Item(b"v", 1))]


def test_postgres_plans_stay_on_the_primary_keys(pg_fresh_schema: str) -> None:
    """The pool's sessions plan a batch statement once and never by sequential scan: a
    plan made while the tables are small would otherwise scan them whole as they grow."""
    from convthread.stores.postgres import PostgresStore

    with PostgresStore(POSTGRES_URL, schema=pg_fresh_schema, max_size=1) as store:
        with store._pool.connection() as conn:
            settings_ = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings "
                    "WHERE name IN ('plan_cache_mode', 'enable_seqscan')"
                ).fetchall()
            )
        assert settings_ == {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}
        for i in range(8):  # prepared while kv holds a handful of rows
            store.commit(
                Batch(puts=(Put("ns", "k", b"%d" % i, i or ABSENT), Put("big", f"{i}", b"")))
            )
        store.commit(Batch(puts=tuple(Put("big", f"x{i}", b"") for i in range(3000))))
        with store._pool.connection() as conn:
            rows = conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE generic_plans > 0"
            ).fetchone()
            assert rows is not None and rows[0] >= 1
        store.commit(Batch(puts=(Put("ns", "k", b"last", 8),)))
        assert store.get("ns", "k") == Item(b"last", 9)


class _ForgetfulStore(MemoryStore):
    """Loses every index entry it is given: a store that must fail the kit."""

    def get(self, ns: str, key: str) -> Item | None:
        return None


def test_run_without_pytest_names_the_failing_case() -> None:
    class ForgetfulKit(StoreConformance):
        def make_store(self) -> Store:
            return _ForgetfulStore()

    with pytest.raises(AssertionError) as info:
        ForgetfulKit().run_without_pytest(machines=False)
    message = str(info.value)
    assert re.match(r"store conformance case ForgetfulKit\.test_\w+ failed: ", message), message
    assert info.value.__cause__ is not None
