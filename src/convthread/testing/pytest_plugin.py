"""pytest plugin: fixtures for testing code that embeds convthread.

Installed with convthread (the ``pytest11`` entry point), so the fixtures are available in
any project without a ``conftest.py``. The plugin only *adds* fixtures (and one command
line option); it changes nothing about how tests are collected or run, and imports
convthread only when a fixture is used.

Fixtures (all prefixed ``convthread_`` so they never clash with yours):

* ``convthread_clock``: a :class:`~convthread.ManualClock` at 2026-03-02 09:00 UTC.
* ``convthread_ids``: :class:`~convthread.SequentialIds` (``th_0001``, ``cu_0001``...).
* ``convthread_memory_store``, ``convthread_sqlite_store`` (a file in ``tmp_path``),
  ``convthread_postgres_store`` (a fresh schema, dropped afterwards; skipped unless a URL
  is given with ``--convthread-postgres-url`` or ``CONVTHREAD_TEST_POSTGRES_URL``).
* ``convthread_store``: the memory store, or the kind named by indirect
  parametrization: ``@pytest.mark.parametrize("convthread_store", ["memory", "sqlite"],
  indirect=True)``.
* ``convthread_store_factory``: ``make(kind="memory")`` returns a new empty store of that
  kind each call, closed at teardown; use it inside ``@given`` tests, where a
  function-scoped store would be shared by every example.
* ``convthread_conversations``: a :class:`~convthread.Conversations` over
  ``convthread_store`` with the manual clock and sequential ids.
* ``convthread_conversations_factory``: ``make(kind="memory")`` returns a new
  ``Conversations`` with its own store, manual clock and ids (for ``@given`` tests).
* ``convthread_async_conversations``: an :class:`~convthread.AsyncConversations` over
  ``convthread_store`` (use it from your async test runner).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from convthread import AsyncConversations, Conversations, ManualClock, SequentialIds
    from convthread.ports import Store

__all__ = [
    "convthread_async_conversations",
    "convthread_clock",
    "convthread_conversations",
    "convthread_conversations_factory",
    "convthread_ids",
    "convthread_memory_store",
    "convthread_postgres_store",
    "convthread_sqlite_store",
    "convthread_store",
    "convthread_store_factory",
    "pytest_addoption",
]

ENV_POSTGRES_URL = "CONVTHREAD_TEST_POSTGRES_URL"
STORE_KINDS = ("memory", "sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("convthread", "convthread testing kit")
    group.addoption(
        "--convthread-postgres-url",
        default=None,
        help=f"PostgreSQL URL for the convthread_postgres_store fixture (else ${ENV_POSTGRES_URL})",
    )


def _postgres_url(config: pytest.Config) -> str | None:
    url = config.getoption("--convthread-postgres-url", default=None)
    return url or os.environ.get(ENV_POSTGRES_URL) or None


class _Stores:
    """Opens stores of each kind and closes (for PostgreSQL: drops) them at teardown."""

    def __init__(self, tmp_path: Path, postgres_url: str | None) -> None:
        self.tmp_path = tmp_path
        self.postgres_url = postgres_url
        self.opened: list[Store] = []
        self.count = 0

    def make(self, kind: str = "memory") -> Store:
        self.count += 1
        store: Store
        if kind == "memory":
            from convthread.stores import MemoryStore

            store = MemoryStore()
        elif kind == "sqlite":
            from convthread.stores import SQLiteStore

            store = SQLiteStore(self.tmp_path / f"convthread-{self.count}.db")
        elif kind == "postgres":
            store = self._postgres()
        else:
            raise ValueError(f"unknown store kind {kind!r}; expected one of {STORE_KINDS}")
        self.opened.append(store)
        return store

    def _postgres(self) -> Store:
        if not self.postgres_url:
            pytest.skip(
                "no PostgreSQL URL: pass --convthread-postgres-url or set "
                f"{ENV_POSTGRES_URL} to run the PostgreSQL store"
            )
        try:
            from convthread.stores.postgres import PostgresStore
        except ImportError as exc:
            pytest.skip(f"the PostgreSQL store needs pip install 'convthread[postgres]' ({exc})")
        schema = f"ct_test_{os.getpid()}_{id(self):x}_{self.count}"
        try:
            store: Store = PostgresStore(self.postgres_url, schema=schema)
        except Exception as exc:  # the server is not reachable: say so
            pytest.skip(f"PostgreSQL at {self.postgres_url} is not usable: {exc}")
        return store

    def close(self) -> None:
        for store in reversed(self.opened):
            drop = getattr(store, "drop_schema", None)
            try:
                if callable(drop):
                    drop()
            finally:
                store.close()
        self.opened.clear()


@pytest.fixture
def convthread_clock() -> ManualClock:
    """A manual clock at 2026-03-02 09:00 UTC; move it with ``advance(minutes=5)``."""
    from datetime import datetime, timezone

    from convthread import ManualClock

    return ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))


@pytest.fixture
def convthread_ids() -> SequentialIds:
    """Deterministic ids: ``th_0001``, ``cu_0001``..."""
    from convthread import SequentialIds

    return SequentialIds()


@pytest.fixture
def convthread_store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Store]]:
    """``make(kind="memory")``: a new, empty store of that kind per call."""
    stores = _Stores(tmp_path, _postgres_url(request.config))
    yield stores.make
    stores.close()


@pytest.fixture
def convthread_memory_store(convthread_store_factory: Callable[..., Store]) -> Store:
    """An in-memory store."""
    return convthread_store_factory("memory")


@pytest.fixture
def convthread_sqlite_store(convthread_store_factory: Callable[..., Store]) -> Store:
    """A SQLite store in a temporary file."""
    return convthread_store_factory("sqlite")


@pytest.fixture
def convthread_postgres_store(convthread_store_factory: Callable[..., Store]) -> Store:
    """A PostgreSQL store in a fresh schema (skipped unless a URL is configured)."""
    return convthread_store_factory("postgres")


@pytest.fixture
def convthread_store(
    request: pytest.FixtureRequest, convthread_store_factory: Callable[..., Store]
) -> Store:
    """A store: memory, or the kind given by indirect parametrization."""
    kind = getattr(request, "param", "memory")
    return convthread_store_factory(kind)


@pytest.fixture
def convthread_conversations(
    convthread_store: Store, convthread_clock: ManualClock, convthread_ids: SequentialIds
) -> Conversations:
    """A ``Conversations`` over ``convthread_store``, the manual clock and sequential ids."""
    from convthread import Conversations

    return Conversations(convthread_store, clock=convthread_clock, ids=convthread_ids)


@pytest.fixture
def convthread_conversations_factory(
    convthread_store_factory: Callable[..., Store],
) -> Callable[..., Conversations]:
    """``make(kind="memory", **options)``: a new ``Conversations`` with its own store,
    manual clock (2026-03-02 09:00 UTC) and sequential ids. ``options`` go to
    ``Conversations`` (``continuity=...``, ``identifiers=...``)."""
    from datetime import datetime, timezone

    from convthread import Conversations, ManualClock, SequentialIds

    def make(kind: str = "memory", **options: Any) -> Conversations:
        options.setdefault("clock", ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)))
        options.setdefault("ids", SequentialIds())
        return Conversations(convthread_store_factory(kind), **options)

    return make


@pytest.fixture
def convthread_async_conversations(
    convthread_store: Store, convthread_clock: ManualClock, convthread_ids: SequentialIds
) -> AsyncConversations:
    """An ``AsyncConversations`` over ``convthread_store`` (closed with the store)."""
    from convthread import AsyncConversations

    return AsyncConversations(convthread_store, clock=convthread_clock, ids=convthread_ids)
