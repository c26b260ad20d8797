"""The PostgreSQL store: several application processes on several machines, one database.

Install the extra: ``pip install 'convthread[postgres]'`` (psycopg 3 and psycopg_pool).

Schema. Two tables in a schema of their own (``schema="convthread"`` by default; tests
pass a fresh one to isolate themselves)::

    events(stream text, seq bigint, data bytea, PRIMARY KEY (stream, seq))
    kv(ns text, key bytea, version bigint, value bytea, PRIMARY KEY (ns, key))
    schema_version(version int PRIMARY KEY, applied_at timestamptz)

Index keys are stored as UTF-8 ``bytea``: byte order of UTF-8 is code-point order, which
is the order :meth:`scan` must return, whatever the database's collation, and a key may
hold any character (``text`` cannot hold NUL). Stream names are ``text`` (ids; NUL is
refused by the driver and surfaces as :class:`~convthread.errors.StoreError`).

Migrations are forward steps (:data:`MIGRATIONS`), applied when a store is opened, inside
one transaction that holds an advisory lock, so several processes starting at once
migrate once. A database whose schema is newer than this library raises
:class:`~convthread.errors.SchemaError`.

How a batch stays atomic and correct under concurrent writers (READ COMMITTED, no
explicit locks, no SERIALIZABLE retries): every expectation is turned into a statement
whose outcome proves it, inside one transaction:

* **append at an expected version**: the stream's ``max(seq)`` must equal the expected
  version, and the new rows take ``expected + 1 ...``. Two writers expecting the same
  version both pass the check, but only one can insert ``expected + 1``: the primary key
  makes the second wait for the first and then fail with a unique violation.
* **put expecting ABSENT**: a plain ``INSERT``; the primary key on ``(ns, key)`` lets
  exactly one of two concurrent inserts win.
* **put or delete expecting version v**: ``UPDATE ... WHERE version = v`` (or ``DELETE``
  returning the old version). In READ COMMITTED a row another transaction is changing is
  waited for and the condition re-evaluated on its newest version, so this is a true
  compare-and-set.
* **put with ANY**: ``INSERT ... ON CONFLICT DO UPDATE SET version = version + 1``.

The statements of a batch are sent in one pipeline (one network round trip), then the
results are checked, then ``COMMIT`` is sent: two round trips per batch. A failed
expectation, a unique violation, a serialization failure or a deadlock rolls the whole
transaction back and raises :class:`~convthread.errors.ConflictError`. A lost connection
raises :class:`~convthread.errors.StoreUnavailable`; if it was lost before ``COMMIT``
was sent, nothing was written (the server rolls back a transaction whose connection
dies), so the operation can be retried. If it is lost while ``COMMIT`` is in flight the
outcome is unknown; the service's idempotency keys make a retry safe.

Within one batch, every put and delete is checked against the state *before* the batch;
puts apply before deletes (the reference store's order).

:meth:`scrub` runs ``VACUUM`` on both tables so dead row versions (rewritten events,
deleted entries) are removed from the table pages; ``scrub_mode="full"`` runs
``VACUUM FULL``, which rewrites the tables into new files (an exclusive lock while it
runs). PostgreSQL does not promise to zero freed space, and its WAL, replicas and backups
keep old bytes until they age out: a deployment that must prove erasure on disk keeps
WAL and backup retention within its erasure deadline.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from convthread.errors import ConflictError, SchemaError, StoreError, StoreUnavailable
from convthread.ports import ABSENT, ANY, Batch, Item, Recorded

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "AsyncPostgresStore", "PostgresStore"]

#: Forward migrations: version -> statements (``{s}`` is the quoted schema name).
#: Never edit a released step; add one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE {s}.events (
            stream text COLLATE "C" NOT NULL,
            seq bigint NOT NULL CHECK (seq > 0),
            data bytea NOT NULL,
            PRIMARY KEY (stream, seq)
        )""",
        """CREATE TABLE {s}.kv (
            ns text COLLATE "C" NOT NULL,
            key bytea NOT NULL,
            version bigint NOT NULL CHECK (version > 0),
            value bytea NOT NULL,
            PRIMARY KEY (ns, key)
        )""",
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)

ScrubMode = Literal["vacuum", "full"]

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# SQLSTATEs that mean "another writer won": retry the operation.
_CONFLICT_STATES: Final = frozenset({"23505", "40001", "40P01"})


def _enc(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _dec(key: bytes) -> str:
    return bytes(key).decode("utf-8", "surrogatepass")


def _prefix_upper(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every byte string starting with ``prefix``."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


# --------------------------------------------------------------------------- SQL


@dataclass(frozen=True)
class _Sql:
    """Every statement, with the schema name filled in."""

    schema: str
    q: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", f'"{self.schema}"')

    @property
    def read(self) -> str:
        return f"SELECT seq, data FROM {self.q}.events WHERE stream = %s AND seq > %s ORDER BY seq"

    @property
    def version(self) -> str:
        return f"SELECT coalesce(max(seq), 0) FROM {self.q}.events WHERE stream = %s"

    @property
    def get(self) -> str:
        return f"SELECT value, version FROM {self.q}.kv WHERE ns = %s AND key = %s"

    @property
    def get_many(self) -> str:
        return (
            f"SELECT key, value, version FROM {self.q}.kv WHERE ns = %s AND key = ANY(%s::bytea[])"
        )

    def scan(self, strict: bool, bounded: bool) -> str:
        op = ">" if strict else ">="
        upper = " AND key < %s" if bounded else ""
        return (
            f"SELECT key, value, version FROM {self.q}.kv WHERE ns = %s AND key {op} %s"
            f"{upper} ORDER BY key LIMIT %s"
        )

    @property
    def stream_versions(self) -> str:
        return (
            f"SELECT stream, max(seq) FROM {self.q}.events "
            f"WHERE stream = ANY(%s::text[]) GROUP BY stream"
        )

    @property
    def insert_events(self) -> str:
        return (
            f"INSERT INTO {self.q}.events (stream, seq, data) "
            f"SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bytea[])"
        )

    @property
    def rewrite(self) -> str:
        return (
            f"UPDATE {self.q}.events AS e SET data = r.data "
            f"FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS r(stream, seq, data) "
            f"WHERE e.stream = r.stream AND e.seq = r.seq"
        )

    @property
    def update_kv(self) -> str:
        return (
            f"UPDATE {self.q}.kv AS k SET version = k.version + u.n, value = u.value "
            f"FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bigint[], %s::bytea[]) "
            f"AS u(ns, key, expected, n, value) "
            f"WHERE k.ns = u.ns AND k.key = u.key AND k.version = u.expected"
        )

    @property
    def insert_kv(self) -> str:
        return (
            f"INSERT INTO {self.q}.kv (ns, key, version, value) "
            f"SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bytea[])"
        )

    @property
    def upsert_kv(self) -> str:
        return (
            f"INSERT INTO {self.q}.kv AS k (ns, key, version, value) "
            f"SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bytea[]) "
            f"ON CONFLICT (ns, key) DO UPDATE "
            f"SET version = k.version + excluded.version, value = excluded.value"
        )

    @property
    def delete_kv(self) -> str:
        return (
            f"DELETE FROM {self.q}.kv AS k "
            f"USING unnest(%s::text[], %s::bytea[]) AS d(ns, key) "
            f"WHERE k.ns = d.ns AND k.key = d.key RETURNING k.ns, k.key, k.version"
        )

    def migration(self) -> list[tuple[int, tuple[str, ...]]]:
        return [
            (v, tuple(s.replace("{s}", self.q) for s in stmts))
            for v, stmts in sorted(MIGRATIONS.items())
        ]


# --------------------------------------------------------------------------- batch plan

Check = Callable[[list[tuple[Any, ...]], int], None]


@dataclass(frozen=True)
class _Step:
    sql: str
    params: tuple[Any, ...]
    fetch: bool = False
    check: Check | None = None


def _plan(sql: _Sql, batch: Batch) -> list[_Step]:
    """The statements of a batch and, for each, how to verify its outcome.

    Raises ConflictError or StoreError for batches that are wrong on their face.
    """
    steps: list[_Step] = []

    # Appends: the stream versions must match; inserts take expected + 1 ...
    streams = [a.stream for a in batch.appends]
    if batch.appends:
        expected = {a.stream: a.expected for a in batch.appends}

        def check_versions(rows: list[tuple[Any, ...]], _n: int) -> None:
            current = {stream: int(seq) for stream, seq in rows}
            for append in batch.appends:
                have = current.get(append.stream, 0)
                if have != append.expected:
                    raise ConflictError(
                        f"stream {append.stream!r} is at version {have}, expected {append.expected}"
                    )
            if len(expected) != len(streams):
                raise StoreError("a batch may append to each stream at most once")

        steps.append(_Step(sql.stream_versions, (list(expected),), True, check_versions))

    # Rewrites go before the inserts: they may only name events that existed before.
    if batch.rewrites:
        last: dict[tuple[str, int], bytes] = {}
        for rw in batch.rewrites:
            last[(rw.stream, rw.seq)] = rw.data
        wanted = len(last)

        def check_rewrites(_rows: list[tuple[Any, ...]], count: int) -> None:
            if count != wanted:
                missing = ", ".join(f"{s!r}#{q}" for s, q in last)
                raise StoreError(f"cannot rewrite missing event(s) among {missing}")

        steps.append(
            _Step(
                sql.rewrite,
                ([s for s, _ in last], [q for _, q in last], list(last.values())),
                False,
                check_rewrites,
            )
        )

    if len(set(streams)) == len(streams):
        ev_streams: list[str] = []
        ev_seqs: list[int] = []
        ev_data: list[bytes] = []
        for append in batch.appends:
            for i, data in enumerate(append.events):
                ev_streams.append(append.stream)
                ev_seqs.append(append.expected + i + 1)
                ev_data.append(data)
        if ev_streams:
            steps.append(_Step(sql.insert_events, (ev_streams, ev_seqs, ev_data)))

    # Index entries: group the operations on each key (all checked against the state
    # before the batch; puts apply before deletes).
    groups: dict[tuple[str, str], _KeyOps] = {}
    for put in batch.puts:
        g = groups.setdefault((put.ns, put.key), _KeyOps())
        g.expect(put.ns, put.key, put.expected)
        g.puts += 1
        g.value = put.value
    for delete in batch.deletes:
        g = groups.setdefault((delete.ns, delete.key), _KeyOps())
        g.expect(delete.ns, delete.key, delete.expected)
        g.deleted = True

    updates = [(k, g) for k, g in groups.items() if not g.deleted and g.expected > 0]
    inserts = [(k, g) for k, g in groups.items() if not g.deleted and g.expected == ABSENT]
    upserts = [(k, g) for k, g in groups.items() if not g.deleted and g.expected == ANY]
    deletes = [(k, g) for k, g in groups.items() if g.deleted]

    if updates:
        n_updates = len(updates)

        def check_updates(_rows: list[tuple[Any, ...]], count: int) -> None:
            if count != n_updates:
                raise ConflictError(
                    "an index entry changed or vanished since it was read: "
                    + ", ".join(f"{ns}/{key}@{g.expected}" for (ns, key), g in updates)
                )

        steps.append(
            _Step(
                sql.update_kv,
                (
                    [ns for (ns, _), _g in updates],
                    [_enc(key) for (_, key), _g in updates],
                    [g.expected for _k, g in updates],
                    [g.puts for _k, g in updates],
                    [g.value for _k, g in updates],
                ),
                False,
                check_updates,
            )
        )
    for rows, statement in ((inserts, sql.insert_kv), (upserts, sql.upsert_kv)):
        if rows:
            steps.append(
                _Step(
                    statement,
                    (
                        [ns for (ns, _), _g in rows],
                        [_enc(key) for (_, key), _g in rows],
                        [g.puts for _k, g in rows],
                        [g.value for _k, g in rows],
                    ),
                )
            )
    if deletes:
        expectations = {(ns, _enc(key)): g.expected for (ns, key), g in deletes}

        def check_deletes(rows: list[tuple[Any, ...]], _n: int) -> None:
            gone = {(ns, bytes(key)): int(version) for ns, key, version in rows}
            for (ns, key), want in expectations.items():
                had = gone.get((ns, key))
                if want == ANY:
                    continue
                if want == ABSENT and had is not None:
                    raise ConflictError(f"{ns}/{_dec(key)} already exists (version {had})")
                if want > 0 and had != want:
                    state = "does not exist" if had is None else f"is at version {had}"
                    raise ConflictError(f"{ns}/{_dec(key)} {state}, expected {want}")

        steps.append(
            _Step(
                sql.delete_kv,
                ([ns for (ns, _), _g in deletes], [_enc(key) for (_, key), _g in deletes]),
                True,
                check_deletes,
            )
        )
    return steps


class _KeyOps:
    """What one batch does to one key."""

    __slots__ = ("deleted", "expected", "puts", "value")

    def __init__(self) -> None:
        self.expected = ANY
        self.puts = 0
        self.value = b""
        self.deleted = False

    def expect(self, ns: str, key: str, expected: int) -> None:
        if expected == ANY or expected == self.expected:
            return
        if self.expected != ANY:
            raise ConflictError(
                f"{ns}/{key} is expected at two different versions in one batch "
                f"({self.expected} and {expected}); at most one can hold"
            )
        self.expected = expected


# --------------------------------------------------------------------------- errors


def _translate(exc: BaseException, what: str) -> BaseException:
    """The library's error for a driver or pool error."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreUnavailable(f"PostgreSQL {what}: no connection available: {exc}")
    if isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        if state in _CONFLICT_STATES:
            return ConflictError(f"concurrent write detected during {what}: {exc}")
        if isinstance(exc, psycopg.OperationalError) or (
            isinstance(state, str) and state.startswith(("08", "57P"))
        ):
            return StoreUnavailable(f"PostgreSQL connection lost during {what}: {exc}")
        return StoreError(f"PostgreSQL {what} failed: {exc}")
    return exc


def _is_disconnect(exc: BaseException) -> bool:
    return isinstance(
        exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout, pg_errors.AdminShutdown)
    )


def _check_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
        raise StoreError(
            f"schema must be a lowercase SQL identifier (letters, digits, '_'), got {schema!r}"
        )
    return schema


def _check_scrub(mode: str) -> ScrubMode:
    if mode not in ("vacuum", "full"):
        raise StoreError(f"scrub_mode must be 'vacuum' or 'full', not {mode!r}")
    return mode  # type: ignore[return-value]


def _migration_steps(sql: _Sql, current: int) -> list[tuple[int, tuple[str, ...]]]:
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"PostgreSQL schema {sql.schema!r} has schema version {current}; this "
            f"convthread knows up to {SCHEMA_VERSION}. Upgrade convthread."
        )
    return [(v, stmts) for v, stmts in sql.migration() if v > current]


def _lock_id(schema: str) -> str:
    return f"convthread:{schema}"


def _send_sync(conn: psycopg.Connection[Any], steps: list[_Step]) -> list[psycopg.Cursor[Any]]:
    """Send every statement in one pipeline; raise the first error, not "aborted"."""
    first: psycopg.Error | None = None
    cursors: list[psycopg.Cursor[Any]] = []
    try:
        with conn.pipeline():
            try:
                for step in steps:
                    cursors.append(conn.execute(step.sql, step.params))
            except psycopg.Error as exc:
                first = exc
    except psycopg.Error:
        if first is None:
            raise
    if first is not None:
        raise first
    return cursors


async def _send_async(
    conn: psycopg.AsyncConnection[Any], steps: list[_Step]
) -> list[psycopg.AsyncCursor[Any]]:
    first: psycopg.Error | None = None
    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        async with conn.pipeline():
            try:
                for step in steps:
                    cursors.append(await conn.execute(step.sql, step.params))
            except psycopg.Error as exc:
                first = exc
    except psycopg.Error:
        if first is None:
            raise
    if first is not None:
        raise first
    return cursors


# --------------------------------------------------------------------------- sync store


class PostgresStore:
    """A :class:`~convthread.ports.Store` in PostgreSQL, over a psycopg connection pool.

    ``url`` is a libpq connection string or URL. ``schema`` names the PostgreSQL schema
    holding the tables (created if missing). ``min_size``/``max_size`` size the pool;
    ``timeout`` is how long a call waits for a free connection. Safe to share between
    threads; open one per process (a pool must not cross ``fork()``).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "convthread",
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 30.0,
        scrub_mode: ScrubMode = "vacuum",
        application_name: str = "convthread",
    ) -> None:
        self.schema = _check_schema(schema)
        self.scrub_mode = _check_scrub(scrub_mode)
        self._sql = _Sql(self.schema)
        self._url = url
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
                psycopg_pool.ConnectionPool(
                    url,
                    min_size=min_size,
                    max_size=max(max_size, min_size),
                    timeout=timeout,
                    kwargs={"autocommit": True, "application_name": application_name},
                    open=True,
                    name=f"convthread-{self.schema}",
                )
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open a PostgreSQL pool: {exc}") from exc
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _migrate(self) -> None:
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_id(self.schema),))
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{self.schema}".schema_version ('
                    "version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                row = conn.execute(
                    f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version'
                ).fetchone()
                for version, statements in _migration_steps(self._sql, int(row[0] if row else 0)):
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        f'INSERT INTO "{self.schema}".schema_version (version) VALUES (%s)',
                        (version,),
                    )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "migration") from exc

    @property
    def schema_version(self) -> int:
        rows = self._query(f'SELECT max(version) FROM "{self.schema}".schema_version', ())
        return int(rows[0][0] or 0)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one read statement; a connection found dead is replaced once."""
        self._check_open()
        for attempt in (0, 1):
            try:
                with self._pool.connection() as conn:
                    return conn.execute(sql, args).fetchall()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if (
                    attempt == 0
                    and _is_disconnect(exc)
                    and not isinstance(exc, psycopg_pool.PoolTimeout)
                ):
                    self._pool.check()
                    continue
                raise _translate(exc, "read") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reads

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        if limit is not None:
            rows = self._query(self._sql.read + " LIMIT %s", (stream, after, max(limit, 0)))
        else:
            rows = self._query(self._sql.read, (stream, after))
        return [Recorded(stream, int(seq), bytes(data)) for seq, data in rows]

    def version(self, stream: str) -> int:
        return int(self._query(self._sql.version, (stream,))[0][0])

    def get(self, ns: str, key: str) -> Item | None:
        rows = self._query(self._sql.get, (ns, _enc(key)))
        return Item(bytes(rows[0][0]), int(rows[0][1])) if rows else None

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        rows = self._query(self._sql.get_many, (ns, [_enc(k) for k in unique]))
        return {_dec(k): Item(bytes(v), int(ver)) for k, v, ver in rows}

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        sql, args = _scan_args(self._sql, ns, prefix, after, limit)
        rows = self._query(sql, args)
        return [(_dec(k), Item(bytes(v), int(ver))) for k, v, ver in rows]

    # ------------------------------------------------------------------ writes

    def commit(self, batch: Batch) -> None:
        self._check_open()
        if batch.is_empty:
            return
        steps = _plan(self._sql, batch)
        if not steps:
            return
        try:
            with self._pool.connection() as conn:
                try:
                    with conn.transaction():
                        cursors = _send_sync(conn, steps)
                        for step, cur in zip(steps, cursors, strict=True):
                            if step.check is not None:
                                rows = cur.fetchall() if step.fetch else []
                                step.check(rows, cur.rowcount)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    if _is_disconnect(exc):
                        self._pool.check()
                    raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "commit") from exc

    def scrub(self) -> None:
        self._check_open()
        full = "FULL, " if self.scrub_mode == "full" else ""
        try:
            with self._pool.connection() as conn:
                for table in ("events", "kv"):
                    conn.execute(f'VACUUM ({full}ANALYZE) "{self.schema}".{table}')
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "scrub") from exc

    def drop_schema(self) -> None:
        """Drop the schema and everything in it (tests and tear-down). Irreversible."""
        self._check_open()
        try:
            with self._pool.connection() as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "drop schema") from exc

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()


def _scan_args(
    sql: _Sql, ns: str, prefix: str, after: str, limit: int
) -> tuple[str, tuple[Any, ...]]:
    pre = _enc(prefix)
    strict = bool(after) and after >= prefix
    lower = _enc(after) if strict else pre
    upper = _prefix_upper(pre) if prefix else None
    if upper is not None:
        return sql.scan(strict, True), (ns, lower, upper, max(limit, 0))
    return sql.scan(strict, False), (ns, lower, max(limit, 0))


# --------------------------------------------------------------------------- async store


class AsyncPostgresStore:
    """The asyncio :class:`~convthread.ports.AsyncStore` over PostgreSQL
    (psycopg_pool's ``AsyncConnectionPool``): the same schema, SQL and semantics as
    :class:`PostgresStore`, so both may serve the same database at once.

    The pool opens (and the schema migrates) on first use, inside the running event
    loop; ``await store.open()`` does it eagerly. Use one store per event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "convthread",
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 30.0,
        scrub_mode: ScrubMode = "vacuum",
        application_name: str = "convthread",
    ) -> None:
        self.schema = _check_schema(schema)
        self.scrub_mode = _check_scrub(scrub_mode)
        self._sql = _Sql(self.schema)
        self._url = url
        self._min_size = min_size
        self._max_size = max(max_size, min_size)
        self._timeout = timeout
        self._application_name = application_name
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncPostgresStore(schema={self.schema!r})"

    async def __aenter__(self) -> AsyncPostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the pool and migrate the schema (done on first use otherwise)."""
        await self._ready()

    async def _ready(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise StoreError("the store is closed")
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return self._pool
            pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = (
                psycopg_pool.AsyncConnectionPool(
                    self._url,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    kwargs={"autocommit": True, "application_name": self._application_name},
                    open=False,
                    name=f"convthread-async-{self.schema}",
                )
            )
            try:
                await pool.open()
                await self._migrate(pool)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            return pool

    async def _migrate(
        self, pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    ) -> None:
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_id(self.schema),)
                )
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{self.schema}".schema_version ('
                    "version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute(
                    f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version'
                )
                row = await cur.fetchone()
                for version, statements in _migration_steps(self._sql, int(row[0] if row else 0)):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        f'INSERT INTO "{self.schema}".schema_version (version) VALUES (%s)',
                        (version,),
                    )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "migration") from exc

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        pool = await self._ready()
        for attempt in (0, 1):
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(sql, args)
                    return await cur.fetchall()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if (
                    attempt == 0
                    and _is_disconnect(exc)
                    and not isinstance(exc, psycopg_pool.PoolTimeout)
                ):
                    await pool.check()
                    continue
                raise _translate(exc, "read") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def schema_version(self) -> int:
        """The schema version of the database (a coroutine, unlike the sync store's)."""
        rows = await self._query(f'SELECT max(version) FROM "{self.schema}".schema_version', ())
        return int(rows[0][0] or 0)

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        if limit is not None:
            rows = await self._query(self._sql.read + " LIMIT %s", (stream, after, max(limit, 0)))
        else:
            rows = await self._query(self._sql.read, (stream, after))
        return [Recorded(stream, int(seq), bytes(data)) for seq, data in rows]

    async def version(self, stream: str) -> int:
        return int((await self._query(self._sql.version, (stream,)))[0][0])

    async def get(self, ns: str, key: str) -> Item | None:
        rows = await self._query(self._sql.get, (ns, _enc(key)))
        return Item(bytes(rows[0][0]), int(rows[0][1])) if rows else None

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        rows = await self._query(self._sql.get_many, (ns, [_enc(k) for k in unique]))
        return {_dec(k): Item(bytes(v), int(ver)) for k, v, ver in rows}

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        sql, args = _scan_args(self._sql, ns, prefix, after, limit)
        rows = await self._query(sql, args)
        return [(_dec(k), Item(bytes(v), int(ver))) for k, v, ver in rows]

    async def commit(self, batch: Batch) -> None:
        pool = await self._ready()
        if batch.is_empty:
            return
        steps = _plan(self._sql, batch)
        if not steps:
            return
        try:
            async with pool.connection() as conn:
                try:
                    async with conn.transaction():
                        cursors = await _send_async(conn, steps)
                        for step, cur in zip(steps, cursors, strict=True):
                            if step.check is not None:
                                rows = await cur.fetchall() if step.fetch else []
                                step.check(rows, cur.rowcount)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    if _is_disconnect(exc):
                        await pool.check()
                    raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "commit") from exc

    async def scrub(self) -> None:
        pool = await self._ready()
        full = "FULL, " if self.scrub_mode == "full" else ""
        try:
            async with pool.connection() as conn:
                for table in ("events", "kv"):
                    await conn.execute(f'VACUUM ({full}ANALYZE) "{self.schema}".{table}')
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "scrub") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.close()
