"""Opening stores by URL, schema migrations, and the asyncio PostgreSQL store."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

import convthread as ct
from convthread.errors import ConflictError, SchemaError, StoreError, ValidationError
from convthread.ports import (
    ABSENT,
    Append,
    AsyncMultiGet,
    AsyncStore,
    Batch,
    Item,
    Put,
    Recorded,
    Store,
)
from convthread.stores import MemoryStore, SQLiteStore, open_async_store, open_store
from convthread.stores.sqlite import SCHEMA_VERSION
from convthread.testing.store_conformance import StoreConformance

from .conftest import POSTGRES_URL, require_postgres

T = TypeVar("T")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
_n = itertools.count()


def inbound(pid: str) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=pid,
        sender=(ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),),
        content=ct.Content(text="hello"),
        sent_at=T0,
    )


# -- URLs


def test_memory_url() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    with pytest.raises(ValidationError):
        open_store("memory://somewhere/else")


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db")
    assert isinstance(store, SQLiteStore)
    store.close()
    assert (tmp_path / "rel.db").exists()


def test_sqlite_absolute_url(tmp_path: Path) -> None:
    path = tmp_path / "abs dir" / "abs.db"
    path.parent.mkdir()
    store = open_store(f"sqlite:///{tmp_path}/abs%20dir/abs.db")  # four slashes in total
    assert isinstance(store, SQLiteStore)
    assert store.path == path
    store.close()


@pytest.mark.parametrize(
    "url",
    ["", "support.db", "sqlite://host/x.db", "sqlite:///", "mysql://x/y", "nothing://"],
)
def test_bad_urls_are_validation_errors(url: str) -> None:
    with pytest.raises(ValidationError):
        open_store(url)


def test_open_async_store_only_where_native() -> None:
    with pytest.raises(ValidationError, match="AsyncConversations"):
        open_async_store("sqlite:///x.db")
    with pytest.raises(ValidationError):
        open_async_store("redis://x")


def test_conversations_take_urls(tmp_path: Path) -> None:
    with ct.Conversations(f"sqlite:///{tmp_path}/c.db", clock=ct.ManualClock(T0)) as convs:
        assert convs.ingest(inbound("A")).seq == 2


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_postgres()
    import psycopg

    schema = f"urls_{os.getpid()}_{next(_n)}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_url_with_schema(pg_schema: str) -> None:
    from convthread.stores.postgres import PostgresStore

    sep = "&" if "?" in POSTGRES_URL else "?"
    store = open_store(f"{POSTGRES_URL}{sep}schema={pg_schema}&connect_timeout=5")
    assert isinstance(store, PostgresStore) and store.schema == pg_schema
    store.commit(Batch(puts=(Put("ns", "k", b"v"),)))
    store.close()
    again = open_store(
        f"{POSTGRES_URL.replace('postgresql://', 'postgres://')}{sep}schema={pg_schema}"
    )
    assert again.get("ns", "k") == Item(b"v", 1)
    again.close()


def test_postgres_schema_name_is_checked() -> None:
    pytest.importorskip("psycopg")
    from convthread.stores.postgres import PostgresStore

    with pytest.raises(StoreError):
        PostgresStore(POSTGRES_URL, schema='x"; DROP TABLE y; --')


def test_postgres_unreachable_is_store_unavailable() -> None:
    pytest.importorskip("psycopg")
    from convthread.errors import StoreUnavailable
    from convthread.stores.postgres import PostgresStore

    with pytest.raises(StoreUnavailable):
        PostgresStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", timeout=1.5)


# -- migrations


def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    """A file written by schema 1 (events WITHOUT ROWID) opens, migrates, keeps data."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL
            DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
        CREATE TABLE events (stream TEXT NOT NULL, seq INTEGER NOT NULL CHECK (seq > 0),
            data BLOB NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
        CREATE TABLE kv (ns TEXT NOT NULL, key TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version > 0), value BLOB NOT NULL,
            PRIMARY KEY (ns, key)) WITHOUT ROWID;
        INSERT INTO schema_version (version) VALUES (1);
        INSERT INTO events VALUES ('s', 1, x'01'), ('s', 2, x'02');
        INSERT INTO kv VALUES ('ns', 'k', 3, x'ff');
        """
    )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        assert [(r.seq, r.data) for r in store.read("s")] == [(1, b"\x01"), (2, b"\x02")]
        assert store.get("ns", "k") == Item(b"\xff", 3)
        with pytest.raises(ConflictError):
            store.commit(Batch(appends=(Append("s", 1, (b"x",)),)))
        store.commit(Batch(appends=(Append("s", 2, (b"\x03",)),)))
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'events'").fetchone()[0]
    conn.close()
    assert "WITHOUT ROWID" not in sql.upper()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError):
        SQLiteStore(path)


def test_postgres_migrates_once_and_refuses_newer(pg_schema: str) -> None:
    import psycopg

    from convthread.stores.postgres import SCHEMA_VERSION as PG_VERSION
    from convthread.stores.postgres import PostgresStore

    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(POSTGRES_URL, schema=pg_schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {s.schema_version for s in stores} == {PG_VERSION}
    for s in stores:
        s.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(f'SELECT version FROM "{pg_schema}".schema_version').fetchall()
        assert rows == [(v,) for v in range(1, PG_VERSION + 1)]
        conn.execute(f'INSERT INTO "{pg_schema}".schema_version (version) VALUES (99)')
    with pytest.raises(SchemaError):
        PostgresStore(POSTGRES_URL, schema=pg_schema)


# -- the asyncio PostgreSQL store runs the whole kit through a blocking adapter


class _Blocking:
    """A sync Store over an AsyncStore: its own event loop in a thread."""

    def __init__(self, inner: AsyncStore) -> None:
        self.inner = inner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return self._run(self.inner.read(stream, after, limit))

    def version(self, stream: str) -> int:
        return self._run(self.inner.version(stream))

    def get(self, ns: str, key: str) -> Item | None:
        return self._run(self.inner.get(ns, key))

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return self._run(self.inner.get_many(ns, keys))

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        inner = self.inner
        assert isinstance(inner, AsyncMultiGet), "the wrapped store has no get_multi"
        return self._run(inner.get_multi(keys))

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return self._run(self.inner.scan(ns, prefix, after, limit))

    def commit(self, batch: Batch) -> None:
        self._run(self.inner.commit(batch))

    def scrub(self) -> None:
        self._run(self.inner.scrub())

    def close(self) -> None:
        self._run(self.inner.close())

    def shutdown(self) -> None:
        """Close the store and stop the adapter's event loop."""
        if self.loop.is_closed():
            return
        try:
            self.close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class TestAsyncPostgresStore(StoreConformance):
    """The kit's cases and state machines (multi-get included), through the asyncio
    store."""

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
        from convthread.stores.postgres import AsyncPostgresStore, PostgresStore

        schema = f"akit_{os.getpid()}_{next(_n)}"
        with PostgresStore(POSTGRES_URL, schema=schema) as sync:
            sync.drop_schema()
        return _Blocking(AsyncPostgresStore(POSTGRES_URL, schema=schema, max_size=10))

    def discard_store(self, store: Store) -> None:
        from convthread.stores.postgres import AsyncPostgresStore, PostgresStore

        assert isinstance(store, _Blocking) and isinstance(store.inner, AsyncPostgresStore)
        store.shutdown()
        with PostgresStore(POSTGRES_URL, schema=store.inner.schema) as sync:
            sync.drop_schema()


@pytest.mark.parametrize("given", ["url", "store object"])
def test_async_conversations_over_postgres(pg_schema: str, given: str) -> None:
    from convthread.stores.postgres import AsyncPostgresStore

    sep = "&" if "?" in POSTGRES_URL else "?"

    async def main() -> None:
        store = (
            f"{POSTGRES_URL}{sep}schema={pg_schema}"
            if given == "url"
            else AsyncPostgresStore(POSTGRES_URL, schema=pg_schema)
        )
        convs = ct.AsyncConversations(store, clock=ct.ManualClock(T0))
        assert isinstance(convs.store, AsyncPostgresStore)  # used as it is, not wrapped
        results = await asyncio.gather(*(convs.ingest(inbound(f"P{i}")) for i in range(10)))
        assert sorted(r.seq for r in results) == list(range(2, 12))
        assert len({r.thread_id for r in results}) == 1
        again = await convs.ingest(inbound("P3"))
        assert again.duplicate
        await convs.close()

    asyncio.run(main())


def test_async_store_conflicts_are_conflict_errors(pg_schema: str) -> None:
    from convthread.stores.postgres import AsyncPostgresStore

    async def main() -> None:
        async with AsyncPostgresStore(POSTGRES_URL, schema=pg_schema) as store:
            assert await store.schema_version() >= 1
            batch = Batch(puts=(Put("ns", "k", b"v", ABSENT),))
            outcomes = await asyncio.gather(
                *(store.commit(batch) for _ in range(5)), return_exceptions=True
            )
            assert outcomes.count(None) == 1
            assert all(isinstance(o, ConflictError) for o in outcomes if o is not None)

    asyncio.run(main())
