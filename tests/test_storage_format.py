"""The storage format: every record is a format version byte and a positional
MessagePack array; records release 0.1.0 wrote (named maps) read back as the same values."""

from __future__ import annotations

import enum
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
from convthread.domain.events import (
    CustomerEvent,
    MessageReceived,
    PointerChange,
    SuspendedThread,
    ThreadEvent,
)
from convthread.domain.handoff import HandoffRecord
from convthread.errors import SchemaError
from convthread.service._core import IdentRef, MsgRef
from convthread.service._identity._records import MergeRef
from convthread.service._tokens import TokenRecord

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
MIGRATION = Path(__file__).parent / "migration"
THREAD_EVENT_TYPES = typing.get_args(ThreadEvent)
CUSTOMER_EVENT_TYPES = typing.get_args(CustomerEvent)


def _body(record: bytes) -> Any:
    """The record after its version byte, as plain MessagePack values."""
    return msgspec.msgpack.decode(record[1:])


#: Structs release 0.1.0 already stored as arrays.
_ARRAYS_IN_0_1_0 = (PointerChange, SuspendedThread, MsgRef, IdentRef, MergeRef)


def _layout_0_1_0(value: Any) -> Any:
    if isinstance(value, _ARRAYS_IN_0_1_0):
        return [_layout_0_1_0(v) for v in msgspec.structs.astuple(value)]
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        out: dict[str, Any] = {} if config.tag_field is None else {config.tag_field: config.tag}
        for f in msgspec.structs.fields(value):
            out[f.encode_name] = _layout_0_1_0(getattr(value, f.name))
        return out
    if isinstance(value, list | tuple):
        return [_layout_0_1_0(v) for v in value]
    if isinstance(value, dict):
        return {k: _layout_0_1_0(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _as_0_1_0(value: Any) -> bytes:
    """``value`` as release 0.1.0 stored it: a MessagePack map of field names per struct."""
    return msgspec.msgpack.encode(_layout_0_1_0(value))


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
    # (decisions aside: export renders their reasons, so those need not read back equal)
    event = msgspec.structs.replace(event, decision=None, resolution=None)
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


#: The index namespaces of the 0.1.0 database that hold records, and their types.
_RECORDS_0_1_0: dict[str, type] = {
    "customer": ct.CustomerState,
    "handoff": HandoffRecord,
    "idem": MsgRef,
    "ident": IdentRef,
    "merge": MergeRef,
    "msg": MsgRef,
    "thread": ct.ThreadState,
    "token": TokenRecord,
}


def _holds(raw: Any, layout: Any) -> bool:
    """Whether every field of the stored ``raw`` value is in ``layout`` with its value
    (``layout`` also has the fields the record left out, at their defaults)."""
    if isinstance(raw, dict):
        return isinstance(layout, dict) and all(
            k in layout and _holds(v, layout[k]) for k, v in raw.items()
        )
    if isinstance(raw, list):
        return (
            isinstance(layout, list)
            and len(raw) == len(layout)
            and all(_holds(a, b) for a, b in zip(raw, layout, strict=True))
        )
    return bool(raw == layout)


def test_every_record_of_a_0_1_0_database_decodes_to_what_it_holds(
    release_0_1_0: tuple[Path, dict[str, Any]],
) -> None:
    db, _expected = release_0_1_0
    with sqlite3.connect(db) as raw:
        events = raw.execute("SELECT stream, data FROM events").fetchall()
        entries = raw.execute("SELECT ns, value FROM kv").fetchall()
    checked = 0
    for stream, data in events:
        decode = codec.decode_event if stream.startswith("th_") else codec.decode_customer_event
        record = bytes(data)
        assert record[0] >= 0x80  # a 0.1.0 map: no version byte
        value = decode(record)
        assert _holds(msgspec.msgpack.decode(record), _layout_0_1_0(value))
        assert decode(codec.encode(value)) == value
        checked += 1
    for ns, data in entries:
        if ns not in _RECORDS_0_1_0:
            continue
        record = bytes(data)
        decode = codec.decoder(_RECORDS_0_1_0[ns])
        value = decode(record)
        assert _holds(msgspec.msgpack.decode(record), _layout_0_1_0(value)), (ns, value)
        assert decode(codec.encode(value)) == value
        checked += 1
    assert checked > 60


def test_a_database_written_by_release_0_1_0_reads_back_the_same_states(
    release_0_1_0: tuple[Path, dict[str, Any]],
) -> None:
    db, expected = release_0_1_0
    convs = ct.Conversations(f"sqlite:///{db}")
    try:
        for thread_id, thread in expected["threads"].items():
            assert _plain(convs.thread_state(thread_id)) == thread["state"]
            assert len(convs.events(thread_id)) == len(thread["events"])
        for customer_id, customer in expected["customers"].items():
            # (events are compared record by record above: their decisions now export
            # their reason codes too)
            view = _plain(convs.customer(customer_id))
            assert len(view.pop("events")) == len(customer.pop("events"))
            assert view == customer
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
