"""Stores: in-memory (the reference), SQLite (the embedded default), PostgreSQL (extra).

:func:`open_store` opens one by URL:

* ``memory://``: a new, empty in-memory store;
* ``sqlite:///relative/path.db`` (three slashes: a path relative to the working
  directory) or ``sqlite:////absolute/path.db`` (four slashes);
* ``postgresql://user@host:5432/db`` (or ``postgres://``): any libpq URL; the extra query
  parameter ``schema`` names the PostgreSQL schema holding the tables
  (``postgresql://host/db?schema=support``, default ``convthread``).

:func:`open_async_store` opens the native asyncio store for a URL (PostgreSQL). For the
other schemes pass the URL to :class:`~convthread.AsyncConversations`, which runs the
sync store without blocking the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from convthread.errors import ValidationError
from convthread.ports import AsyncStore, Store
from convthread.stores.memory import MemoryStore
from convthread.stores.sqlite import SQLiteStore

if TYPE_CHECKING:  # pragma: no cover
    from convthread.stores.postgres import AsyncPostgresStore, PostgresStore

__all__ = ["MemoryStore", "SQLiteStore", "open_async_store", "open_store"]

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


def open_store(url: str) -> Store:
    """Open the store a URL names (see the module docstring for the forms)."""
    scheme, parts = _split(url)
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValidationError(f"memory:// takes no host or path, got {url!r}")
        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc:
            raise ValidationError(
                f"sqlite URLs have no host: use sqlite:///relative.db or "
                f"sqlite:////absolute.db, got {url!r}"
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ValidationError(f"sqlite URL {url!r} names no file")
        return SQLiteStore(path)
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
