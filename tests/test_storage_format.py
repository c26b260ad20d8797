"""The storage format: every record is a format version byte and a positional
MessagePack array; records release 0.1.0 wrote (named maps) read back as the same values."""

from __future__ import annotations

import json
import shutil
import sqlite3
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convthread as ct
import convthread.testing.strategies as cts
from convthread import codec
from convthread.domain.events import CustomerEvent, MessageReceived, ThreadEvent
from convthread.errors import SchemaError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
MIGRATION = Path(__file__).parent / "migration"
THREAD_EVENT_TYPES = typing.get_args(ThreadEvent)
CUSTOMER_EVENT_TYPES = typing.get_args(CustomerEvent)


def _body(record: bytes) -> Any:
    """The record after its version byte, as plain MessagePack values."""
    return msgspec.msgpack.decode(record[1:])


def _as_0_1_0(value: Any) -> bytes:
    """``value`` as release 0.1.0 stored it: a MessagePack map of field names per struct
    (built from the JSON export, which is pinned to the 0.1.0 layout elsewhere)."""
    return msgspec.msgpack.encode(codec.to_builtins(value))


def _check_record(value: Any, decode: Any, tag: str | None) -> None:
    record = codec.encode(value)
    assert record[0] == codec.FORMAT_VERSION == 1
    body = _body(record)
    assert isinstance(body, list)  # positional: no field names at the top level
    if tag is not None:
        assert body[0] == tag
    assert decode(record) == value
    assert decode(_as_0_1_0(value)) == value
    assert len(record) < len(_as_0_1_0(value))


@pytest.mark.parametrize("event_type", THREAD_EVENT_TYPES, ids=lambda t: t.__name__)
@SETTINGS
@given(data=st.data())
def test_every_thread_event_type_round_trips(event_type: type, data: Any) -> None:
    event = data.draw(cts.event_strategy(event_type))
    _check_record(event, codec.decode_event, event_type.__struct_config__.tag)


@pytest.mark.parametrize("event_type", CUSTOMER_EVENT_TYPES, ids=lambda t: t.__name__)
@SETTINGS
@given(data=st.data())
def test_every_customer_event_type_round_trips(event_type: type, data: Any) -> None:
    event = data.draw(cts.event_strategy(event_type))
    _check_record(event, codec.decode_customer_event, event_type.__struct_config__.tag)


@SETTINGS
@given(cts.thread_states())
def test_thread_states_round_trip(state: ct.ThreadState) -> None:
    _check_record(state, codec.decode_thread_state, None)


@SETTINGS
@given(cts.customer_states())
def test_customer_states_round_trip(state: ct.CustomerState) -> None:
    _check_record(state, codec.decode_customer_state, None)


def test_a_message_event_is_an_array_of_values() -> None:
    sender = ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED)
    event = MessageReceived(
        at=T0,
        channel="sms",
        provider_message_id="SM1",
        idempotency_key="sms|SM1",
        fingerprint="f" * 32,
        sender=sender,
        content=ct.Content(text="hello"),
        sent_at=T0,
    )
    record = codec.encode(event)
    for name in ("provider_message_id", "idempotency_key", "identifier", "text", "sent_at"):
        assert name.encode() not in record
    body = _body(record)
    assert body[:6] == ["message_received", T0, "sms", "SM1", "sms|SM1", "f" * 32]
    assert body[6] == [["phone", "+447911123456", ""], "asserted", ""]
    assert body[7] == ["hello", [], {}]
    assert body[8] == T0
    # A record may leave trailing defaults off: the reader fills them in.
    for cut in range(9, len(body) + 1):
        short = bytes([codec.FORMAT_VERSION]) + msgspec.msgpack.encode(body[:cut])
        assert codec.decode_event(short) == event
    assert codec.decode_event(record) == event


@SETTINGS
@given(cts.thread_states())
def test_the_first_byte_tells_the_formats_apart(state: ct.ThreadState) -> None:
    legacy = _as_0_1_0(state)
    assert legacy[0] >= 0x80  # a map; 0.1.0 records never start below 0x80
    assert codec.decode_thread_state(legacy) == state
    newer = bytes([2]) + codec.encode(state)[1:]
    with pytest.raises(SchemaError, match="format 2"):
        codec.decode_thread_state(newer)


@SETTINGS
@given(cts.thread_states())
def test_a_positional_record_ignores_fields_appended_by_a_later_release(
    state: ct.ThreadState,
) -> None:
    body = _body(codec.encode(state))
    fields = len(ct.ThreadState.__struct_fields__)
    extended = body + [None] * (fields - len(body)) + ["a field added later"]
    record = bytes([codec.FORMAT_VERSION]) + msgspec.msgpack.encode(extended)
    assert codec.decode_thread_state(record) == state


class _Order(msgspec.Struct):
    id: str
    lines: list[int]


@SETTINGS
@given(cts.event_strategy(MessageReceived))
def test_user_objects_in_metadata_round_trip_through_the_positional_record(
    event: MessageReceived,
) -> None:
    content = ct.Content(text="hi", metadata={"order": _Order("A-1", [1, 2])})
    event = msgspec.structs.replace(event, content=content)
    again = codec.decode_event(codec.encode(event))
    assert isinstance(again, MessageReceived)
    assert again.content.metadata == {"order": {"id": "A-1", "lines": [1, 2]}}
    assert codec.read_as(again.content.metadata["order"], _Order) == _Order("A-1", [1, 2])
    assert codec.to_builtins(again)["content"]["metadata"] == content.metadata


@SETTINGS
@given(cts.event_strategy(MessageReceived))
def test_json_export_names_the_fields_of_positional_structs(event: MessageReceived) -> None:
    exported = json.loads(codec.to_json(event))
    assert exported["type"] == "message_received"
    assert set(exported["sender"]) >= {"identifier", "trust"}
    assert codec.from_json(codec.to_json(event), ThreadEvent) == event  # type: ignore[arg-type]
    schema = codec.json_schema(ThreadEvent)
    assert schema["$defs"]["Content"]["type"] == "object"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(codec.to_builtins(value)))


@pytest.fixture
def release_0_1_0(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    source = MIGRATION / "release-0.1.0.db"
    if not source.exists():
        pytest.fail(f"{source} is missing: the 0.1.0 database is part of the test data")
    db = tmp_path / "release-0.1.0.db"
    shutil.copy(source, db)
    expected = json.loads((MIGRATION / "release-0.1.0.json").read_text())
    return db, expected


def test_a_database_written_by_release_0_1_0_reads_back_the_same(
    release_0_1_0: tuple[Path, dict[str, Any]],
) -> None:
    db, expected = release_0_1_0
    with sqlite3.connect(db) as raw:
        firsts = {bytes(v[:1]) for (v,) in raw.execute("SELECT data FROM events")}
    assert firsts and all(b[0] >= 0x80 for b in firsts)  # every event a 0.1.0 map
    convs = ct.Conversations(f"sqlite:///{db}")
    try:
        for thread_id, thread in expected["threads"].items():
            assert _plain(convs.thread_state(thread_id)) == thread["state"]
            assert [_plain(e) for e in convs.events(thread_id)] == thread["events"]
        for customer_id, customer in expected["customers"].items():
            assert _plain(convs.customer(customer_id)) == customer
        first = next(iter(expected["threads"]))
        assert _plain(convs.snapshot(first, audience="agent")) == expected["snapshot"]
    finally:
        convs.close()


def test_a_0_1_0_thread_continues_in_the_new_format(
    release_0_1_0: tuple[Path, dict[str, Any]],
) -> None:
    db, expected = release_0_1_0
    thread_id, state = next(
        (tid, t["state"])
        for tid, t in expected["threads"].items()
        if t["state"]["status"] == "open"
    )
    convs = ct.Conversations(f"sqlite:///{db}")
    try:
        before = convs.events(thread_id)
        done = convs.resolve(thread_id, by="agent:kim", reason="sorted")
        assert done is not None
        after = convs.events(thread_id)
        assert after[: len(before)] == before
        assert len(after) == len(before) + 1
        assert convs.thread_state(thread_id).status.value == "resolved"
        assert convs.thread_state(thread_id).customer_id == state["customer_id"]
    finally:
        convs.close()
    with sqlite3.connect(db) as raw:
        (newest,) = raw.execute(
            "SELECT data FROM events WHERE stream = ? ORDER BY seq DESC LIMIT 1", (thread_id,)
        ).fetchone()
    assert bytes(newest)[0] == codec.FORMAT_VERSION
