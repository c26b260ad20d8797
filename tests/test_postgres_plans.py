"""The PostgreSQL store's reads stay lookups as the tables grow.

The store's connections plan each statement once, for any parameters
(``plan_cache_mode = force_generic_plan``). A generic plan that reads a whole namespace
or stream is fast on a small table and slow on a large one, so it would pass every
functional test and hurt only in production: here every read statement the store sends
is prepared on one of its own connections and its generic plan is checked to reach rows
through the primary key, bounded by the key (or the stream and sequence), never by the
namespace alone and never by a sequential scan.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

import convthread as ct

from .conftest import POSTGRES_URL, require_postgres

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store() -> Iterator[object]:
    require_postgres()
    from convthread.stores.postgres import PostgresStore

    pg = PostgresStore(POSTGRES_URL, schema=f"plans_{uuid.uuid4().hex[:10]}")
    with pg._pool.connection() as conn:  # no statistics but those of a new store
        for table in ("kv", "events"):
            conn.execute(f'ALTER TABLE "{pg.schema}".{table} SET (autovacuum_enabled = false)')
    convs = ct.Conversations(pg, clock=ct.ManualClock(T0))
    for i in range(600):  # enough rows that a scan and a lookup plan differently
        convs.ingest(
            ct.Inbound(
                channel="sms",
                provider_message_id=f"m{i}",
                sender=(ct.SenderIdentifier(ct.phone(f"+1415555{i % 60:04d}"), ct.Trust.ASSERTED),),
                content=ct.Content(text=f"hello {i}"),
                sent_at=T0 + timedelta(seconds=i),
            )
        )
    # No ANALYZE: a store's connections plan their statements while its tables are new
    # and small, and keep those plans as the tables grow.
    yield pg
    pg.drop_schema()
    pg.close()


def _numbered(sql: str) -> str:
    """psycopg's %s placeholders as PostgreSQL's $1, $2, ..."""
    count = iter(range(1, 1000))
    return re.sub(r"%s", lambda _m: f"${next(count)}", sql)


def generic_plan(store: object, sql: str, args: str) -> str:
    """The plan the store's connection runs ``sql`` with, for ``args`` (SQL literals)."""
    with store._pool.connection() as conn:  # type: ignore[attr-defined]
        name = f"p_{uuid.uuid4().hex[:8]}"
        conn.execute(f"PREPARE {name} AS {_numbered(sql)}")
        try:
            rows = conn.execute(f"EXPLAIN EXECUTE {name}({args})").fetchall()
        finally:
            conn.execute(f"DEALLOCATE {name}")
    return "\n".join(r[0] for r in rows)


KV_ARRAYS = "ARRAY['msg', 'ident']::text[], ARRAY['\\x01'::bytea, '\\x02'::bytea]"


def is_lookup(plan: str) -> bool:
    """Rows reached through an index, bounded by key (or stream and sequence)."""
    conditions = re.findall(r"Index Cond: (.*)", plan)
    if "Seq Scan" in plan or not conditions:
        return False
    for cond in conditions:
        if "ns =" in cond and "key" not in cond:
            return False  # the namespace alone: a scan of all its keys
        if not ("key" in cond or "seq" in cond or "stream" in cond):
            return False
    return True


@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("get", "'msg', '\\x01'::bytea"),
        ("get_multi", KV_ARRAYS),
        ("read", "'th_1', 0"),
        ("version", "'th_1'"),
        ("scan", "'msg', '\\x01'::bytea, '\\x02'::bytea, 10"),
    ],
)
def test_every_read_is_a_lookup_by_key_in_its_generic_plan(
    store: object, what: str, args: str
) -> None:
    sql_of = store._sql  # type: ignore[attr-defined]
    sql = sql_of.scan(False, True) if what == "scan" else getattr(sql_of, what)
    plan = generic_plan(store, sql, args)
    assert is_lookup(plan), plan


def test_the_check_catches_a_read_of_a_whole_namespace(store: object) -> None:
    """The form get_many had: its generic plan reads every key of the namespace."""
    schema = store.schema  # type: ignore[attr-defined]
    sql = f'SELECT key, value FROM "{schema}".kv WHERE ns = %s AND key = ANY(%s::bytea[])'
    plan = generic_plan(store, sql, "'msg', ARRAY['\\x01'::bytea]")
    assert not is_lookup(plan), plan


def test_get_many_answers_through_the_same_lookups(store: object) -> None:
    """get_many runs get_multi's statement (its own ``key = ANY(...)`` form was planned
    as a scan of the whole namespace)."""
    got = store.get_many("msg", ["sms|m1", "sms|m2", "sms|missing"])  # type: ignore[attr-defined]
    assert sorted(got) == ["sms|m1", "sms|m2"]


def test_head_reads_use_the_head_indexes(store: object) -> None:
    """get_heads looks each id up by primary key; the thread queries use an index of
    thread_heads (no sequential scan), whatever the table's size at planning time. (A
    channel filter may use the GIN index on channels; the planner picks it only when it
    expects the channel to be selective, which it cannot know of a new table.)"""
    from convthread.ports import HeadQuery

    sql_of = store._sql  # type: ignore[attr-defined]
    plan = generic_plan(store, sql_of.get_heads, "ARRAY['th_1']::text[], ''")
    assert "Seq Scan" not in plan and "thread_heads_pkey" in plan, plan
    for query, index in [
        (HeadQuery(statuses=("open",), limit=10), "thread_heads_activity"),
        (HeadQuery(customer_id="cu_1", limit=10), "thread_heads_customer"),
        (HeadQuery(controller="agent:ann", limit=10), "thread_heads_controller"),
    ]:
        sql, args = sql_of.find_heads(query)
        literals = ", ".join(_literal(a) for a in args)
        plan = generic_plan(store, sql, literals)
        assert "Seq Scan" not in plan and index in plan, (query, plan)


def _literal(value: object) -> str:
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
