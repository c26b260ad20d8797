"""Stores: in-memory (the reference), SQLite (the embedded default), PostgreSQL (extra).

:func:`open_store` opens one by URL:

* ``memory://``: a new, empty in-memory store;
* ``sqlite:///relative/path.db`` (three slashes: a path relative to the working
  directory) or ``sqlite:////absolute/path.db`` (four slashes);
* ``postgresql://user@host:5432/db`` (or ``postgres://``): any libpq URL; the extra query
  parameter ``schema`` names the PostgreSQL schema holding the tables
  (``postgresql://host/db?schema=support``, default ``convthread``).

:func:`schema_status` says which schema version a database has and which migration
steps would run; :func:`migrate` runs them (``convthread migrate URL`` on the command
line). Opening a store migrates an older database too, without progress reports.

:func:`open_async_store` opens the native asyncio store for a URL (PostgreSQL). For the
other schemes pass the URL to :class:`~convthread.AsyncConversations`, which runs the
sync store without blocking the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from convthread.errors import ValidationError
from convthread.ports import AsyncStore, Store
from convthread.stores import sqlite as _sqlite
from convthread.stores._migrate import MigrationProgress, PendingStep, SchemaStatus
from convthread.stores.memory import MemoryStore
from convthread.stores.sqlite import SQLiteStore

if TYPE_CHECKING:  # pragma: no cover
    from convthread.stores.postgres import AsyncPostgresStore, PostgresStore

__all__ = [
    "MemoryStore",
    "MigrationProgress",
    "PendingStep",
    "SQLiteStore",
    "SchemaStatus",
    "migrate",
    "open_async_store",
    "open_store",
    "schema_status",
]

_SCHEMES = "memory://, sqlite:///file.db or postgresql://..."


def __getattr__(name: str) -> Any:
    # PostgresStore and AsyncPostgresStore import psycopg: only on demand.
    if name in ("PostgresStore", "AsyncPostgresStore"):
        from convthread.stores import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split(url: str) -> tuple[str, Any]:
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(f"store URL must look like {_SCHEMES}, got {url!r}")
    parts = urlsplit(url)
    return parts.scheme.lower(), parts


def _postgres_args(url: str, parts: Any) -> tuple[str, dict[str, Any]]:
    """The libpq URL without our own query parameters, and the store's options."""
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, Any] = {}
    rest = []
    for name, value in query:
        if name == "schema":
            options["schema"] = value
        else:
            rest.append((name, value))
    clean = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return clean, options


def _postgres_module() -> Any:
    try:
        from convthread.stores import postgres
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ValidationError(
            "PostgreSQL needs the extra: pip install 'convthread[postgres]'"
        ) from exc
    return postgres


def _sqlite_path(url: str, parts: Any) -> str:
    if parts.netloc:
        raise ValidationError(
            f"sqlite URLs have no host: use sqlite:///relative.db or "
            f"sqlite:////absolute.db, got {url!r}"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ValidationError(f"sqlite URL {url!r} names no file")
    return path


def schema_status(url: str) -> SchemaStatus:
    """The schema version of the database ``url`` names, the version this convthread
    writes and the steps between them, without changing anything. A SQLite file must
    exist (StoreUnavailable otherwise); a PostgreSQL schema not yet created is at
    version 0. SchemaError if the database is newer than this convthread; memory://
    has no schema (ValidationError)."""
    scheme, parts = _split(url)
    if scheme == "sqlite":
        return _sqlite.schema_status(_sqlite_path(url, parts))
    if scheme in ("postgresql", "postgres"):
        clean, options = _postgres_args(url, parts)
        status: SchemaStatus = _postgres_module().schema_status(clean, **options)
        return status
    return _no_schema(url, scheme)


def migrate(url: str, *, progress: MigrationProgress | None = None) -> SchemaStatus:
    """Bring the database ``url`` names to the schema this convthread writes, one
    transaction per step, calling ``progress(version, done, total)`` as each step goes;
    returns the status before (its ``pending`` steps are the ones that ran). Errors as
    :func:`schema_status`; a step that fails rolls back and raises, leaving the database
    at the last step that completed."""
    scheme, parts = _split(url)
    if scheme == "sqlite":
        return _sqlite.migrate(_sqlite_path(url, parts), progress=progress)
    if scheme in ("postgresql", "postgres"):
        clean, options = _postgres_args(url, parts)
        status: SchemaStatus = _postgres_module().migrate(clean, progress=progress, **options)
        return status
    return _no_schema(url, scheme)


def _no_schema(url: str, scheme: str) -> SchemaStatus:
    if scheme == "memory":
        raise ValidationError("memory:// keeps nothing between runs: it has no schema to migrate")
    raise ValidationError(f"unknown store scheme {scheme!r} in {url!r}; expected {_SCHEMES}")


def open_store(url: str) -> Store:
    """Open the store a URL names (see the module docstring for the forms)."""
    scheme, parts = _split(url)
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValidationError(f"memory:// takes no host or path, got {url!r}")
        return MemoryStore()
    if scheme == "sqlite":
        return SQLiteStore(_sqlite_path(url, parts))
    if scheme in ("postgresql", "postgres"):
        clean, options = _postgres_args(url, parts)
        store: PostgresStore = _postgres_module().PostgresStore(clean, **options)
        return store
    raise ValidationError(f"unknown store scheme {scheme!r} in {url!r}; expected {_SCHEMES}")


def open_async_store(url: str) -> AsyncStore:
    """Open the native asyncio store a URL names: ``postgresql://...`` gives an
    :class:`~convthread.stores.postgres.AsyncPostgresStore` (it connects on first use).

    ``memory://`` and ``sqlite://`` have no native async store: pass those URLs to
    :class:`~convthread.AsyncConversations`, which wraps the sync store.
    """
    scheme, parts = _split(url)
    if scheme in ("postgresql", "postgres"):
        clean, options = _postgres_args(url, parts)
        store: AsyncPostgresStore = _postgres_module().AsyncPostgresStore(clean, **options)
        return store
    if scheme in ("memory", "sqlite"):
        raise ValidationError(
            f"{scheme}:// has no native asyncio store; pass the URL to AsyncConversations "
            f"(it runs the sync store without blocking the event loop), or use open_store()"
        )
    raise ValidationError(f"unknown store scheme {scheme!r} in {url!r}; expected {_SCHEMES}")
