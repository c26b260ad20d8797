"""The SQLite store: the embedded default, one file, several threads and processes.

Durability and concurrency, as chosen:

* ``journal_mode=WAL``: readers never block the writer and the writer never blocks
  readers, which suits a support back end that reads threads while it ingests.
* ``synchronous=FULL`` (the default here): every commit is fsynced to the WAL before
  ``commit()`` returns, so an acknowledged event survives a process crash **and** a power
  loss. ``NORMAL`` would be faster but may lose the last commits on power loss, which
  breaks "no acknowledged event is ever lost". Pass ``synchronous="NORMAL"`` if you accept
  that trade.
* Writers take the write lock up front (``BEGIN IMMEDIATE``), check every expectation of
  the batch and write, so a batch is atomic across threads and processes; a busy
  database is waited for up to ``timeout`` seconds.
* ``secure_delete=ON``: deleted and overwritten content is zeroed in the file, and
  :meth:`SQLiteStore.scrub` checkpoints and truncates the WAL, so erased bytes are gone
  from disk, not just unreachable.

One connection per thread (SQLite connections must not be shared across threads); a
store object must not be carried across ``fork()``: open a new one in the child.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from convthread.errors import ConflictError, SchemaError, StoreError, StoreUnavailable
from convthread.ports import ABSENT, ANY, Batch, Delete, Item, Put, Recorded

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

#: Forward migrations: version -> statements. Never edit a released step; add one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE events (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq > 0),
            data BLOB NOT NULL,
            PRIMARY KEY (stream, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE kv (
            ns TEXT NOT NULL,
            key TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version > 0),
            value BLOB NOT NULL,
            PRIMARY KEY (ns, key)
        ) WITHOUT ROWID""",
    ),
    # Events become an ordinary (rowid) table. In a WITHOUT ROWID table a row longer than
    # about 1,000 bytes (a 4 KiB page / 4) spills its tail into an overflow page of its
    # own, so a typical 1 KB message event took 5 KB on disk; a rowid table keeps rows up
    # to about 4 KB inline. (stream, seq) stays the primary key (a unique index).
    2: (
        """CREATE TABLE events_v2 (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq > 0),
            data BLOB NOT NULL,
            PRIMARY KEY (stream, seq)
        )""",
        "INSERT INTO events_v2 (stream, seq, data) SELECT stream, seq, data FROM events",
        "DROP TABLE events",
        "ALTER TABLE events_v2 RENAME TO events",
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)

Synchronous = Literal["FULL", "NORMAL", "EXTRA"]

#: Distinct (namespace, key) pairs per query in :meth:`SQLiteStore.get_multi`: two bound
#: variables each, within SQLite's historical limit of 999 variables per statement.
MULTI_GET_CHUNK: Final = 400


class SQLiteStore:
    """A :class:`~convthread.ports.Store` in one SQLite file (created if missing)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 30.0,
        synchronous: Synchronous = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.timeout = timeout
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._migrate()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        if os.getpid() != self._pid:
            raise StoreError("a SQLiteStore cannot cross fork(); open a new one in the child")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot put {self.path} in WAL mode (got {mode!r})")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.execute("PRAGMA secure_delete = ON")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite file {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _migrate(self) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT "
                    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
                )
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                current = row[0] or 0
                if current > SCHEMA_VERSION:
                    raise SchemaError(
                        f"{self.path} has schema version {current}; this convthread knows "
                        f"up to {SCHEMA_VERSION}. Upgrade convthread."
                    )
                for version in sorted(v for v in MIGRATIONS if v > current):
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot open {self.path} as a convthread store: {exc}") from exc

    @property
    def schema_version(self) -> int:
        row = self._conn().execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ reads

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        sql = "SELECT seq, data FROM events WHERE stream = ? AND seq > ? ORDER BY seq"
        args: tuple[object, ...] = (stream, after)
        if limit is not None:
            sql += " LIMIT ?"
            args = (*args, limit)
        rows = self._query(sql, args)
        return [Recorded(stream, seq, data) for seq, data in rows]

    def version(self, stream: str) -> int:
        rows = self._query("SELECT max(seq) FROM events WHERE stream = ?", (stream,))
        return int(rows[0][0] or 0)

    def get(self, ns: str, key: str) -> Item | None:
        rows = self._query("SELECT value, version FROM kv WHERE ns = ? AND key = ?", (ns, key))
        return Item(rows[0][0], rows[0][1]) if rows else None

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT key, value, version FROM kv WHERE ns = ? AND key IN ({marks})",
                (ns, *chunk),
            )
            for key, value, version in rows:
                out[key] = Item(value, version)
        return out

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The entries that exist among ``keys`` ((namespace, key) pairs), one query per
        :data:`MULTI_GET_CHUNK` distinct pairs (:class:`~convthread.ports.MultiGet`)."""
        self._conn()  # a closed store raises StoreError, even for no keys
        out: dict[tuple[str, str], Item] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), MULTI_GET_CHUNK):
            chunk = unique[start : start + MULTI_GET_CHUNK]
            rows = self._query(_by_pairs("kv.value, kv.version", len(chunk)), _flat(chunk))
            for ns, key, value, version in rows:
                out[(ns, key)] = Item(value, version)
        return out

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        lower = max(prefix, after)
        op = ">" if after and after >= prefix else ">="
        sql = f"SELECT key, value, version FROM kv WHERE ns = ? AND key {op} ?"
        args: list[object] = [ns, lower]
        if prefix:
            upper = _prefix_upper(prefix)
            if upper is not None:
                sql += " AND key < ?"
                args.append(upper)
        sql += " ORDER BY key LIMIT ?"
        args.append(limit)
        rows = self._query(sql, tuple(args))
        return [(k, Item(v, ver)) for k, v, ver in rows if k.startswith(prefix)]

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self._conn().execute(sql, args).fetchall()
            return rows
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed on {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed on {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ writes

    def commit(self, batch: Batch) -> None:
        if batch.is_empty:
            return
        conn = self._conn()
        if not conn.in_transaction:  # else inside hold(): the write lock is this thread's
            self._begin(conn)
        try:
            self._check(conn, batch)
            self._apply(conn, batch)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise ConflictError(f"concurrent write detected: {exc}") from exc
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"SQLite write failed on {self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"SQLite write failed on {self.path}: {exc}") from exc
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"SQLite file {self.path} stayed locked for {self.timeout}s: {exc}"
            ) from exc

    def hold(self, streams: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Hold ``streams`` against other holders, in any process, until the context
        ends (:class:`~convthread.ports.StreamHold`).

        SQLite has one write lock per file, so a hold is a write transaction
        (``BEGIN IMMEDIATE``) on the calling thread's connection: its reads see the
        latest commit, and every other writer, holding or not, waits for it (up to
        ``timeout``). A commit inside the hold commits it; leaving rolls back whatever
        is left. Only a retry of a conflicted write holds (the service decides), so a
        writer that was refused once cannot be refused again by one that read before
        it committed."""
        return self._holding() if streams else contextlib.nullcontext()

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        conn = self._conn()
        if conn.in_transaction:  # nested in a hold of this thread: it covers this one
            yield
            return
        self._begin(conn)
        try:
            yield
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    def _check(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Every expectation, against the state before the batch, in a few statements:
        one for the streams' versions, one per MULTI_GET_CHUNK keys for the index."""
        streams = [a.stream for a in batch.appends]
        if len(set(streams)) != len(streams):
            raise StoreError("a batch may append to each stream at most once")
        current: dict[str, int] = {}
        for start in range(0, len(streams), MULTI_GET_CHUNK):
            chunk = streams[start : start + MULTI_GET_CHUNK]
            marks = ",".join("?" * len(chunk))
            current.update(
                conn.execute(
                    f"SELECT stream, max(seq) FROM events WHERE stream IN ({marks}) "
                    "GROUP BY stream",
                    chunk,
                ).fetchall()
            )
        for append in batch.appends:
            version = current.get(append.stream, 0)
            if version != append.expected:
                raise ConflictError(
                    f"stream {append.stream!r} is at version {version}, expected {append.expected}"
                )
        ops: tuple[Put | Delete, ...] = (*batch.puts, *batch.deletes)
        wanted = list(dict.fromkeys((op.ns, op.key) for op in ops if op.expected != ANY))
        versions: dict[tuple[str, str], int] = {}
        for start in range(0, len(wanted), MULTI_GET_CHUNK):
            part = wanted[start : start + MULTI_GET_CHUNK]
            for ns, key, version in conn.execute(_by_pairs("kv.version", len(part)), _flat(part)):
                versions[(ns, key)] = version
        for op in ops:
            if op.expected != ANY:
                _check_expected(op.ns, op.key, versions.get((op.ns, op.key)), op.expected)

    def _apply(self, conn: sqlite3.Connection, batch: Batch) -> None:
        events = [
            (a.stream, a.expected + i + 1, d) for a in batch.appends for i, d in enumerate(a.events)
        ]
        if events:
            conn.executemany("INSERT INTO events (stream, seq, data) VALUES (?, ?, ?)", events)
        if batch.puts:
            # in order: the same key put twice grows by two versions
            conn.executemany(
                "INSERT INTO kv (ns, key, version, value) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (ns, key) DO UPDATE SET version = version + 1, value = excluded.value",
                [(put.ns, put.key, put.value) for put in batch.puts],
            )
        if batch.deletes:
            conn.executemany(
                "DELETE FROM kv WHERE ns = ? AND key = ?", [(d.ns, d.key) for d in batch.deletes]
            )
        for rw in batch.rewrites:
            cur = conn.execute(
                "UPDATE events SET data = ? WHERE stream = ? AND seq = ?",
                (rw.data, rw.stream, rw.seq),
            )
            if cur.rowcount != 1:
                raise StoreError(f"cannot rewrite missing event {rw.stream!r}#{rw.seq}")

    def scrub(self) -> None:
        """Checkpoint the WAL into the file and truncate it, so old page images are gone.

        With ``secure_delete`` on, freed and overwritten content in the main file is
        already zeroed; the WAL may still hold older page images until this runs.
        """
        conn = self._conn()
        for _ in range(50):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            threading.Event().wait(0.05)
        raise StoreUnavailable(
            f"cannot checkpoint {self.path}: another connection keeps a read open"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def _by_pairs(columns: str, count: int) -> str:
    """A query of ``ns, key`` and ``columns`` of the index entries among ``count``
    (namespace, key) pairs, bound as ``_flat(pairs)``."""
    pairs = ",".join("(?,?)" for _ in range(count))
    return (
        f"WITH w(ns, key) AS (VALUES {pairs}) SELECT kv.ns, kv.key, {columns} "
        "FROM w JOIN kv ON kv.ns = w.ns AND kv.key = w.key"
    )


def _flat(pairs: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(part for pair in pairs for part in pair)


def _check_expected(ns: str, key: str, version: int | None, expected: int) -> None:
    if expected == ABSENT:
        if version is not None:
            raise ConflictError(f"{ns}/{key} already exists (version {version})")
    elif version is None:
        raise ConflictError(f"{ns}/{key} does not exist, expected version {expected}")
    elif version != expected:
        raise ConflictError(f"{ns}/{key} is at version {version}, expected {expected}")


def _prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored: skip past them
                nxt = 0xE000
            chars[-1] = chr(nxt)
            return "".join(chars)
        chars.pop()
    return None
