"""Stores: in-memory (the reference), SQLite (the embedded default), PostgreSQL (extra).

:func:`open_store` opens one by URL: ``memory://``, ``sqlite:///relative/path.db``,
``sqlite:////absolute/path.db``, ``postgresql://user@host/db``.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from convthread.errors import ValidationError
from convthread.ports import Store
from convthread.stores.memory import MemoryStore
from convthread.stores.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "open_store"]


def open_store(url: str) -> Store:
    """Open the store a URL names."""
    if not isinstance(url, str) or "://" not in url:
        raise ValidationError(
            f"store URL must look like memory://, sqlite:///file.db or postgresql://..., "
            f"got {url!r}"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
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
        try:
            from convthread.stores.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ValidationError(
                "PostgreSQL needs the extra: pip install 'convthread[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise ValidationError(f"unknown store scheme {scheme!r} in {url!r}")
