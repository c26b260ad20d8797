"""The PostgreSQL store: several application processes on several machines, one database.

Install the extra: ``pip install 'convthread[postgres]'`` (psycopg 3 and psycopg_pool).

Schema. Three tables and a function in a schema of their own (``schema="convthread"``
by default; tests pass a fresh one to isolate themselves)::

    events(stream text, seq bigint, data bytea, PRIMARY KEY (stream, seq))
    kv(ns text, key bytea, version bigint, value bytea, PRIMARY KEY (ns, key))
    thread_heads(tenant, thread_id, customer_id, status, last_seq, last_activity,
                 last_channel, topic, channels text[], snoozed_until, controller,
                 created_at, state bytea, version, PRIMARY KEY (tenant, thread_id))
    schema_version(version int PRIMARY KEY, applied_at timestamptz)
    refuse_batch(code text, message text)  -- a function: raises, aborting a batch

``thread_heads`` has indexes for the thread queries (customer; status and last
activity; controller; snoozed_until, partial; a GIN index on channels): docs/stores.md
lists them with the SQL users may run on the table.

Index keys are stored as UTF-8 ``bytea``: byte order of UTF-8 is code-point order, which
is the order :meth:`scan` must return, whatever the database's collation, and a key may
hold any character (``text`` cannot hold NUL). Stream names are ``text`` (ids; NUL is
refused, by the driver or the server, and surfaces as
:class:`~convthread.errors.StoreError`).

Migrations are forward steps (:data:`MIGRATIONS`), applied when a store is opened, inside
one transaction that holds an advisory lock, so several processes starting at once
migrate once. A database whose schema is newer than this library raises
:class:`~convthread.errors.SchemaError`.

How a batch stays atomic and correct under concurrent writers (READ COMMITTED, no
explicit locks, no SERIALIZABLE retries): every expectation is turned into a
sub-statement whose outcome proves it, and the outcome is checked on the server:

* **append at an expected version**: the stream's ``max(seq)`` must equal the expected
  version, and the new rows take ``expected + 1 ...``. Two writers expecting the same
  version both pass the check, but only one can insert ``expected + 1``: the primary key
  makes the second wait for the first and then fail with a unique violation.
* **put expecting ABSENT**: ``INSERT ... ON CONFLICT DO NOTHING``; the primary key on
  ``(ns, key)`` lets exactly one of two concurrent inserts win, and the loser sees that
  it inserted nothing.
* **put or delete expecting version v**: ``UPDATE ... WHERE version = v`` (or ``DELETE``
  returning the old version). In READ COMMITTED a row another transaction is changing is
  waited for and the condition re-evaluated on its newest version, so this is a true
  compare-and-set.
* **put with ANY**: ``INSERT ... ON CONFLICT DO UPDATE SET version = version + 1``.
* **rewrite**: an ``UPDATE`` that must find every event it names.
* **head write**: an ``INSERT ... ON CONFLICT DO NOTHING`` that must insert its row (a
  new thread: the primary key lets one of two racing inserts win), or an ``UPDATE ...
  WHERE version = expected`` that must change its row (a compare-and-set, as for index
  entries). No head is read before it is written.

All of a batch is **one statement**: a ``WITH`` clause holds one data-modifying
sub-statement per kind of write (each over ``unnest`` of array parameters), and the main
query gathers the rows whose expectation failed and calls ``refuse_batch(code,
message)`` (schema version 2, PL/pgSQL) for the first: it raises SQLSTATE ``TC409``
(:class:`~convthread.errors.ConflictError`) or ``TC422`` (a batch that can never apply:
:class:`~convthread.errors.StoreError`), which aborts the transaction. Every
sub-statement sees the state before the statement, so every expectation is checked
against the state before the batch, and a rewrite cannot reach an event the batch
appends. The statement goes in a pipeline ending in a single Sync, which PostgreSQL runs
as an implicit transaction (committed at the Sync if it succeeded, rolled back if not):
**one network round trip per batch**, with no BEGIN or COMMIT of its own. (A batch that
is wrong on its face, a stream appended to twice or a key expected at two versions,
adds a second statement that refuses it once the stream versions have been checked.)

A failed expectation, a unique violation, a serialization failure or a deadlock rolls
the whole transaction back and raises :class:`~convthread.errors.ConflictError`. A lost
connection raises :class:`~convthread.errors.StoreUnavailable`; the server rolls back a
transaction whose connection dies before it commits (as when the batch waits on a lock),
so nothing is written and the operation can be retried. If the connection is lost after
the server committed but before the answer arrived, the outcome is unknown; the
service's idempotency keys make a retry safe.

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
import contextlib
import functools
import re
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain, repeat
from typing import Any, Final, Literal, NamedTuple

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import AdaptersMap, Dumper

from convthread import codec
from convthread._heads import head_of
from convthread.errors import ConflictError, StoreError, StoreUnavailable
from convthread.ports import (
    ABSENT,
    ANY,
    DEFAULT_TENANT,
    Batch,
    HeadQuery,
    Item,
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

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AsyncPostgresStore",
    "PostgresStore",
    "migrate",
    "schema_status",
]

#: Releases up to 0.1 kept thread heads in these index namespaces (the layout of
#: ``convthread.stores._kv``); step 4 moves them into thread_heads.
_OLD_HEAD_NAMESPACES: Final = ("thread", "tactive", "tchannel", "snooze", "cthreads")
_HEADS_DDL: Final = (
    """CREATE TABLE {s}.thread_heads (
        tenant text COLLATE "C" NOT NULL,
        thread_id text COLLATE "C" NOT NULL,
        customer_id text COLLATE "C" NOT NULL,
        status text COLLATE "C" NOT NULL,
        last_seq bigint NOT NULL CHECK (last_seq >= 0),
        last_activity timestamptz NOT NULL,
        last_channel text COLLATE "C" NOT NULL,
        topic text COLLATE "C",
        channels text[] COLLATE "C" NOT NULL,
        snoozed_until timestamptz,
        controller text COLLATE "C",
        created_at timestamptz NOT NULL,
        state bytea NOT NULL,
        version bigint NOT NULL CHECK (version > 0),
        PRIMARY KEY (tenant, thread_id)
    )""",
    "CREATE INDEX thread_heads_customer ON {s}.thread_heads (tenant, customer_id)",
    """CREATE INDEX thread_heads_activity
        ON {s}.thread_heads (tenant, status, last_activity, thread_id)""",
    """CREATE INDEX thread_heads_controller
        ON {s}.thread_heads (tenant, controller, last_activity, thread_id)
        WHERE controller IS NOT NULL""",
    """CREATE INDEX thread_heads_snoozed ON {s}.thread_heads (tenant, snoozed_until)
        WHERE snoozed_until IS NOT NULL""",
    "CREATE INDEX thread_heads_channels ON {s}.thread_heads USING gin (channels)",
)
_COPY_CHUNK: Final = 5000


def _thread_heads(conn: psycopg.Connection[Any], progress: Progress, q: str = "") -> None:
    """Thread heads become rows with typed columns (the old thread entries moved in)."""
    for statement in _HEADS_DDL:
        conn.execute(statement.replace("{s}", q))
    row = conn.execute(f"SELECT count(*) FROM {q}.kv WHERE ns = 'thread'").fetchone()
    total = int(row[0]) if row else 0
    progress(0, total)
    insert = (
        f"INSERT INTO {q}.thread_heads (tenant, thread_id, customer_id, status, last_seq, "
        "last_activity, last_channel, topic, channels, snoozed_until, controller, "
        "created_at, state, version) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    done = 0
    after = b""
    while True:
        rows = conn.execute(
            f"SELECT key, value, version FROM {q}.kv WHERE ns = 'thread' AND key > %s "
            "ORDER BY key LIMIT %s",
            (after, _COPY_CHUNK),
        ).fetchall()
        if not rows:
            break
        params = []
        for _key, value, version in rows:
            head = head_of(codec.decode_thread_state(bytes(value)), DEFAULT_TENANT)
            params.append((*_head_values(head), int(version)))
        with conn.cursor() as cur:
            cur.executemany(insert, params)
        after = bytes(rows[-1][0])
        done += len(rows)
        progress(done, total)
    conn.execute(f"DELETE FROM {q}.kv WHERE ns = ANY(%s::text[])", (list(_OLD_HEAD_NAMESPACES),))
    progress(total, total)


#: Forward migrations: version -> SQL statements (``{s}`` is the quoted schema name) or
#: a Python step (see :mod:`convthread.stores._migrate`; it gets a psycopg connection).
#: Never edit a released step; add one.
MIGRATIONS: Final[dict[int, Step]] = {
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
    # Every expectation of a batch is checked on the server, inside the transaction, so
    # a whole batch (its statements, in one implicit transaction) is one network round
    # trip. A check that fails calls this function, which aborts the transaction with a
    # SQLSTATE of our own: TC409 (a failed expectation: ConflictError) or TC422 (a batch
    # that can never apply: StoreError).
    2: (
        """CREATE FUNCTION {s}.refuse_batch(code text, message text) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $fn$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
        END
        $fn$""",
    ),
    # Events get a global position in commit order (a sequence; see _batch_sql for the
    # lock that makes its order the commit order) and a tenant ('' is the single
    # tenant); index entries get a tenant, last in their primary key so lookups by
    # (ns, key) still use it. Schema 2 kept no order across streams, so existing events
    # are numbered in the order they lie in the table (roughly insertion order: the
    # heap fills free space on earlier pages first), raised where needed so that within
    # a stream positions grow with seq.
    3: (
        """ALTER TABLE {s}.events
            ADD COLUMN tenant text COLLATE "C" NOT NULL DEFAULT '',
            ADD COLUMN position bigint""",
        "CREATE SEQUENCE {s}.events_position_seq AS bigint OWNED BY {s}.events.position",
        """UPDATE {s}.events AS e SET position = o.n FROM (
            SELECT stream, seq, row_number() OVER (ORDER BY at, stream, seq) AS n FROM (
                SELECT stream, seq, max(ctid) OVER (PARTITION BY stream ORDER BY seq) AS at
                FROM {s}.events) AS r) AS o
            WHERE e.stream = o.stream AND e.seq = o.seq""",
        """SELECT setval('{s}.events_position_seq', coalesce(max(position), 0) + 1, false)
            FROM {s}.events""",
        """ALTER TABLE {s}.events
            ALTER COLUMN position SET DEFAULT nextval('{s}.events_position_seq'),
            ALTER COLUMN position SET NOT NULL""",
        "CREATE UNIQUE INDEX events_position ON {s}.events (position)",
        """ALTER TABLE {s}.kv ADD COLUMN tenant text COLLATE "C" NOT NULL DEFAULT '',
            DROP CONSTRAINT kv_pkey, ADD PRIMARY KEY (ns, key, tenant)""",
    ),
    # Thread heads become rows with typed columns, with indexes for the thread queries;
    # the old thread entries of kv are copied in (decoded in Python), then dropped.
    4: _thread_heads,
}
SCHEMA_VERSION: Final = max(MIGRATIONS)

ScrubMode = Literal["vacuum", "full"]

_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# SQLSTATEs that mean "another writer won": retry the operation.
_CONFLICT_STATES: Final = frozenset({"23505", "40001", "40P01"})
# SQLSTATEs raised by the schema's refuse_batch() (see MIGRATIONS[2]).
_REFUSED_CONFLICT: Final = "TC409"
_REFUSED_INVALID: Final = "TC422"


def _enc(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _dec(key: bytes) -> str:
    return bytes(key).decode("utf-8", "surrogatepass")


def _label(text: str) -> str:
    """``text`` made safe for a ``text`` parameter (no NUL, no lone surrogate), for
    error messages built on the server."""
    if not text.isascii():  # (ASCII holds no surrogate: only NUL needs replacing)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _prefix_upper(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every byte string starting with ``prefix``."""
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


# --------------------------------------------------------------------------- array params
#
# Every statement takes its rows as arrays (``unnest(%s::text[], ...)``). psycopg's
# generic list adapter inspects every list on every call, which made adapting the
# arrays most of a commit's client time; these three list types carry their PostgreSQL
# type, and their dumpers write the binary array format directly.


class _Text(list[str]):
    """A ``text[]`` parameter. Text is sent as UTF-8 as is: the server refuses NUL and
    lone surrogates (SQLSTATE 22021, a StoreError), as it refuses them in any text."""


class _Bytes(list[bytes]):
    """A ``bytea[]`` parameter."""


class _Int8(list[int]):
    """A ``bigint[]`` parameter."""


class _NText(list["str | None"]):
    """A ``text[]`` parameter whose items may be NULL."""


_ARRAY_HEAD: Final = struct.Struct("!iiiii")  # ndim, has nulls, element oid, length, lbound
_EMPTY_ARRAY: Final = struct.Struct("!iii")  # ndim 0, has nulls, element oid
_INT8_ITEM: Final = struct.Struct("!iq")  # length 8, value
_LENGTH: Final = struct.Struct("!i")
_TEXT_OID, _BYTEA_OID, _INT8_OID = 25, 17, 20
_NULL: Final = _LENGTH.pack(-1)


def _pack_array(element_oid: int, items: Sequence[bytes]) -> bytes:
    if not items:
        return _EMPTY_ARRAY.pack(0, 0, element_oid)
    head = _ARRAY_HEAD.pack(1, 0, element_oid, len(items), 1)
    # Each item after its length; the loops run in C (map, zip, chain, join).
    lengths = map(_LENGTH.pack, map(len, items))
    return b"".join(chain((head,), chain.from_iterable(zip(lengths, items, strict=True))))


class _NTextDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_ARRAY.pack(0, 0, _TEXT_OID)
        head = _ARRAY_HEAD.pack(1, 1, _TEXT_OID, len(obj), 1)
        parts = [head]
        for item in obj:
            if item is None:
                parts.append(_NULL)
            else:
                data = item.encode("utf-8", "surrogatepass")
                parts.append(_LENGTH.pack(len(data)))
                parts.append(data)
        return b"".join(parts)


class _TextDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: Any) -> bytes:
        return _pack_array(_TEXT_OID, [s.encode("utf-8", "surrogatepass") for s in obj])


class _BytesDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: Any) -> bytes:
        return _pack_array(_BYTEA_OID, list(map(bytes, obj)))


class _Int8Dumper(Dumper):
    format = pq.Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_ARRAY.pack(0, 0, _INT8_OID)
        head = _ARRAY_HEAD.pack(1, 0, _INT8_OID, len(obj), 1)
        return b"".join(chain((head,), map(_INT8_ITEM.pack, repeat(8), obj)))


def _register_arrays(adapters: AdaptersMap) -> None:
    adapters.register_dumper(_Text, _TextDumper)
    adapters.register_dumper(_Bytes, _BytesDumper)
    adapters.register_dumper(_Int8, _Int8Dumper)
    adapters.register_dumper(_NText, _NTextDumper)


# Session settings of the pool's connections. A batch statement is planned once per
# connection: psycopg prepares it after five uses, but PostgreSQL would plan a prepared
# statement anew on every execution (a "custom plan", because it cannot tell how long
# the arrays are), and planning the batch statement cost more than executing it. A plan
# made once must stay right as the tables grow from empty: every statement of the store
# finds its rows by primary key, so sequential scans are ruled out (a plan made on a
# small table would otherwise keep scanning it whole as it grows).
_SESSION: Final = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Set up a new pooled connection."""
    _register_arrays(conn.adapters)
    if conn.info.server_version >= 120000:  # plan_cache_mode is PostgreSQL 12+
        conn.execute(_SESSION)


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    _register_arrays(conn.adapters)
    if conn.info.server_version >= 120000:
        await conn.execute(_SESSION)


# --------------------------------------------------------------------------- SQL


@dataclass(frozen=True)
class _Sql:
    """Every statement, with the schema name filled in."""

    schema: str
    notify: bool = True
    q: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", f'"{self.schema}"')

    @property
    def read(self) -> str:
        return (
            f"SELECT seq, data, position FROM {self.q}.events "
            f"WHERE stream = %s AND seq > %s ORDER BY seq"
        )

    @property
    def version(self) -> str:
        return f"SELECT coalesce(max(seq), 0) FROM {self.q}.events WHERE stream = %s"

    @property
    def read_positions(self) -> str:
        # The unique index on position serves the range; the tenant is a filter.
        return (
            f"SELECT stream, seq, data, position FROM {self.q}.events "
            f"WHERE position > %s AND tenant = %s ORDER BY position LIMIT %s"
        )

    @property
    def last_position(self) -> str:
        return (
            f"SELECT position FROM {self.q}.events WHERE tenant = %s ORDER BY position DESC LIMIT 1"
        )

    @property
    def listen(self) -> str:
        return f'LISTEN "{feed_channel(self.schema)}"'

    @property
    def get(self) -> str:
        return f"SELECT value, version FROM {self.q}.kv WHERE ns = %s AND key = %s"

    def scan(self, strict: bool, bounded: bool) -> str:
        op = ">" if strict else ">="
        upper = " AND key < %s" if bounded else ""
        return (
            f"SELECT key, value, version FROM {self.q}.kv WHERE ns = %s AND key {op} %s"
            f"{upper} ORDER BY key LIMIT %s"
        )

    @property
    def get_multi(self) -> str:
        # Each row names the pair it answers by its position in the arrays (1-based):
        # the client keeps the pairs, so the keys need not come back and be decoded.
        return (
            f"SELECT w.i, k.value, k.version "
            f"FROM unnest(%s::text[], %s::bytea[]) WITH ORDINALITY AS w(ns, key, i) "
            f"JOIN {self.q}.kv AS k ON k.ns = w.ns AND k.key = w.key"
        )

    @property
    def get_heads(self) -> str:
        # As get_multi: each id looked up by primary key (tenant is the last parameter).
        return (
            f"SELECT {_HEAD_SELECT} FROM unnest(%s::text[]) AS w(id) "
            f"JOIN {self.q}.thread_heads AS h ON h.tenant = %s AND h.thread_id = w.id"
        )

    def find_heads(self, query: HeadQuery) -> tuple[str, tuple[Any, ...]]:
        """The SELECT of ``query`` and its parameters; the indexes of migration step 3
        serve each filter."""
        where = ["h.tenant = %s"]
        args: list[Any] = [query.tenant]
        if query.customer_id is not None:
            where.append("h.customer_id = %s")
            args.append(query.customer_id)
        if query.statuses:
            where.append("h.status = ANY(%s::text[])")
            args.append(_Text(query.statuses))
        if query.controller is not None:
            where.append("h.controller = %s")
            args.append(query.controller)
        if query.channel is not None:
            where.append("h.channels @> ARRAY[%s::text]")
            args.append(query.channel)
        if query.snoozed_before is not None:
            where.append("h.snoozed_until < %s")
            args.append(query.snoozed_before)
        if query.active_from is not None:
            where.append("h.last_activity >= %s")
            args.append(query.active_from)
        if query.active_until is not None:
            where.append("h.last_activity <= %s")
            args.append(query.active_until)
        if query.after is not None:
            op = "<" if query.newest_first else ">"
            where.append(f"(h.last_activity, h.thread_id) {op} (%s, %s::text)")
            args.extend(query.after)
        order = "DESC" if query.newest_first else "ASC"
        sql = (
            f"SELECT {_HEAD_SELECT} FROM {self.q}.thread_heads AS h "
            f"WHERE {' AND '.join(where)} "
            f"ORDER BY h.last_activity {order}, h.thread_id {order} LIMIT %s"
        )
        return sql, (*args, max(query.limit, 0))

    # -- commit: one statement per batch. Its WITH clause holds one data-modifying
    # sub-statement per kind of write, each over ``unnest`` of array parameters; the main
    # query collects the rows whose expectation failed and calls refuse_batch() for the
    # first (streams, then index entries, then rewrites), which aborts the transaction.
    # All sub-statements see the state before the statement (one snapshot) and none sees
    # another's writes: expectations are checked against the state before the batch, and
    # a rewrite cannot touch an event the batch appends. The keys of the index
    # sub-statements are disjoint (each key is in exactly one). A sub-statement the main
    # query does not read (the upsert, the event insert) runs after it: a failed check
    # is reported before a unique violation of a stale append could be.

    def refuse(self, code: str) -> str:
        return f"SELECT {self.q}.refuse_batch('{code}', %s)"

    def batch(self, shape: _Shape) -> str:
        return _batch_sql(self.q, shape, self.notify)

    def migration(self) -> dict[int, Step]:
        def fill(step: Step) -> Step:
            if isinstance(step, tuple):
                return tuple(s.replace("{s}", self.q) for s in step)
            if step is _thread_heads:  # a Python step that names the schema's tables
                return functools.partial(_thread_heads, q=self.q)
            return step

        return {v: fill(step) for v, step in sorted(MIGRATIONS.items())}


class _Shape(NamedTuple):
    """Which parts a batch statement has."""

    appends: bool = False
    events: bool = False
    updates: bool = False
    inserts: bool = False
    upserts: bool = False
    deletes: bool = False
    rewrites: bool = False
    head_updates: bool = False
    head_inserts: bool = False


_CONFLICT_CODE: Final = f"'{_REFUSED_CONFLICT}'::text"
_INVALID_CODE: Final = f"'{_REFUSED_INVALID}'::text"


@functools.lru_cache(maxsize=256)
def _batch_sql(q: str, shape: _Shape, notify: bool = True) -> str:
    """The statement of a batch of ``shape``; its parameters, in order, are the arrays
    :func:`_plan` lists for each part present (see there)."""
    ctes: list[str] = []
    fails: list[str] = []
    if shape.appends:
        ctes.append(
            "a AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[]) "
            "WITH ORDINALITY AS a(stream, expected, label, i))"
        )
        fails.append(
            f"SELECT 1 AS prio, a.i, {_CONFLICT_CODE} AS code, 'stream ' || a.label || "
            f"' is at version ' || v.seq || ', expected ' || a.expected AS message FROM a "
            f"CROSS JOIN LATERAL (SELECT coalesce(max(e.seq), 0) AS seq FROM {q}.events AS e "
            f"WHERE e.stream = a.stream) AS v WHERE v.seq <> a.expected"
        )
    now = f"(SELECT k.version FROM {q}.kv AS k WHERE k.ns = w.ns AND k.key = w.key)"
    if shape.updates:
        # In READ COMMITTED the UPDATE waits for a row another transaction is changing
        # and re-checks ``version = expected`` on its newest version: a compare-and-set.
        ctes.append(
            "uw AS (SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bigint[], "
            "%s::bytea[], %s::text[]) WITH ORDINALITY AS w(ns, key, expected, n, value, label, i))"
        )
        ctes.append(
            f"u AS (UPDATE {q}.kv AS k SET version = k.version + uw.n, value = uw.value "
            f"FROM uw WHERE k.ns = uw.ns AND k.key = uw.key AND k.version = uw.expected "
            f"RETURNING k.ns, k.key)"
        )
        fails.append(
            f"SELECT 2, w.i, {_CONFLICT_CODE}, w.label || CASE "
            f"WHEN {now} IS NULL THEN ' does not exist' "
            f"WHEN {now} <> w.expected THEN ' is at version ' || {now} "
            f"ELSE ' was changed by a concurrent writer' END || ', expected ' || w.expected "
            f"FROM uw AS w "
            f"WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.ns = w.ns AND u.key = w.key)"
        )
    if shape.inserts:
        # ON CONFLICT DO NOTHING waits for a concurrent insert of the same key and skips
        # the row if that one commits: the key then counts as existing.
        ctes.append(
            "iw AS (SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bytea[], "
            "%s::text[]) WITH ORDINALITY AS w(ns, key, n, value, label, i))"
        )
        ctes.append(
            f"ins AS (INSERT INTO {q}.kv (ns, key, version, value) "
            f"SELECT ns, key, n, value FROM iw ON CONFLICT (ns, key, tenant) DO NOTHING "
            f"RETURNING ns, key)"
        )
        fails.append(
            f"SELECT 2, w.i, {_CONFLICT_CODE}, w.label || ' already exists' || "
            f"coalesce(' (version ' || {now} || ')', ' (written concurrently)') FROM iw AS w "
            f"WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.ns = w.ns AND ins.key = w.key)"
        )
    if shape.upserts:
        ctes.append(
            f"up AS (INSERT INTO {q}.kv AS k (ns, key, version, value) "
            f"SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::bytea[]) "
            f"ON CONFLICT (ns, key, tenant) DO UPDATE "
            f"SET version = k.version + excluded.version, value = excluded.value "
            f"RETURNING k.ns)"
        )
    if shape.deletes:
        # The DELETE returns the version each row had (its newest, after waiting for a
        # concurrent writer); expected is checked against it (-1: ANY, 0: ABSENT).
        ctes.append(
            "dw AS (SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[], %s::text[]) "
            "WITH ORDINALITY AS w(ns, key, expected, label, i))"
        )
        ctes.append(
            f"d AS (DELETE FROM {q}.kv AS k USING dw WHERE k.ns = dw.ns AND k.key = dw.key "
            f"RETURNING k.ns, k.key, k.version)"
        )
        fails.append(
            f"SELECT 2, w.i, {_CONFLICT_CODE}, w.label || CASE "
            f"WHEN d.version IS NULL THEN ' does not exist, expected version ' || w.expected "
            f"WHEN w.expected = 0 THEN ' already exists (version ' || d.version || ')' "
            f"ELSE ' is at version ' || d.version || ', expected ' || w.expected END "
            f"FROM dw AS w LEFT JOIN d ON d.ns = w.ns AND d.key = w.key "
            f"WHERE w.expected <> -1 AND CASE WHEN w.expected = 0 THEN d.version IS NOT NULL "
            f"ELSE d.version IS DISTINCT FROM w.expected END"
        )
    if shape.rewrites:
        ctes.append(
            "rw AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bytea[], %s::text[]) "
            "WITH ORDINALITY AS r(stream, seq, data, label, i))"
        )
        ctes.append(
            f"r AS (UPDATE {q}.events AS e SET data = rw.data FROM rw "
            f"WHERE e.stream = rw.stream AND e.seq = rw.seq RETURNING e.stream, e.seq)"
        )
        fails.append(
            f"SELECT 3, w.i, {_INVALID_CODE}, 'cannot rewrite missing event ' || w.label || "
            f"'#' || w.seq FROM rw AS w "
            f"WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.stream = w.stream AND r.seq = w.seq)"
        )
    heads = (
        "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], "
        "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
        "%s::bytea[], %s::text[]"
    )
    head_columns = (
        "tenant, thread_id, expected, customer_id, status, last_seq, last_activity, "
        "last_channel, topic, channels, snoozed_until, controller, created_at, state, label, i"
    )
    if shape.head_updates:
        # A compare-and-set, as for index entries: the UPDATE waits for a concurrent
        # writer of the row and re-checks the version on its newest version.
        ctes.append(f"hw AS (SELECT * FROM unnest({heads}) WITH ORDINALITY AS w({head_columns}))")
        ctes.append(
            f"hu AS (UPDATE {q}.thread_heads AS h SET customer_id = w.customer_id, "
            f"status = w.status, last_seq = w.last_seq, "
            f"last_activity = w.last_activity::timestamptz, last_channel = w.last_channel, "
            f"topic = w.topic, channels = string_to_array(w.channels, chr(31)), "
            f"snoozed_until = w.snoozed_until::timestamptz, controller = w.controller, "
            f"created_at = w.created_at::timestamptz, state = w.state, version = h.version + 1 "
            f"FROM hw AS w WHERE h.tenant = w.tenant AND h.thread_id = w.thread_id "
            f"AND h.version = w.expected RETURNING h.tenant, h.thread_id)"
        )
        fails.append(
            f"SELECT 2, w.i, {_CONFLICT_CODE}, w.label || ' is not at version ' || w.expected "
            f"|| ' (changed by another writer, or missing)' FROM hw AS w WHERE NOT EXISTS "
            f"(SELECT 1 FROM hu WHERE hu.tenant = w.tenant AND hu.thread_id = w.thread_id)"
        )
    if shape.head_inserts:
        # ON CONFLICT DO NOTHING waits for a concurrent insert of the same head: one wins.
        ctes.append(f"hiw AS (SELECT * FROM unnest({heads}) WITH ORDINALITY AS w({head_columns}))")
        ctes.append(
            f"hi AS (INSERT INTO {q}.thread_heads (tenant, thread_id, customer_id, status, "
            f"last_seq, last_activity, last_channel, topic, channels, snoozed_until, "
            f"controller, created_at, state, version) SELECT tenant, thread_id, customer_id, "
            f"status, last_seq, last_activity::timestamptz, last_channel, topic, "
            f"string_to_array(channels, chr(31)), snoozed_until::timestamptz, controller, "
            f"created_at::timestamptz, state, 1 FROM hiw "
            f"ON CONFLICT (tenant, thread_id) DO NOTHING RETURNING tenant, thread_id)"
        )
        fails.append(
            f"SELECT 2, w.i, {_CONFLICT_CODE}, w.label || ' already exists' FROM hiw AS w "
            f"WHERE NOT EXISTS "
            f"(SELECT 1 FROM hi WHERE hi.tenant = w.tenant AND hi.thread_id = w.thread_id)"
        )
    if shape.events:
        # Positions in commit order. A sequence alone hands out numbers in the order
        # writers ask, not the order they commit: with two writers, A takes 10, B takes
        # 11 and commits, a reader sees 11, then A commits 10 behind it. So a writer
        # takes a transaction-level advisory lock (one per schema) just before its
        # first nextval(), and keeps it until its transaction has ended: PostgreSQL
        # makes a commit visible before it releases the committer's locks. Between
        # the lock and the commit no other writer can take a position, so every
        # position a later commit takes is greater, and a reader that has seen
        # position p has seen every committed position below it except ones that
        # will never commit. (As eventsourcing's LOCK TABLE ... IN EXCLUSIVE MODE, but
        # readers and index writers are not blocked, and one statement still does it.)
        # The lock is taken after the batch's other writes are done (lk reads all
        # their rows, in a one-time filter evaluated before the lock call), so a writer
        # holding it waits for no row lock; and only if every check passed (the main
        # query, which refuses a failed batch, runs before an unreferenced
        # data-modifying WITH query such as ev), so a refused batch serializes nothing.
        done = [f"(SELECT count(*) FROM {name})" for name in _written(shape)]
        after = f" WHERE {' + '.join(done)} >= 0" if done else ""
        # The same one-time query queues a notification for feed watchers (LISTEN):
        # PostgreSQL delivers it only when, and if, this transaction commits, and only
        # once however many rows the statement writes. It is a wake-up hint; readers
        # read positions, never the notification's payload.
        told = f", pg_notify('{feed_channel(q.strip(chr(34)))}', '') AS told" if notify else ""
        ctes.append(
            f"lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtext({_position_lock(q)}))"
            f" AS held{told}{after})"
        )
        ctes.append(
            f"ev AS (INSERT INTO {q}.events (stream, seq, data) "
            f"SELECT e.* FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS e CROSS JOIN lk)"
        )
    if fails:
        # The LIMIT in a subquery: refuse_batch() runs for the first failure only.
        main = (
            f"SELECT {q}.refuse_batch(f.code, f.message) FROM ("
            + " UNION ALL ".join(fails)
            + " ORDER BY 1, 2 LIMIT 1) AS f(prio, i, code, message)"
        )
    else:
        main = "SELECT 1 WHERE false"
    return ("WITH " + ", ".join(ctes) + " " if ctes else "") + main


def _written(shape: _Shape) -> list[str]:
    """The data-modifying WITH queries of a batch other than the event insert."""
    names = [("updates", "u"), ("inserts", "ins"), ("upserts", "up"), ("deletes", "d")]
    out = [name for part, name in names if getattr(shape, part)]
    return [*out, "r"] if shape.rewrites else out


def feed_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema's commits wake feed watchers."""
    return f"convthread_feed_{schema}"[:63]


def _position_lock(q: str) -> str:
    """The key text of a schema's position lock, as an SQL literal (``q`` is quoted)."""
    return "'convthread:positions:" + q.strip('"') + "'"


# --------------------------------------------------------------------------- batch plan


@dataclass(frozen=True)
class _Step:
    sql: str
    params: tuple[Any, ...]
    #: takes locks and is followed by the batch (see _waits): its failure skips the batch
    waits: bool = False


def _plan(sql: _Sql, batch: Batch) -> list[_Step]:
    """The statement(s) of a batch: one, checking every expectation on the server
    (see :meth:`_Sql.batch`); two for a batch that is wrong on its face (a stream
    appended to twice, a key expected at two versions), whose second one refuses it
    once the stream versions have been checked (the reference store's order)."""
    params: list[Any] = []
    if batch.appends:
        streams = [a.stream for a in batch.appends]
        params += _columns(
            [(a.stream, a.expected, _label(repr(a.stream))) for a in batch.appends],
            _APPEND_COLUMNS,
        )
        if len(set(streams)) != len(streams):
            msg = "a batch may append to each stream at most once"
            return [
                _Step(sql.batch(_Shape(appends=True)), tuple(params)),
                _Step(sql.refuse(_REFUSED_INVALID), (msg,)),
            ]

    head_slots = [(hw.head.tenant, hw.head.thread_id) for hw in batch.heads]
    bad = None
    if len(set(head_slots)) != len(head_slots):
        bad = "a batch may write each thread's head at most once"
    elif any(hw.expected < 0 for hw in batch.heads):
        bad = "a head write expects ABSENT or a version, not ANY"
    if bad is not None:
        refuse_invalid = _Step(sql.refuse(_REFUSED_INVALID), (bad,))
        if not batch.appends:
            return [refuse_invalid]
        return [_Step(sql.batch(_Shape(appends=True)), tuple(params)), refuse_invalid]

    # Index entries: group the operations on each key (all checked against the state
    # before the batch; puts apply before deletes).
    groups: dict[tuple[str, str], _KeyOps] = {}
    try:
        for put in batch.puts:
            slot = (put.ns, put.key)
            g = groups.get(slot)
            if g is None:
                groups[slot] = _KeyOps(put.expected, 1, put.value, False)
            else:
                g.expect(slot, put.expected)
                g.puts += 1
                g.value = put.value
        for delete in batch.deletes:
            slot = (delete.ns, delete.key)
            g = groups.get(slot)
            if g is None:
                groups[slot] = _KeyOps(delete.expected, 0, b"", True)
            else:
                g.expect(slot, delete.expected)
                g.deleted = True
    except ConflictError as exc:
        refuse = _Step(sql.refuse(_REFUSED_CONFLICT), (_label(str(exc)),))
        if not batch.appends:
            return [refuse]
        return [_Step(sql.batch(_Shape(appends=True)), tuple(params)), refuse]

    # One row per key, in the parameters' order (see _batch_sql).
    updates: list[tuple[Any, ...]] = []
    inserts: list[tuple[Any, ...]] = []
    upserts: list[tuple[Any, ...]] = []
    deletes: list[tuple[Any, ...]] = []
    for (ns, key), g in groups.items():
        if g.deleted:
            deletes.append((ns, _enc(key), g.expected, _label(f"{ns}/{key}")))
        elif g.expected > 0:
            label = _label(f"{ns}/{key}")
            updates.append((ns, _enc(key), g.expected, g.puts, g.value, label))
        elif g.expected == ABSENT:
            inserts.append((ns, _enc(key), g.puts, g.value, _label(f"{ns}/{key}")))
        elif g.expected == ANY:
            upserts.append((ns, _enc(key), g.puts, g.value))
    params += _columns(updates, _UPDATE_COLUMNS)
    params += _columns(inserts, _INSERT_COLUMNS)
    params += _columns(upserts, _UPSERT_COLUMNS)
    params += _columns(deletes, _DELETE_COLUMNS)
    last: dict[tuple[str, int], bytes] = {}
    for rw in batch.rewrites:
        last[(rw.stream, rw.seq)] = rw.data
    params += _columns(
        [(s, q, data, _label(repr(s))) for (s, q), data in last.items()], _REWRITE_COLUMNS
    )
    head_updates = [_head_row(hw.head, hw.expected) for hw in batch.heads if hw.expected > 0]
    head_inserts = [_head_row(hw.head, 0) for hw in batch.heads if hw.expected == ABSENT]
    params += _columns(head_updates, _HEAD_COLUMNS)
    params += _columns(head_inserts, _HEAD_COLUMNS)
    events = [
        (a.stream, a.expected + i, data)
        for a in batch.appends
        for i, data in enumerate(a.events, start=1)
    ]
    params += _columns(events, _EVENT_COLUMNS)
    shape = _Shape(
        appends=bool(batch.appends),
        events=bool(events),
        updates=bool(updates),
        inserts=bool(inserts),
        upserts=bool(upserts),
        deletes=bool(deletes),
        rewrites=bool(last),
        head_updates=bool(head_updates),
        head_inserts=bool(head_inserts),
    )
    return [*_waits(sql, batch), _Step(sql.batch(shape), tuple(params))]


# The array parameters of each part of a batch statement, in order (see _batch_sql).
_APPEND_COLUMNS: Final = (_Text, _Int8, _Text)  # stream, expected, label
_UPDATE_COLUMNS: Final = (_Text, _Bytes, _Int8, _Int8, _Bytes, _Text)  # ns, key, expected,
# puts, value, label
_INSERT_COLUMNS: Final = (_Text, _Bytes, _Int8, _Bytes, _Text)  # ns, key, puts, value, label
_UPSERT_COLUMNS: Final = (_Text, _Bytes, _Int8, _Bytes)  # ns, key, puts, value
_DELETE_COLUMNS: Final = (_Text, _Bytes, _Int8, _Text)  # ns, key, expected, label
_REWRITE_COLUMNS: Final = (_Text, _Int8, _Bytes, _Text)  # stream, seq, data, label
_EVENT_COLUMNS: Final = (_Text, _Int8, _Bytes)  # stream, seq, data
# tenant, thread_id, expected, customer_id, status, last_seq, last_activity, last_channel,
# topic, channels (joined by chr(31)), snoozed_until, controller, created_at, state, label
_HEAD_COLUMNS: Final = (
    _Text,
    _Text,
    _Int8,
    _Text,
    _Text,
    _Int8,
    _Text,
    _Text,
    _NText,
    _Text,
    _NText,
    _NText,
    _Text,
    _Bytes,
    _Text,
)
_HEAD_SELECT: Final = (
    "h.tenant, h.thread_id, h.customer_id, h.status, h.last_seq, h.last_activity, "
    "h.last_channel, h.topic, h.channels, h.snoozed_until, h.controller, h.created_at, "
    "h.state, h.version"
)
_SEP: Final = chr(31)  # joins a head's channels in a batch parameter (ids never hold it)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _head_row(head: ThreadHead, expected: int) -> tuple[Any, ...]:
    """A head as one row of a batch statement's head arrays (see _HEAD_COLUMNS)."""
    until = head.snoozed_until
    return (
        head.tenant,
        head.thread_id,
        expected,
        head.customer_id,
        head.status,
        head.last_seq,
        _iso(head.last_activity),
        head.last_channel,
        head.topic,
        _SEP.join(head.channels),
        None if until is None else _iso(until),
        head.controller,
        _iso(head.created_at),
        head.state,
        _label(f"thread head {head.tenant}/{head.thread_id}"),
    )


def _head_values(head: ThreadHead) -> tuple[Any, ...]:
    """A head's columns for a plain INSERT (migration step 3), version excluded."""
    return (
        head.tenant,
        head.thread_id,
        head.customer_id,
        head.status,
        head.last_seq,
        head.last_activity,
        head.last_channel,
        head.topic,
        list(head.channels),
        head.snoozed_until,
        head.controller,
        head.created_at,
        head.state,
    )


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def _head(row: tuple[Any, ...]) -> ThreadHead:
    until = row[9]
    return ThreadHead(
        tenant=row[0],
        thread_id=row[1],
        customer_id=row[2],
        status=row[3],
        last_seq=int(row[4]),
        last_activity=_utc(row[5]),
        last_channel=row[6],
        topic=row[7],
        channels=tuple(row[8]),
        snoozed_until=None if until is None else _utc(until),
        controller=row[10],
        created_at=_utc(row[11]),
        state=bytes(row[12]),
        version=int(row[13]),
    )


def _columns(rows: list[tuple[Any, ...]], kinds: tuple[type[list[Any]], ...]) -> list[Any]:
    """The array parameters of ``rows`` (none for no rows): column i as ``kinds[i]``."""
    return (
        [kind(column) for kind, column in zip(kinds, zip(*rows, strict=True), strict=True)]
        if rows
        else []
    )


class _KeyOps:
    """What one batch does to one key."""

    __slots__ = ("deleted", "expected", "puts", "value")

    def __init__(self, expected: int, puts: int, value: bytes, deleted: bool) -> None:
        self.expected = expected
        self.puts = puts
        self.value = value
        self.deleted = deleted

    def expect(self, slot: tuple[str, str], expected: int) -> None:
        if expected == ANY or expected == self.expected:
            return
        if self.expected != ANY:
            raise ConflictError(
                f"{slot[0]}/{slot[1]} is expected at two different versions in one batch "
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
        if state == _REFUSED_CONFLICT:
            return ConflictError(exc.diag.message_primary or str(exc))
        if state == _REFUSED_INVALID:
            return StoreError(exc.diag.message_primary or str(exc))
        if state in _CONFLICT_STATES:
            return ConflictError(f"concurrent write detected during {what}: {exc}")
        if state == "55P03":  # lock_not_available: lock_timeout (inside a hold)
            return StoreUnavailable(f"PostgreSQL {what}: a busy thread stayed held too long: {exc}")
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


def _current_version(conn: psycopg.Connection[Any], sql: _Sql) -> int:
    """The schema version recorded in the schema (0: no schema or table yet)."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{sql.q}.schema_version",)).fetchone()
    if row is None or row[0] is None:
        return 0
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {sql.q}.schema_version").fetchone()
    return int(row[0]) if row else 0


def _where(sql: _Sql) -> str:
    return f"PostgreSQL schema {sql.schema!r}"


def _upgrade(conn: psycopg.Connection[Any], sql: _Sql, progress: MigrationProgress | None) -> None:
    """Apply every pending step on ``conn`` (autocommit), each in a transaction of its
    own that holds the schema's advisory lock, reads the version again and records the
    version it reaches: processes opening one schema at once apply each step once."""
    if _current_version(conn, sql) == SCHEMA_VERSION:
        return  # the common case: no lock, no transaction
    migrations = sql.migration()
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_id(sql.schema),))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.q}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {sql.q}.schema_version ("
                "version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            steps = pending_steps(migrations, _current_version(conn, sql), _where(sql))
            if not steps:
                return
            version, step = steps[0]

            def report(done: int, total: int, version: int = version) -> None:
                if progress is not None:
                    progress(version, done, total)

            if isinstance(step, tuple):
                report(0, len(step))
                for i, statement in enumerate(step, start=1):
                    conn.execute(statement)
                    report(i, len(step))
            else:
                step(conn, report)
            conn.execute(f"INSERT INTO {sql.q}.schema_version (version) VALUES (%s)", (version,))


def schema_status(url: str, *, schema: str = "convthread") -> SchemaStatus:
    """The schema version of PostgreSQL schema ``schema`` at ``url`` (0: none yet) and
    the steps that would bring it to :data:`SCHEMA_VERSION`, without changing anything.
    SchemaError if it is newer than this convthread."""
    sql = _Sql(_check_schema(schema))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return status(MIGRATIONS, _current_version(conn, sql), _where(sql))
    except psycopg.Error as exc:
        raise _translate(exc, "schema status") from exc


def migrate(
    url: str, *, schema: str = "convthread", progress: MigrationProgress | None = None
) -> SchemaStatus:
    """Bring PostgreSQL schema ``schema`` at ``url`` to :data:`SCHEMA_VERSION` (creating
    it if missing), one transaction per step; ``progress(version, done, total)`` is
    called as steps run. Returns the status before the migration."""
    sql = _Sql(_check_schema(schema))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            before = status(MIGRATIONS, _current_version(conn, sql), _where(sql))
            _upgrade(conn, sql, progress)
            return before
    except psycopg.Error as exc:
        raise _translate(exc, "migration") from exc


def _lock_id(schema: str) -> str:
    return f"convthread:{schema}"


# -- holding streams (StreamHold)
#
# Optimistic writers of one busy thread all read version N, one commits N+1 and the rest
# conflict; each retries on fresh reads but races again, now also against writers in
# other processes, so under a burst from many processes some writers lose every round
# and spend their retry budget. A lock taken only at commit would not help: a writer
# whose reads were stale still conflicts after waiting for it. So a retry holds the
# streams its commit conflicted on from its first read to its commit: a session-level
# advisory lock per stream, on a connection of its own, taken in sorted order (holders
# of several streams cannot deadlock) and released when the attempt ends. Retries of one
# thread then queue in the database, in arrival order, and each reads the state its
# predecessor committed; other threads' locks are other keys, so they run in parallel.
# Only a retry takes one (the service's drivers decide). The compare-and-set still
# guards every commit: a hold makes conflicts rare, never correctness depend on it.
#
# A holder must not lose to a first attempt either, which takes no hold: so every commit
# that appends to existing streams first takes each one's key in shared mode, for its
# transaction (_waits: a statement of its own before the batch, in the same pipeline, so
# still one round trip; and since the batch is a later statement, its snapshot is taken
# after the wait and sees what the holder committed). Commits do not exclude each other
# (their compare-and-set decides, as before), but a commit to a held stream waits until
# the hold ends, and then conflicts if the holder wrote: the holder cannot lose to it. A
# holder's own commit runs on the hold's connection (a session's own locks never block
# it). Order and liveness: every session takes stream keys in one order, the streams'
# names sorted (holds by name, commits by name, in array order: unnest emits in order),
# and only then, in the batch statement, the schema's position lock (see _batch_sql),
# after which it takes no lock until its transaction ends; so no two sessions wait for
# each other in a cycle. The one exception is a holder whose commit appends to an
# existing stream it does not hold (its batch changed since the conflict): that key
# comes after the held ones, out of order. Such a cycle, like a hash collision between
# two streams' keys, is between server sessions (the commit waits on the hold's
# connection), so PostgreSQL's deadlock detector breaks it: one transaction fails with
# 40P01, a ConflictError, and retries. PostgreSQL queues lock requests in arrival order
# and a shared request waits behind a queued exclusive one, so commits cannot starve a
# holder, nor holders a commit: each waits at most for the holds queued before it.
#
# The keys are the two-int4 form (schema, stream), a lock space apart from the one-key
# form the migration lock uses. ``lock_timeout`` (the store's timeout) bounds a holder's
# wait.


class _HoldSql(NamedTuple):
    #: sets lock_timeout for the connection, answering the value it had, and takes the
    #: first stream's lock (a target list is evaluated in order)
    first: str
    #: takes another stream's lock
    take: str
    #: releases every lock of the connection and puts lock_timeout back
    release: str


def _hold_sql(schema: str) -> _HoldSql:
    lock = f"pg_advisory_lock(hashtext('{_lock_id(schema)}'), hashtext(%s))"
    return _HoldSql(
        "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, false), " + lock,
        "SELECT " + lock,
        "SELECT pg_advisory_unlock_all(), set_config('lock_timeout', %s, false)",
    )


def _waits(sql: _Sql, batch: Batch) -> list[_Step]:
    """The statement that waits for holds of the existing streams ``batch`` appends to
    (see the notes at ``_hold_sql``); none when it appends to no existing stream."""
    streams = sorted({a.stream for a in batch.appends if a.expected > 0})
    if not streams:
        return []
    return [_Step(_stream_waits_sql(sql.schema), (_Text(streams),), waits=True)]


@functools.lru_cache(maxsize=64)
def _stream_waits_sql(schema: str) -> str:
    return (
        f"SELECT pg_advisory_xact_lock_shared(hashtext('{_lock_id(schema)}'), hashtext(s)) "
        f"FROM unnest(%s::text[]) AS s"
    )


# What the batch statement may raise by design; any other failure of a pipeline that
# begins with waits may have come from the waits, so that the batch was skipped.
_BATCH_STATES: Final = frozenset({_REFUSED_CONFLICT, _REFUSED_INVALID, "23505", "40001"})


def _skipped_batch(steps: list[_Step], exc: psycopg.Error) -> bool:
    """Whether the batch of a failed pipeline may have been skipped after its waits
    failed. psycopg records a statement as prepared when it sends it, so a batch skipped
    at the use that prepares it would fail on that connection ever after ("prepared
    statement does not exist"): such a connection is closed (the pool replaces it)."""
    return steps[0].waits and getattr(exc, "sqlstate", None) not in _BATCH_STATES


def _hold_failed(exc: BaseException) -> BaseException:
    if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available: lock_timeout
        return StoreUnavailable(f"PostgreSQL: a busy thread stayed held too long: {exc}")
    return _translate(exc, "hold")


def _send_sync(conn: psycopg.Connection[Any], steps: list[_Step]) -> None:
    """Run ``steps`` as one transaction in one round trip; raise the first error, not
    "pipeline aborted".

    The statements go in one pipeline with a single Sync at its end. On a connection in
    autocommit mode (the pool's), PostgreSQL runs everything before a Sync as one
    implicit transaction: committed at the Sync if every statement succeeded, rolled
    back as a whole if one failed (later ones are skipped). No BEGIN, COMMIT or ROLLBACK
    is sent.

    A pipeline holds more than one statement when the last one refuses the batch, or
    when the first waits for holds (see _waits). That matters: psycopg prepares a
    statement after five uses and records it as prepared when it *sends* the request, so
    a statement that usually succeeds, skipped at that use because an earlier one failed,
    would fail with "prepared statement does not exist" on that connection from then on.
    A statement that always fails is never prepared (psycopg forgets failed ones), and
    nothing follows it; a connection whose waits failed is closed (_skipped_batch)."""
    first: psycopg.Error | None = None
    try:
        if len(steps) == 1:
            # The common case, one statement: an implicit transaction of its own on an
            # autocommit connection, without the pipeline's client-side cost.
            conn.execute(steps[0].sql, steps[0].params)
        else:
            with conn.pipeline():
                try:
                    for step in steps:
                        conn.execute(step.sql, step.params)
                except psycopg.Error as exc:
                    first = exc
    except psycopg.Error as exc:
        first = first or exc
    if first is None:
        return
    if not conn.closed and _skipped_batch(steps, first):
        conn.close()
    if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")  # a safety net: the implicit transaction is gone
    raise first


async def _send_async(conn: psycopg.AsyncConnection[Any], steps: list[_Step]) -> None:
    first: psycopg.Error | None = None
    try:
        if len(steps) == 1:  # as _send_sync
            await conn.execute(steps[0].sql, steps[0].params)
        else:
            async with conn.pipeline():
                try:
                    for step in steps:
                        await conn.execute(step.sql, step.params)
                except psycopg.Error as exc:
                    first = exc
    except psycopg.Error as exc:
        first = first or exc
    if first is None:
        return
    if not conn.closed and _skipped_batch(steps, first):
        await conn.close()
    if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")  # a safety net: the implicit transaction is gone
    raise first


# --------------------------------------------------------------------------- sync store


class PostgresStore:
    """A :class:`~convthread.ports.Store` in PostgreSQL, over a psycopg connection pool.

    ``url`` is a libpq connection string or URL. ``schema`` names the PostgreSQL schema
    holding the tables (created if missing). ``min_size``/``max_size`` size the pool;
    ``timeout`` is how long a call waits for a free connection. Safe to share between
    threads; open one per process (a pool must not cross ``fork()``). ``notify``: each
    commit that writes events wakes the schema's feed followers (``NOTIFY`` in the same
    statement; see :meth:`watch`); with False, followers find new changes by polling.
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
        notify: bool = True,
    ) -> None:
        self.schema = _check_schema(schema)
        self.scrub_mode = _check_scrub(scrub_mode)
        self._sql = _Sql(self.schema, bool(notify))
        self._url = url
        self._timeout = timeout
        self._closed = False
        self._lock = threading.Lock()
        self._held = threading.local()  # .conn: the connection of this thread's hold
        try:
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
                psycopg_pool.ConnectionPool(
                    url,
                    min_size=min_size,
                    max_size=max(max_size, min_size),
                    timeout=timeout,
                    kwargs={"autocommit": True, "application_name": application_name},
                    configure=_configure,
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
            with self._pool.connection() as conn:
                _upgrade(conn, self._sql, None)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "migration") from exc

    @property
    def schema_version(self) -> int:
        rows = self._query(f'SELECT max(version) FROM "{self.schema}".schema_version', ())
        return int(rows[0][0] or 0)

    def _reading(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        """The connection a read runs on: this thread's hold's, inside one (a holder
        that needed a second connection could wait forever for a pool of holders), else
        one from the pool."""
        held: psycopg.Connection[Any] | None = getattr(self._held, "conn", None)
        return contextlib.nullcontext(held) if held is not None else self._pool.connection()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one read statement; a connection found dead is replaced once. Results
        come in binary format (bytea values need no hex decoding)."""
        self._check_open()
        for attempt in (0, 1):
            try:
                with self._reading() as conn:
                    return conn.execute(sql, args, binary=True).fetchall()
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
        return [Recorded(stream, int(seq), bytes(data), int(pos)) for seq, data, pos in rows]

    def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        """Events by position (:class:`~convthread.ports.FeedReader`). Positions are in
        commit order: see the position lock in the batch statement."""
        rows = self._query(self._sql.read_positions, (after, tenant, max(limit, 0)))
        return [Recorded(st, int(seq), bytes(data), int(pos)) for st, seq, data, pos in rows]

    def last_position(self, tenant: str) -> int:
        rows = self._query(self._sql.last_position, (tenant,))
        return int(rows[0][0]) if rows else 0

    def watch(self) -> _PgWatch:
        """A watch that LISTENs, on a connection of its own, for the notification every
        commit with events sends (:class:`~convthread.ports.FeedWatcher`)."""
        self._check_open()
        try:
            conn = psycopg.connect(self._url, autocommit=True)
            conn.execute(self._sql.listen)
        except psycopg.Error as exc:
            raise _translate(exc, "watch") from exc
        return _PgWatch(conn)

    def version(self, stream: str) -> int:
        return int(self._query(self._sql.version, (stream,))[0][0])

    def get(self, ns: str, key: str) -> Item | None:
        rows = self._query(self._sql.get, (ns, _enc(key)))
        return Item(bytes(rows[0][0]), int(rows[0][1])) if rows else None

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        if not keys:
            return {}
        # One namespace of get_multi's query: a join that looks each key up (a generic
        # plan of ``ns = $1 AND key = ANY($2)`` would scan the whole namespace).
        unique = [(ns, k) for k in dict.fromkeys(keys)]
        rows = self._query(self._sql.get_multi, _multi_args(unique))
        return {unique[i - 1][1]: Item(bytes(v), int(ver)) for i, v, ver in rows}

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The entries that exist among ``keys`` ((namespace, key) pairs), in one query
        (:class:`~convthread.ports.MultiGet`)."""
        self._check_open()
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        rows = self._query(self._sql.get_multi, _multi_args(unique))
        return {unique[i - 1]: Item(bytes(v), int(ver)) for i, v, ver in rows}

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        sql, args = _scan_args(self._sql, ns, prefix, after, limit)
        rows = self._query(sql, args)
        return [(_dec(k), Item(bytes(v), int(ver))) for k, v, ver in rows]

    def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        self._check_open()
        if not thread_ids:
            return {}
        rows = self._query(self._sql.get_heads, (_Text(dict.fromkeys(thread_ids)), tenant))
        return {row[1]: _head(row) for row in rows}

    def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        sql, args = self._sql.find_heads(query)
        return [_head(row) for row in self._query(sql, args)]

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """``get_multi`` and ``get_heads`` in one round trip: both statements in one
        pipeline (:class:`~convthread.ports.MultiGetHeads`)."""
        self._check_open()
        unique = list(dict.fromkeys(keys))
        ids = _Text(dict.fromkeys(thread_ids))
        for attempt in (0, 1):
            try:
                with self._reading() as conn:
                    with conn.pipeline():
                        c1 = conn.execute(self._sql.get_multi, _multi_args(unique), binary=True)
                        c2 = conn.execute(self._sql.get_heads, (ids, tenant), binary=True)
                    kv_rows, head_rows = c1.fetchall(), c2.fetchall()
                return _multi_heads(unique, kv_rows, head_rows)
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

    # ------------------------------------------------------------------ writes

    def commit(self, batch: Batch) -> None:
        self._check_open()
        if batch.is_empty:
            return
        steps = _plan(self._sql, batch)
        if not steps:
            return
        held: psycopg.Connection[Any] | None = getattr(self._held, "conn", None)
        try:
            # Inside this thread's hold, on its connection: the locks are that session's.
            with contextlib.nullcontext(held) if held else self._pool.connection() as conn:
                try:
                    _send_sync(conn, steps)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    if _is_disconnect(exc):
                        self._pool.check()
                    raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "commit") from exc

    def hold(self, streams: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Hold ``streams`` against other holders, in any process, until the context
        ends (:class:`~convthread.ports.StreamHold`; see the notes at ``_hold_sql``)."""
        self._check_open()
        return self._holding(sorted(set(streams))) if streams else contextlib.nullcontext()

    @contextlib.contextmanager
    def _holding(self, streams: list[str]) -> Iterator[None]:
        sql = _hold_sql(self.schema)
        wait = f"{max(1, int(self._timeout * 1000))}ms"
        outer = getattr(self._held, "conn", None)
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(sql.first, (wait, streams[0]))
                row = cur.fetchone()
                before = row[0] if row else "0"
                try:
                    for stream in streams[1:]:
                        conn.execute(sql.take, (stream,))
                    self._held.conn = conn  # this thread's commits run on it
                    yield
                finally:
                    self._held.conn = outer
                    if not conn.closed:  # (a closed one released its locks)
                        conn.execute(sql.release, (before,))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _hold_failed(exc) from exc

    def scrub(self) -> None:
        self._check_open()
        full = "FULL, " if self.scrub_mode == "full" else ""
        try:
            with self._pool.connection() as conn:
                for table in ("events", "kv", "thread_heads"):
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


def _multi_heads(
    unique: list[tuple[str, str]], kv_rows: list[tuple[Any, ...]], head_rows: list[tuple[Any, ...]]
) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
    items = {unique[i - 1]: Item(bytes(v), int(ver)) for i, v, ver in kv_rows}
    return items, {row[1]: _head(row) for row in head_rows}


def _multi_args(keys: list[tuple[str, str]]) -> tuple[Any, ...]:
    return (_Text([ns for ns, _ in keys]), _Bytes([_enc(key) for _, key in keys]))


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


class _PgWatch:
    """A :class:`~convthread.ports.FeedWatch` over a LISTENing connection. A wait takes
    notifications in slices of :attr:`slice` seconds, so a close from another thread
    (which only flags it: a connection is not shared while in use) ends it promptly;
    the waiting thread, or the close when none waits, closes the connection."""

    #: The longest a wait blocks before it looks at the closed flag.
    slice = 0.1

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = False

    def wait(self, timeout: float) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._waiting = True
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            while True:
                left = max(0.0, deadline - time.monotonic())
                got = False
                for _note in self._conn.notifies(timeout=min(left, self.slice), stop_after=1):
                    got = True
                if got:
                    return True
                if self._closed or time.monotonic() >= deadline:
                    return False
        except psycopg.Error as exc:
            raise _translate(exc, "watch") from exc
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._waiting:
                self._conn.close()


class _AsyncPgWatch:
    """The asyncio :class:`~convthread.ports.AsyncFeedWatch` over a LISTENing
    connection: cancelling the waiting task stops a wait."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def wait(self, timeout: float) -> bool:
        if self._conn.closed:
            return False
        got = False
        try:
            # stop_after=1 ends the generator itself (it holds the connection's lock).
            async for _note in self._conn.notifies(timeout=max(timeout, 0.0), stop_after=1):
                got = True
        except psycopg.Error as exc:
            raise _translate(exc, "watch") from exc
        return got

    async def close(self) -> None:
        await self._conn.close()


# --------------------------------------------------------------------------- async store

# The store and connection of the calling task's hold (its commits run on it).
_held_async: ContextVar[tuple[object, psycopg.AsyncConnection[Any]] | None] = ContextVar(
    "convthread_pg_held", default=None
)


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
        notify: bool = True,
    ) -> None:
        self.schema = _check_schema(schema)
        self.scrub_mode = _check_scrub(scrub_mode)
        self._sql = _Sql(self.schema, bool(notify))
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
                    configure=_configure_async,
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
        # Migration steps may be Python functions over a blocking connection: they run
        # in a worker thread, on a connection of their own (the schema's advisory lock
        # keeps them apart from any other process migrating it).
        def run() -> None:
            with psycopg.connect(self._url, autocommit=True) as conn:
                _upgrade(conn, self._sql, None)

        try:
            await asyncio.to_thread(run)
        except psycopg.Error as exc:
            raise _translate(exc, "migration") from exc

    def _reading(
        self, pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    ) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """As :meth:`PostgresStore._reading`, for the calling task's hold."""
        held = _held_async.get()
        if held is not None and held[0] is self:
            return contextlib.nullcontext(held[1])
        return pool.connection()

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        pool = await self._ready()
        for attempt in (0, 1):
            try:
                async with self._reading(pool) as conn:
                    cur = await conn.execute(sql, args, binary=True)
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
        return [Recorded(stream, int(seq), bytes(data), int(pos)) for seq, data, pos in rows]

    async def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        """As :meth:`PostgresStore.read_positions`."""
        rows = await self._query(self._sql.read_positions, (after, tenant, max(limit, 0)))
        return [Recorded(st, int(seq), bytes(data), int(pos)) for st, seq, data, pos in rows]

    async def last_position(self, tenant: str) -> int:
        rows = await self._query(self._sql.last_position, (tenant,))
        return int(rows[0][0]) if rows else 0

    async def watch(self) -> _AsyncPgWatch:
        """As :meth:`PostgresStore.watch` (:class:`~convthread.ports.AsyncFeedWatcher`)."""
        await self._ready()
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            await conn.execute(self._sql.listen)
        except psycopg.Error as exc:
            raise _translate(exc, "watch") from exc
        return _AsyncPgWatch(conn)

    async def version(self, stream: str) -> int:
        return int((await self._query(self._sql.version, (stream,)))[0][0])

    async def get(self, ns: str, key: str) -> Item | None:
        rows = await self._query(self._sql.get, (ns, _enc(key)))
        return Item(bytes(rows[0][0]), int(rows[0][1])) if rows else None

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        if not keys:
            return {}
        unique = [(ns, k) for k in dict.fromkeys(keys)]  # as PostgresStore.get_many
        rows = await self._query(self._sql.get_multi, _multi_args(unique))
        return {unique[i - 1][1]: Item(bytes(v), int(ver)) for i, v, ver in rows}

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The entries that exist among ``keys`` ((namespace, key) pairs), in one query
        (:class:`~convthread.ports.AsyncMultiGet`)."""
        if self._closed:
            raise StoreError("the store is closed")
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        rows = await self._query(self._sql.get_multi, _multi_args(unique))
        return {unique[i - 1]: Item(bytes(v), int(ver)) for i, v, ver in rows}

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        sql, args = _scan_args(self._sql, ns, prefix, after, limit)
        rows = await self._query(sql, args)
        return [(_dec(k), Item(bytes(v), int(ver))) for k, v, ver in rows]

    async def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        if self._closed:
            raise StoreError("the store is closed")
        if not thread_ids:
            return {}
        rows = await self._query(self._sql.get_heads, (_Text(dict.fromkeys(thread_ids)), tenant))
        return {row[1]: _head(row) for row in rows}

    async def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        sql, args = self._sql.find_heads(query)
        return [_head(row) for row in await self._query(sql, args)]

    async def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """As :meth:`PostgresStore.get_multi_heads`: one pipeline, one round trip."""
        pool = await self._ready()
        unique = list(dict.fromkeys(keys))
        ids = _Text(dict.fromkeys(thread_ids))
        for attempt in (0, 1):
            try:
                async with self._reading(pool) as conn:
                    async with conn.pipeline():
                        c1 = await conn.execute(
                            self._sql.get_multi, _multi_args(unique), binary=True
                        )
                        c2 = await conn.execute(self._sql.get_heads, (ids, tenant), binary=True)
                    kv_rows, head_rows = await c1.fetchall(), await c2.fetchall()
                return _multi_heads(unique, kv_rows, head_rows)
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

    async def commit(self, batch: Batch) -> None:
        pool = await self._ready()
        if batch.is_empty:
            return
        steps = _plan(self._sql, batch)
        if not steps:
            return
        held = _held_async.get()
        try:
            # Inside this task's hold, on its connection: the locks are that session's.
            async with (
                contextlib.nullcontext(held[1])
                if held is not None and held[0] is self
                else pool.connection()
            ) as conn:
                try:
                    await _send_async(conn, steps)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    if _is_disconnect(exc):
                        await pool.check()
                    raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "commit") from exc

    def hold(self, streams: Sequence[str]) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``streams`` against other holders, in any process, until the context
        ends (:class:`~convthread.ports.AsyncStreamHold`; as :meth:`PostgresStore.hold`)."""
        return self._holding(sorted(set(streams))) if streams else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def _holding(self, streams: list[str]) -> AsyncIterator[None]:
        pool = await self._ready()
        sql = _hold_sql(self.schema)
        wait = f"{max(1, int(self._timeout * 1000))}ms"
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(sql.first, (wait, streams[0]))
                row = await cur.fetchone()
                before = row[0] if row else "0"
                token = None
                try:
                    for stream in streams[1:]:
                        await conn.execute(sql.take, (stream,))
                    token = _held_async.set((self, conn))  # this task's commits run on it
                    yield
                finally:
                    if token is not None:
                        _held_async.reset(token)
                    if not conn.closed:  # (a closed one released its locks)
                        await conn.execute(sql.release, (before,))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _hold_failed(exc) from exc

    async def scrub(self) -> None:
        pool = await self._ready()
        full = "FULL, " if self.scrub_mode == "full" else ""
        try:
            async with pool.connection() as conn:
                for table in ("events", "kv", "thread_heads"):
                    await conn.execute(f'VACUUM ({full}ANALYZE) "{self.schema}".{table}')
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc, "scrub") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.close()
