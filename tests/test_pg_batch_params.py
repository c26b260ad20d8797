"""The PostgreSQL store's array parameters and error labels.

Every batch statement takes its rows as binary arrays written by the store's own
dumpers: what the server reads back must be exactly the values given, for any text,
bytes and bigint (empty arrays, NUL bytes, non-ASCII text, the bigint bounds). Labels
(the names in the server's error messages) must be safe text whatever the key holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .conftest import POSTGRES_URL, require_postgres

psycopg = pytest.importorskip("psycopg")

from convthread.stores import postgres as pg  # noqa: E402


def reference_label(text: str) -> str:
    """What a label is: UTF-8 with lone surrogates backslash-escaped, NUL spelled out."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


@given(st.text(st.characters(codec=None, blacklist_categories=())))
def test_labels_escape_what_text_parameters_cannot_hold(text: str) -> None:
    assert pg._label(text) == reference_label(text)
    assert pg._label(repr(text)) == repr(text)  # stream labels: repr escapes it all


@pytest.mark.parametrize("text", ["", "a/b", "a\x00b", "é/ü", "\ud800x", "😀\x00\udfff"])
def test_labels_of_odd_keys(text: str) -> None:
    assert pg._label(text) == reference_label(text)


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    require_postgres()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as c:
        pg._register_arrays(c.adapters)
        yield c


TEXTS = [[], ["a"], ["", "é", "x" * 5000, "a|b", "日本"], [f"k{i}" for i in range(700)]]
BYTES = [
    [],
    [b""],
    [b"\x00\xff", b"abc" * 999, bytes(range(256))],
    [b"v%d" % i for i in range(700)],
]
INTS = [[], [0], [-1, 1, 2**63 - 1, -(2**63)], list(range(-350, 350))]


@pytest.mark.parametrize("values", TEXTS)
def test_text_arrays_arrive_as_given(conn: Any, values: list[str]) -> None:
    row = conn.execute("SELECT %s::text[]", (pg._Text(values),), binary=True).fetchone()
    assert row[0] == values


@pytest.mark.parametrize("values", BYTES)
def test_bytea_arrays_arrive_as_given(conn: Any, values: list[bytes]) -> None:
    row = conn.execute("SELECT %s::bytea[]", (pg._Bytes(values),), binary=True).fetchone()
    assert row[0] == values


@pytest.mark.parametrize("values", INTS)
def test_bigint_arrays_arrive_as_given(conn: Any, values: list[int]) -> None:
    row = conn.execute("SELECT %s::bigint[]", (pg._Int8(values),), binary=True).fetchone()
    assert row[0] == values


def test_arrays_unnest_row_by_row(conn: Any) -> None:
    """The batch statement's way of reading them: unnest, with the row's position."""
    rows = conn.execute(
        "SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[]) WITH ORDINALITY",
        (pg._Text(["a", "b"]), pg._Bytes([b"x", b""]), pg._Int8([7, -7])),
    ).fetchall()
    assert rows == [("a", b"x", 7, 1), ("b", b"", -7, 2)]
