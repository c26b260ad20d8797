"""Encoding: msgspec MessagePack for storage, JSON for export, one reusable codec per type.

Stores hold MessagePack bytes. Export (snapshots, ``show --json``) is JSON. Both use the
same msgspec structs, so the JSON Schema of the structs (:func:`json_schema`) describes
the exported data exactly.

User objects in ``metadata`` (``Content(metadata=...)``) and attributes
(``set_attribute``): msgspec structs, dataclasses, attrs classes and pydantic models are
accepted alike, and turned into plain JSON values when they are passed in (dicts with
string keys, lists, strings, numbers; datetimes as ISO 8601 strings). They come back
as those plain values, from every store and export; :func:`read_as` converts one back
into the user's type (``read_as(content.metadata["order"], Order)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from convthread.domain.events import CustomerEvent, Decision, ThreadEvent
from convthread.domain.model import (
    Content,
    Inbound,
    SenderIdentifier,
    TimeSource,
    user_object_hook,
)
from convthread.domain.reasons import exported_schema
from convthread.domain.thread import CustomerState, ThreadState
from convthread.errors import ValidationError

__all__ = [
    "decode_customer_event",
    "decode_event",
    "encode",
    "fingerprint",
    "fingerprint_outbound",
    "from_json",
    "json_schema",
    "read_as",
    "to_builtins",
    "to_json",
]

T = TypeVar("T")


_enc_hook = user_object_hook


_mp_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook, order="deterministic")
_event_decoder: msgspec.msgpack.Decoder[ThreadEvent] = msgspec.msgpack.Decoder(ThreadEvent)
_customer_event_decoder: msgspec.msgpack.Decoder[CustomerEvent] = msgspec.msgpack.Decoder(
    CustomerEvent
)
_thread_state_decoder = msgspec.msgpack.Decoder(ThreadState)
_customer_state_decoder = msgspec.msgpack.Decoder(CustomerState)


def encode(obj: Any) -> bytes:
    """MessagePack bytes for storage."""
    return _mp_encoder.encode(obj)


def decode_event(data: bytes) -> ThreadEvent:
    return _event_decoder.decode(data)


def decode_customer_event(data: bytes) -> CustomerEvent:
    return _customer_event_decoder.decode(data)


def decode_thread_state(data: bytes) -> ThreadState:
    return _thread_state_decoder.decode(data)


def decode_customer_state(data: bytes) -> CustomerState:
    return _customer_state_decoder.decode(data)


def _rendered(decision: Decision) -> Decision:
    if decision._reason:
        return decision
    return msgspec.structs.replace(decision, _reason=decision.reason)


def _unrendered(decision: Decision) -> Decision:
    """A decision read back from export without the sentence its code renders anyway
    (one whose code this process cannot render keeps the exported sentence)."""
    if not decision.code or not decision._reason:
        return decision
    bare = msgspec.structs.replace(decision, _reason="")
    return bare if bare.reason == decision._reason else decision


def _map_decisions(obj: Any, fn: Callable[[Decision], Decision]) -> Any:
    """``obj`` with ``fn`` applied to every decision in it; unchanged parts are the same
    objects."""
    if isinstance(obj, Decision):
        return fn(obj)
    if isinstance(obj, msgspec.Struct):
        changed = {}
        for name in obj.__struct_fields__:
            value = getattr(obj, name)
            new = _map_decisions(value, fn)
            if new is not value:
                changed[name] = new
        return msgspec.structs.replace(obj, **changed) if changed else obj
    if type(obj) in (list, tuple):
        items = [_map_decisions(v, fn) for v in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            return type(obj)(items)
        return obj
    if isinstance(obj, dict):
        pairs = {k: _map_decisions(v, fn) for k, v in obj.items()}
        return pairs if any(pairs[k] is not v for k, v in obj.items()) else obj
    return obj


def _with_reasons(obj: Any) -> Any:
    """``obj`` with every decision carrying its rendered sentence (as ``reason``), for
    export: readers in other languages cannot run the renderers."""
    return _map_decisions(obj, _rendered)


def to_json(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys): the same value gives the same bytes. Decisions
    carry their rendered sentence as ``reason``."""
    return _json_encoder.encode(_with_reasons(obj))


def from_json(data: bytes | str, type_: type[T]) -> T:
    """The value of ``type_`` that :func:`to_json` (or ``show --json``) wrote: a
    ``ThreadView``, a ``CustomerView``, ``list[StoredEvent]``, one event, a snapshot.

    ValidationError when ``data`` is not JSON of that type."""
    try:
        value = msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"not JSON of {getattr(type_, '__name__', type_)}: {exc}") from None
    result: T = _map_decisions(value, _unrendered)
    return result


def to_builtins(obj: Any) -> Any:
    """Plain dicts, lists, strings and numbers (decisions with their ``reason``, as in
    :func:`to_json`)."""
    return msgspec.to_builtins(_with_reasons(obj), enc_hook=_enc_hook)


def read_as(value: Any, type_: type[T]) -> T:
    """Convert a stored metadata or attribute value back into ``type_``.

    Works for msgspec structs, dataclasses, attrs classes, TypedDicts and pydantic models.
    """
    validate = getattr(type_, "model_validate", None)
    if callable(validate):
        result: T = validate(value)
        return result
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"cannot read value as {type_.__name__}: {exc}") from None


_inbound_fp_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook, order="deterministic")


class _Fingerprinted(msgspec.Struct, kw_only=True):
    """What an inbound fingerprint covers, laid out as :class:`Inbound` was when stored
    fingerprints were first written: the same field names in the same order, so a message
    fingerprints to the same digest as before and existing stores keep deduplicating.
    Never reorder or rename these fields; a new Inbound field stays out of here unless it
    is part of what the provider sent."""

    channel: str
    provider_message_id: str
    sender: tuple[SenderIdentifier, ...]
    content: Content
    sent_at: datetime | None
    recipient: str
    reply_to: str | None
    references: tuple[str, ...]
    subject: str
    idempotency_key: None = None


def fingerprint(inbound: Inbound) -> str:
    """A digest of what the provider sent: everything in ``inbound`` except its
    idempotency key and, when ``sent_at`` is the receive time
    (:attr:`TimeSource.RECEIVED <convthread.domain.model.TimeSource>`), its ``sent_at``.

    Two deliveries of the same payload have the same fingerprint, also when they were
    received at different times; a key reused with a different payload does not.
    """
    payload = _Fingerprinted(
        channel=inbound.channel,
        provider_message_id=inbound.provider_message_id,
        sender=inbound.sender,
        content=inbound.content,
        sent_at=inbound.sent_at if inbound.time_source is TimeSource.PROVIDER else None,
        recipient=inbound.recipient,
        reply_to=inbound.reply_to,
        references=inbound.references,
        subject=inbound.subject,
    )
    return hashlib.blake2b(_inbound_fp_encoder.encode(payload), digest_size=16).hexdigest()


def fingerprint_outbound(
    thread_id: str,
    content: Any,
    sender: Any,
    channel: str | None,
    provider_message_id: str | None,
) -> str:
    """A digest of an outbound message, to tell an idempotent retry from key misuse."""
    data = _inbound_fp_encoder.encode((thread_id, content, sender, channel, provider_message_id))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def json_schema(type_: Any) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a convthread type as exported to JSON."""
    schema: dict[str, Any] = exported_schema(msgspec.json.schema(type_))
    return schema
