"""Our three stores run the conformance kit (convthread.testing.store_conformance)."""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from convthread.ports import Store
from convthread.stores import MemoryStore, SQLiteStore
from convthread.testing.store_conformance import StoreConformance

from .conftest import POSTGRES_URL, require_postgres

_counter = itertools.count()


class TestMemoryStore(StoreConformance):
    def make_store(self) -> Store:
        return MemoryStore()


class TestSQLiteStore(StoreConformance):
    persistent = True
    multi_process = True
    scrubs_files = True

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
