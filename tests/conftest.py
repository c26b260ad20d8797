"""Shared fixtures: a store of each kind, a manual clock, deterministic ids.

PostgreSQL tests need a server: CONVTHREAD_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test). Where none is reachable they skip with the
reason, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import convthread as ct
from convthread.ports import Store
from convthread.stores import MemoryStore, SQLiteStore

POSTGRES_URL = os.environ.get(
    "CONVTHREAD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CORPORA = Path(__file__).parent / "corpora"

# Hypothesis: no wall-clock deadlines (CI machines are shared), bounded example counts.
settings.register_profile(
    "default", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("CONVTHREAD_HYPOTHESIS_PROFILE", "default"))


def cpython_email_corpus() -> Path:
    """CPython's own e-mail test corpus (Lib/test/test_email/data), or a path that does not
    exist when this Python was built without its test suite (the tests using it skip)."""
    try:
        import test
    except ImportError:
        return Path("/nonexistent/cpython-test-suite")
    return Path(os.path.dirname(test.__file__)) / "test_email" / "data"


def postgres_reason() -> str | None:
    """None when PostgreSQL is reachable, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'convthread[postgres]')"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_URL}: {exc}"
    return None


def require_postgres() -> None:
    reason = postgres_reason()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but PostgreSQL is not usable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def clock() -> ct.ManualClock:
    return ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))


@pytest.fixture
def ids() -> ct.SequentialIds:
    return ct.SequentialIds()


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores of one kind; for SQLite, every call reopens the same file."""
    opened: list[Store] = []
    path = tmp_path / "store.db"
    mem = MemoryStore()

    def make() -> Store:
        store: Store = mem if request.param == "memory" else SQLiteStore(path)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


@pytest.fixture
def convs(store: Store, clock: ct.ManualClock, ids: ct.SequentialIds) -> ct.Conversations:
    return ct.Conversations(store, clock=clock, ids=ids)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh store that several processes can share: a SQLite file, or a
    PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    require_postgres()
    from convthread.stores.postgres import PostgresStore

    schema = f"url_{os.getpid()}_{random.randrange(10**6)}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.drop_schema()
