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

Tables: ``events`` (streams), ``kv`` (the generic index), ``thread_heads`` (one typed row
per thread, see docs/stores.md for its columns and the SQL you may run on it) and
``thread_channels`` (which channels each thread used). A head write is an ``INSERT``
(the primary key refuses a second head for a thread: ConflictError) or an ``UPDATE ...
WHERE version = ?`` that must change one row; no head is read before it is written.

One connection per thread (SQLite connections must not be shared across threads); a
store object must not be carried across ``fork()``: open a new one in the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from convthread import codec
from convthread._heads import head_of
from convthread.errors import ConflictError, StoreError, StoreUnavailable
from convthread.ports import (
    ABSENT,
    ANY,
    DEFAULT_TENANT,
    Batch,
    Delete,
    HeadQuery,
    Item,
    Put,
    Recorded,
    ThreadHead,
)
from convthread.stores._migrate import (
    MigrationProgress,
    Progress,
    SchemaStatus,
    Step,
    pending_steps,
    status,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "migrate", "schema_status"]

#: Chunk of rows a Python migration step copies per statement (progress is reported
#: after each).
COPY_CHUNK: Final = 5000


def _add_position_and_tenant(conn: sqlite3.Connection, progress: Progress) -> None:
    """Events get a global position (append order) and a tenant; index entries a tenant."""
    events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    entries = int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
    total = events + entries
    progress(0, total)
    # The position is the rowid, so rows stay in append order in the table's b-tree.
    # Rows keep the rowid they had: a row appended at schema 2 got max(rowid) + 1 at
    # its commit, so rowid order is append order. (Rows written at schema 1 were copied
    # by step 2 in (stream, seq) order, the only order that schema knew: their order
    # across streams is lost, their order within a stream is kept.) AUTOINCREMENT: a
    # position is never handed out twice, even after the newest rows are deleted.
    conn.execute(
        """CREATE TABLE events_v3 (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant TEXT NOT NULL DEFAULT '',
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq > 0),
            data BLOB NOT NULL
        )"""
    )
    copied = 0
    top = int(conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0])
    for low in range(0, top, COPY_CHUNK):
        copied += conn.execute(
            "INSERT INTO events_v3 (position, stream, seq, data) SELECT rowid, stream, seq, "
            "data FROM events WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (low, low + COPY_CHUNK),
        ).rowcount
        progress(copied, total)
    conn.execute("DROP TABLE events")
    conn.execute("ALTER TABLE events_v3 RENAME TO events")
    conn.execute("CREATE UNIQUE INDEX events_stream_seq ON events (stream, seq)")
    # The tenant goes last in the key, so every lookup by (ns, key) still finds its
    # rows by the key's prefix; a tenant's own copy of a key is another row.
    conn.execute(
        """CREATE TABLE kv_v3 (
            ns TEXT NOT NULL,
            key TEXT NOT NULL,
            tenant TEXT NOT NULL DEFAULT '',
            version INTEGER NOT NULL CHECK (version > 0),
            value BLOB NOT NULL,
            PRIMARY KEY (ns, key, tenant)
        ) WITHOUT ROWID"""
    )
    after: tuple[str, str] | None = None  # keyset pagination over the primary key
    while True:
        where = "" if after is None else "WHERE (ns, key) > (?, ?) "
        rows = conn.execute(
            f"SELECT ns, key, version, value FROM kv {where}ORDER BY ns, key LIMIT ?",
            (*(after or ()), COPY_CHUNK),
        ).fetchall()
        if not rows:
            break
        conn.executemany("INSERT INTO kv_v3 (ns, key, version, value) VALUES (?, ?, ?, ?)", rows)
        after = (rows[-1][0], rows[-1][1])
        copied += len(rows)
        progress(copied, total)
    conn.execute("DROP TABLE kv")
    conn.execute("ALTER TABLE kv_v3 RENAME TO kv")
    progress(total, total)


def _time(value: datetime) -> str:
    """A UTC time as stored: ISO 8601 with microseconds, so text order is time order."""
    return value.isoformat(timespec="microseconds")


def _head_params(head: ThreadHead) -> tuple[Any, ...]:
    """The columns of ``head`` in _HEAD_COLUMNS order (version excluded)."""
    until = head.snoozed_until
    return (
        head.tenant,
        head.thread_id,
        head.customer_id,
        head.status,
        head.last_seq,
        _time(head.last_activity),
        head.last_channel,
        head.topic,
        json.dumps(head.channels),
        None if until is None else _time(until),
        head.controller,
        _time(head.created_at),
        head.state,
    )


_HEAD_COLUMNS: Final = (
    "tenant, thread_id, customer_id, status, last_seq, last_activity, last_channel, topic, "
    "channels, snoozed_until, controller, created_at, state"
)
_INSERT_HEAD: Final = (
    f"INSERT INTO thread_heads ({_HEAD_COLUMNS}, version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_HEAD: Final = (
    "UPDATE thread_heads SET customer_id = ?, status = ?, last_seq = ?, last_activity = ?, "
    "last_channel = ?, topic = ?, channels = ?, snoozed_until = ?, controller = ?, "
    "created_at = ?, state = ?, version = version + 1 "
    "WHERE tenant = ? AND thread_id = ? AND version = ?"
)
_INSERT_CHANNEL: Final = (
    "INSERT OR IGNORE INTO thread_channels (tenant, channel, thread_id) VALUES (?, ?, ?)"
)
#: Releases up to 0.1 kept thread heads in these index namespaces (the layout of
#: ``convthread.stores._kv``); step 4 moves them into thread_heads.
_OLD_HEAD_NAMESPACES: Final = ("thread", "tactive", "tchannel", "snooze", "cthreads")


def _thread_heads(conn: sqlite3.Connection, progress: Progress) -> None:
    """Thread heads become rows with typed columns (the old thread entries moved in)."""
    # WITHOUT ROWID: the primary key is the table, so a head update writes one b-tree
    # page plus those of the indexes whose key changed (status and last activity move
    # with every message; a thread's customer seldom does).
    conn.execute(
        """CREATE TABLE thread_heads (
            tenant TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            status TEXT NOT NULL,
            last_seq INTEGER NOT NULL CHECK (last_seq >= 0),
            last_activity TEXT NOT NULL,
            last_channel TEXT NOT NULL,
            topic TEXT,
            channels TEXT NOT NULL,
            snoozed_until TEXT,
            controller TEXT,
            created_at TEXT NOT NULL,
            state BLOB NOT NULL,
            version INTEGER NOT NULL CHECK (version > 0),
            PRIMARY KEY (tenant, thread_id)
        ) WITHOUT ROWID"""
    )
    for statement in (
        "CREATE INDEX thread_heads_customer ON thread_heads (tenant, customer_id)",
        "CREATE INDEX thread_heads_activity "
        "ON thread_heads (tenant, status, last_activity, thread_id)",
        "CREATE INDEX thread_heads_controller "
        "ON thread_heads (tenant, controller, last_activity, thread_id) "
        "WHERE controller IS NOT NULL",
        "CREATE INDEX thread_heads_snoozed ON thread_heads (tenant, snoozed_until) "
        "WHERE snoozed_until IS NOT NULL",
        """CREATE TABLE thread_channels (
            tenant TEXT NOT NULL,
            channel TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            PRIMARY KEY (tenant, channel, thread_id)
        ) WITHOUT ROWID""",
    ):
        conn.execute(statement)
    total = int(conn.execute("SELECT count(*) FROM kv WHERE ns = 'thread'").fetchone()[0])
    progress(0, total)
    done = 0
    after = ""
    while True:
        rows = conn.execute(
            "SELECT key, value, version FROM kv WHERE ns = 'thread' AND key > ? "
            "ORDER BY key LIMIT ?",
            (after, COPY_CHUNK),
        ).fetchall()
        if not rows:
            break
        for _key, value, version in rows:
            head = head_of(codec.decode_thread_state(value), DEFAULT_TENANT)
            conn.execute(_INSERT_HEAD, (*_head_params(head), version))
            conn.executemany(
                _INSERT_CHANNEL, [(head.tenant, c, head.thread_id) for c in head.channels]
            )
        after = rows[-1][0]
        done += len(rows)
        progress(done, total)
    marks = ",".join("?" * len(_OLD_HEAD_NAMESPACES))
    conn.execute(f"DELETE FROM kv WHERE ns IN ({marks})", _OLD_HEAD_NAMESPACES)
    progress(total, total)


#: Forward migrations: version -> SQL statements or a Python step (see
#: :mod:`convthread.stores._migrate`). Never edit a released step; add one.
MIGRATIONS: Final[dict[int, Step]] = {
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
    # Events: position INTEGER PRIMARY KEY (the rowid, in commit order), tenant, a unique
    # index on (stream, seq). Index entries: a tenant, in the primary key.
    3: _add_position_and_tenant,
    # Thread heads: a typed row per thread (thread_heads), with indexes for the thread
    # queries, and the channels each thread used (thread_channels).
    4: _thread_heads,
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
            conn = _connect(self.path, self.timeout, self.synchronous)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _migrate(self) -> None:
        _upgrade(self._conn(), self.path, None)

    @property
    def schema_version(self) -> int:
        row = self._conn().execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ reads

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        sql = "SELECT seq, data, position FROM events WHERE stream = ? AND seq > ? ORDER BY seq"
        args: tuple[object, ...] = (stream, after)
        if limit is not None:
            sql += " LIMIT ?"
            args = (*args, limit)
        rows = self._query(sql, args)
        return [Recorded(stream, seq, data, pos) for seq, data, pos in rows]

    def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        """Events by position (:class:`~convthread.ports.FeedReader`): a range of the
        table's rowid, which is the position.

        Positions are in commit order because SQLite has one writer per file: a
        commit takes the write lock (``BEGIN IMMEDIATE``) before its first insert and
        holds it until it has committed, and AUTOINCREMENT hands each insert a rowid
        above every one ever used. So the positions of a commit are all above those of
        every earlier commit, and a reader's snapshot (WAL: it sees whole commits
        only) holds every position up to its greatest one."""
        rows = self._query(
            "SELECT stream, seq, data, position FROM events WHERE position > ? AND tenant = ? "
            "ORDER BY position LIMIT ?",
            (after, tenant, max(limit, 0)),
        )
        return [Recorded(stream, seq, data, pos) for stream, seq, data, pos in rows]

    def last_position(self, tenant: str) -> int:
        rows = self._query(
            "SELECT position FROM events WHERE tenant = ? ORDER BY position DESC LIMIT 1",
            (tenant,),
        )
        return int(rows[0][0]) if rows else 0

    def watch(self) -> _SQLiteWatch:
        """A watch that polls ``PRAGMA data_version`` on a connection of its own
        (:class:`~convthread.ports.FeedWatcher`): it changes when another connection, in
        this process or another, commits to the file."""
        if self._closed:
            raise StoreError("the store is closed")
        return _SQLiteWatch(self.path, self.timeout)

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

    def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        out: dict[str, ThreadHead] = {}
        unique = list(dict.fromkeys(thread_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT {_SELECT_HEAD} FROM thread_heads "
                f"WHERE tenant = ? AND thread_id IN ({marks})",
                (tenant, *chunk),
            )
            for row in rows:
                out[row[1]] = _head(row)
        return out

    def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        if query.limit <= 0:
            self._conn()  # a closed store raises StoreError
            return []
        sql, args = _find_sql(query)
        return [_head(row) for row in self._query(sql, args)]

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """``get_multi`` and ``get_heads`` (:class:`~convthread.ports.MultiGetHeads`):
        reads of a local file, so two queries cost no more than one."""
        return self.get_multi(keys), self.get_heads(tenant, thread_ids) if thread_ids else {}

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
        _check_head_writes(batch)
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
            # Positions are rowids, handed out in insert order. Commit order too: this
            # connection holds SQLite's one write lock from BEGIN IMMEDIATE to COMMIT,
            # so no other writer can insert (take a rowid) or commit in between, and a
            # reader's snapshot holds all or none of a commit's rows.
            conn.executemany("INSERT INTO events (stream, seq, data) VALUES (?, ?, ?)", events)
        if batch.puts:
            # in order: the same key put twice grows by two versions
            conn.executemany(
                "INSERT INTO kv (ns, key, version, value) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (ns, key, tenant) DO UPDATE "
                "SET version = version + 1, value = excluded.value",
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
        channels: list[tuple[str, str, str]] = []
        for hw in batch.heads:
            head, params = hw.head, _head_params(hw.head)
            if hw.expected == ABSENT:
                try:
                    conn.execute(_INSERT_HEAD, (*params, 1))
                except sqlite3.IntegrityError as exc:
                    raise ConflictError(
                        f"thread head {head.tenant}/{head.thread_id} already exists"
                    ) from exc
            else:
                cur = conn.execute(_UPDATE_HEAD, (*params[2:], *params[:2], hw.expected))
                if cur.rowcount != 1:
                    raise ConflictError(
                        f"thread head {head.tenant}/{head.thread_id} is not at version "
                        f"{hw.expected} (changed by another writer, or missing)"
                    )
            channels.extend((head.tenant, c, head.thread_id) for c in head.channels)
        if channels:
            # Channels are only ever added to a thread: the rows that exist stay.
            conn.executemany(_INSERT_CHANNEL, channels)

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


class _SQLiteWatch:
    """A :class:`~convthread.ports.FeedWatch`: polls the file's data version every
    :attr:`interval` seconds (a read of the WAL index in shared memory: microseconds,
    no disk read). Closing it from another thread ends a wait within one interval."""

    #: Seconds between two checks of the data version.
    interval = 0.002

    def __init__(self, path: Path, timeout: float) -> None:
        try:
            self._conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._seen = self._version()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot watch SQLite file {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._lock:
                if self._closed.is_set():
                    return False
                try:
                    now = self._version()
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"SQLite watch failed: {exc}") from exc
            if now != self._seen:
                self._seen = now
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._closed.wait(min(self.interval, left)):
                return False

    def close(self) -> None:
        self._closed.set()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _connect(path: Path, timeout: float, synchronous: Synchronous) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, the given
    ``synchronous``, ``secure_delete`` on."""
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot put {path} in WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA secure_delete = ON")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite file {path}: {exc}") from exc
    return conn


def _current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file (0: none, a new or foreign file)."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return int(row[0] or 0)


def _upgrade(conn: sqlite3.Connection, path: Path, progress: MigrationProgress | None) -> None:
    """Apply every pending step, each in a transaction of its own that also records its
    version. Each transaction takes the write lock first (BEGIN IMMEDIATE) and reads the
    version again, so processes opening one file at once apply each step once."""
    where = str(path)
    try:
        if _current_version(conn) == SCHEMA_VERSION:
            return  # the common case: no write lock taken
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER NOT NULL, applied_at TEXT NOT NULL DEFAULT "
                    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
                )
                steps = pending_steps(MIGRATIONS, _current_version(conn), where)
                if not steps:
                    conn.execute("COMMIT")
                    return
                version, step = steps[0]
                _run_step(conn, version, step, progress)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"cannot open {path} as a convthread store: {exc}") from exc


def _run_step(
    conn: sqlite3.Connection, version: int, step: Step, progress: MigrationProgress | None
) -> None:
    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(version, done, total)

    if isinstance(step, tuple):
        report(0, len(step))
        for i, statement in enumerate(step, start=1):
            conn.execute(statement)
            report(i, len(step))
    else:
        step(conn, report)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path)
    if not file.is_file():
        raise StoreUnavailable(f"no SQLite database at {file}: the file does not exist")
    return file


def schema_status(path: str | os.PathLike[str]) -> SchemaStatus:
    """The schema version of the SQLite file at ``path`` and the steps that would bring
    it to :data:`SCHEMA_VERSION`, without changing the file (it must exist).
    SchemaError if the file is newer than this convthread."""
    file = _existing_file(path)
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite file {file}: {exc}") from exc
    try:
        return status(MIGRATIONS, _current_version(conn), str(file))
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"cannot read {file} as a convthread store: {exc}") from exc
    finally:
        conn.close()


def migrate(
    path: str | os.PathLike[str],
    *,
    progress: MigrationProgress | None = None,
    timeout: float = 30.0,
) -> SchemaStatus:
    """Bring the SQLite file at ``path`` (it must exist) to :data:`SCHEMA_VERSION`, one
    transaction per step; ``progress(version, done, total)`` is called as steps run.
    Returns the status before the migration (what ran is its ``pending``)."""
    before = schema_status(path)
    if before.up_to_date:
        return before
    file = Path(path)
    conn = _connect(file, timeout, "FULL")
    try:
        _upgrade(conn, file, progress)
    finally:
        conn.close()
    return before


_SELECT_HEAD: Final = (
    "tenant, thread_id, customer_id, status, last_seq, last_activity, last_channel, topic, "
    "channels, snoozed_until, controller, created_at, state, version"
)


def _head(row: tuple[Any, ...]) -> ThreadHead:
    until = row[9]
    return ThreadHead(
        tenant=row[0],
        thread_id=row[1],
        customer_id=row[2],
        status=row[3],
        last_seq=row[4],
        last_activity=datetime.fromisoformat(row[5]),
        last_channel=row[6],
        topic=row[7],
        channels=tuple(json.loads(row[8])),
        snoozed_until=None if until is None else datetime.fromisoformat(until),
        controller=row[10],
        created_at=datetime.fromisoformat(row[11]),
        state=row[12],
        version=row[13],
    )


def _find_sql(query: HeadQuery) -> tuple[str, tuple[Any, ...]]:
    """The SELECT of ``query`` and its parameters (the indexes of migration step 4
    serve each filter)."""
    where = ["tenant = ?"]
    args: list[Any] = [query.tenant]
    if query.customer_id is not None:
        where.append("customer_id = ?")
        args.append(query.customer_id)
    if query.statuses:
        where.append(f"status IN ({','.join('?' * len(query.statuses))})")
        args.extend(query.statuses)
    if query.controller is not None:
        where.append("controller = ?")
        args.append(query.controller)
    if query.channel is not None:
        # thread_channels finds the candidates; a head's own channels decide (its rows
        # are only ever added, so a row may outlive a channel a head no longer lists).
        where.append(
            "EXISTS (SELECT 1 FROM thread_channels AS c WHERE c.tenant = h.tenant "
            "AND c.channel = ? AND c.thread_id = h.thread_id) "
            "AND EXISTS (SELECT 1 FROM json_each(h.channels) WHERE value = ?)"
        )
        args.extend((query.channel, query.channel))
    if query.snoozed_before is not None:
        where.append("snoozed_until < ?")
        args.append(_time(query.snoozed_before))
    if query.active_from is not None:
        where.append("last_activity >= ?")
        args.append(_time(query.active_from))
    if query.active_until is not None:
        where.append("last_activity <= ?")
        args.append(_time(query.active_until))
    if query.after is not None:
        where.append(f"(last_activity, thread_id) {'<' if query.newest_first else '>'} (?, ?)")
        args.extend((_time(query.after[0]), query.after[1]))
    order = "DESC" if query.newest_first else "ASC"
    sql = (
        f"SELECT {_SELECT_HEAD} FROM thread_heads AS h WHERE {' AND '.join(where)} "
        f"ORDER BY last_activity {order}, thread_id {order} LIMIT ?"
    )
    return sql, (*args, query.limit)


def _check_head_writes(batch: Batch) -> None:
    """What a batch's head writes must be on their face (see the ports notes)."""
    slots = [(hw.head.tenant, hw.head.thread_id) for hw in batch.heads]
    if len(set(slots)) != len(slots):
        raise StoreError("a batch may write each thread's head at most once")
    for hw in batch.heads:
        if hw.expected < 0:
            raise StoreError(
                f"thread head {hw.head.tenant}/{hw.head.thread_id}: a head write expects "
                "ABSENT or a version, not ANY"
            )


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
