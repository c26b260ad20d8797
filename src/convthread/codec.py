"""Encoding: positional MessagePack for storage, named JSON for export.

Storage
-------
Every record the service stores (thread and customer events, thread and customer
states, the values of the key-value index) is written by :func:`encode` as::

    record  = version  array
    version = one byte, a MessagePack positive fixint: 0x01 for format 1
    array   = a MessagePack array: the struct's fields in declaration order

No field names are stored: a struct is the array of its field values. A tagged struct
(every event) has its tag first (``["message_received", at, channel, ...]``). msgspec
writes every field of an array-like struct, defaults included (most take one byte:
``""``, ``None``, ``0``, ``[]``, ``{}``); a reader accepts a shorter array and fills the
missing trailing fields with their defaults, so a writer may leave them off. Nested structs
(a :class:`~convthread.domain.model.Content`, a :class:`~convthread.domain.events.Decision`)
are arrays in the same way. A record is therefore a MessagePack *stream* of two values,
the format version and the record, readable by any MessagePack tool. Nothing is
compressed: text written into a record is in the file as its UTF-8 bytes, so an erasure
is provable by searching the file.

Records written by release 0.1.0 have no version byte: they are a single MessagePack
map with field names (or, for the few records that were already positional there, an
array). A map or an array never starts with a byte below 0x80, so the first byte tells
the two apart: below 0x80 it is a format version; from 0x80 up it is a 0.1.0 record,
decoded through the named layout of the same struct (:func:`decoder`). 0.1.0 records
decode to the same values they always did; they are not rewritten.

Evolving a stored struct
~~~~~~~~~~~~~~~~~~~~~~~~
A reader knows a field only by its position, so for a stored struct:

* a new field is only ever appended at the end, with a default; older records (which
  lack it) read as the default, and a reader of the same format version that predates
  the field ignores the extra element;
* a field is never removed, reordered, renamed into another meaning, or given a type
  its old values do not decode as; an event tag is never reused;
* any other change to a layout is a new format version: bump :data:`FORMAT_VERSION`
  and keep a decoder for every earlier version, selected by the record's first byte.

Event subclasses are ``kw_only``, so their fields follow the base's (``at`` first
after the tag) and a field added to a subclass lands at the end of its array.

Export
------
Export stays named. :func:`to_json`, :func:`to_builtins` and :func:`from_json` work on
a *named mirror* of every positional struct: a struct of the same name, fields, field
order, defaults and docstring, without ``array_like`` (made with
:func:`msgspec.defstruct`). The JSON and the JSON Schema (:func:`json_schema`) are what
they were when storage was named: keys in the order of 0.1.0 (an event's ``at`` last),
events without their default values, other records with every field. Encoding
directly with :mod:`msgspec` writes the storage layout (arrays); use this module for
JSON. The mirrors cost nothing on the storage path: storage encodes and decodes the
domain structs themselves.

User objects in ``metadata`` (``Content(metadata=...)``) and attributes
(``set_attribute``): msgspec structs, dataclasses, attrs classes and pydantic models are
accepted alike, and turned into plain JSON values when they are passed in (dicts with
string keys, lists, strings, numbers; datetimes as ISO 8601 strings). They come back
as those plain values, from every store and export; :func:`read_as` converts one back
into the user's type (``read_as(content.metadata["order"], Order)``).
"""

from __future__ import annotations

import hashlib
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar, Union

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    Decision,
    ThreadEvent,
    _CustomerEventBase,
    _ThreadEventBase,
)
from convthread.domain.model import (
    Content,
    Inbound,
    SenderIdentifier,
    TimeSource,
    user_object_hook,
)
from convthread.domain.reasons import exported_schema
from convthread.domain.thread import CustomerState, ThreadState
from convthread.errors import SchemaError, ValidationError

__all__ = [
    "FORMAT_VERSION",
    "decode_customer_event",
    "decode_event",
    "decoder",
    "encode",
    "event_schema",
    "fingerprint",
    "fingerprint_content",
    "fingerprint_outbound",
    "from_json",
    "json_schema",
    "read_as",
    "to_builtins",
    "to_json",
]

T = TypeVar("T")

#: The storage format :func:`encode` writes: the first byte of every record.
FORMAT_VERSION: Final = 1

_VERSION_BYTE: Final = bytes([FORMAT_VERSION])
#: First bytes of a MessagePack map or array start here; a version byte is below.
_FIRST_MSGPACK_CONTAINER: Final = 0x80

_enc_hook = user_object_hook


# --------------------------------------------------------------------------- named mirrors

#: Structs that release 0.1.0 already stored as arrays (and exported as arrays), by class
#: name (so a module may move): their 0.1.0 records and their JSON are the struct
#: itself. Every other ``array_like`` struct is positional in storage only, and named in
#: export and in 0.1.0 records.
_POSITIONAL_IN_0_1: Final = frozenset(
    {
        "EarlyStatus",
        "EarlyStatuses",
        "IdentRef",
        "MergeRef",
        "MessageMark",
        "MsgRef",
        "PointerChange",
        "SuspendedThread",
        "TokenClaims",
        "TokenFailures",
    }
)

#: Event bases: 0.1.0 wrote (and export writes) a subclass's own fields first, then
#: the base's (``at`` last), and left out the fields that hold their default.
_EVENT_BASES: Final = (_ThreadEventBase, _CustomerEventBase)

_named_classes: dict[type, type] = {}  # struct -> its named mirror (itself if none)
_to_named: dict[type, Callable[[Any], Any]] = {}  # struct -> converter to its mirror
_to_domain: dict[type, Callable[[Any], Any]] = {}  # mirror -> converter to its struct


def _stored_positionally(cls: type) -> bool:
    config = cls.__struct_config__  # type: ignore[attr-defined]
    return bool(config.array_like) and cls.__qualname__ not in _POSITIONAL_IN_0_1


def _named_type(tp: Any) -> Any:
    """``tp`` with every positional struct in it replaced by its named mirror (``tp``
    itself when it holds none)."""
    if isinstance(tp, type):
        if issubclass(tp, msgspec.Struct):
            return _named_class(tp)
        return tp
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is None or not args or origin is Literal:
        return tp
    if origin is Annotated:
        base = _named_type(args[0])
        if base is args[0]:
            return tp
        params = (base, *tp.__metadata__)
        return Annotated[params]
    new = tuple(a if a is Ellipsis else _named_type(a) for a in args)
    if all(n is a for n, a in zip(new, args, strict=True)):
        return tp
    if origin is Union or origin is types.UnionType:
        return Union[new]
    return origin[new]


def _named_class(cls: type) -> type:
    found = _named_classes.get(cls)
    if found is not None:
        return found
    _named_classes[cls] = cls  # a struct that refers to itself stays as it is
    fields = msgspec.structs.fields(cls)
    mapped = {f.name: _named_type(f.type) for f in fields}
    positional = _stored_positionally(cls)
    changed = [f.name for f in fields if mapped[f.name] is not f.type]
    if not positional and not changed:
        return cls
    config = cls.__struct_config__  # type: ignore[attr-defined]
    ordered = list(fields)
    base = next((b for b in _EVENT_BASES if issubclass(cls, b)), None)
    if base is not None:
        inherited = set(base.__struct_fields__)
        ordered = [f for f in fields if f.name not in inherited] + [
            f for f in fields if f.name in inherited
        ]
    specs: list[Any] = []
    for f in ordered:
        if f.default is not msgspec.NODEFAULT:
            specs.append((f.name, mapped[f.name], msgspec.field(default=_named_value(f.default))))
        elif f.default_factory is not msgspec.NODEFAULT:
            specs.append((f.name, mapped[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            specs.append((f.name, mapped[f.name]))
    rename = {f.name: f.encode_name for f in fields if f.encode_name != f.name}
    mirror = msgspec.defstruct(
        cls.__name__,
        specs,
        module=cls.__module__,
        kw_only=True,
        frozen=config.frozen,
        eq=config.eq,
        order=config.order,
        gc=config.gc,
        tag=config.tag,
        tag_field=config.tag_field,
        rename=rename or None,
        forbid_unknown_fields=config.forbid_unknown_fields,
        omit_defaults=(base is not None) if positional else config.omit_defaults,
        array_like=False if positional else config.array_like,
    )
    mirror.__qualname__ = cls.__qualname__
    mirror.__doc__ = cls.__doc__
    _to_named[cls] = _converter(fields, mapped, mirror, _to_named)
    _to_domain[mirror] = _converter(fields, mapped, cls, _to_domain)
    _named_classes[cls] = mirror
    return mirror


def _converter(
    fields: tuple[Any, ...],
    mapped: dict[str, Any],
    target: type,
    table: dict[type, Callable[[Any], Any]],
) -> Callable[[Any], Any]:
    """A function that builds ``target`` from a struct with the same ``fields``, converting
    the fields whose type holds a positional struct (``mapped`` differs from the field's
    type) through ``table``. Compiled once per struct, since export and fingerprints run
    it for every message."""
    env: dict[str, Any] = {"_target": target}
    parts = []
    for i, f in enumerate(fields):
        if mapped[f.name] is f.type:
            parts.append(f"{f.name}=v.{f.name}")
        else:
            env[f"_c{i}"] = _type_converter(f.type, table)
            parts.append(f"{f.name}=_c{i}(v.{f.name})")
    code = f"def convert(v):\n    return _target({', '.join(parts)})\n"
    exec(code, env)  # the source is made of field names only
    convert: Callable[[Any], Any] = env["convert"]
    return convert


def _type_converter(tp: Any, table: dict[type, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """A converter for values of the domain type ``tp`` (either direction)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    # An empty container (most attachments and references) skips the comprehension:
    # fingerprints convert every message's content and sender.
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _type_converter(args[0], table)
        return lambda v: tuple([item(x) for x in v]) if v else ()
    if origin is list and len(args) == 1:
        item = _type_converter(args[0], table)
        return lambda v: [item(x) for x in v] if v else []
    if origin is dict and len(args) == 2:
        item = _type_converter(args[1], table)
        return lambda v: {k: item(x) for k, x in v.items()} if v else {}
    if origin is tuple and args:
        items = [_type_converter(a, table) for a in args]
        return lambda v: tuple([c(x) for c, x in zip(items, v, strict=True)])
    if origin is Annotated:
        return _type_converter(args[0], table)
    again = _named_value if table is _to_named else _domain_value

    def by_runtime_type(v: Any) -> Any:
        convert = table.get(type(v))
        return v if convert is None and v is None else (convert or again)(v)

    return by_runtime_type


def _walk(value: Any, table: dict[type, Callable[[Any], Any]], again: Callable[[Any], Any]) -> Any:
    kind = type(value)
    convert = table.get(kind)
    if convert is not None:
        return convert(value)
    if kind is tuple:
        return tuple([again(v) for v in value])
    if kind is list:
        return [again(v) for v in value]
    if kind is dict:
        return {k: again(v) for k, v in value.items()}
    return value


def _named_value(value: Any) -> Any:
    """``value`` with every positional struct in it replaced by its named mirror."""
    if isinstance(value, msgspec.Struct) and type(value) not in _named_classes:
        _named_class(type(value))
    return _walk(value, _to_named, _named_value)


def _domain_value(value: Any) -> Any:
    """The inverse of :func:`_named_value`: mirrors back into the domain structs."""
    return _walk(value, _to_domain, _domain_value)


# --------------------------------------------------------------------------- storage

_mp_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook, order="deterministic")


def encode(obj: Any) -> bytes:
    """The storage record of ``obj``: the format version byte, then the MessagePack
    array of its fields (see the module doc)."""
    return _VERSION_BYTE + _mp_encoder.encode(obj)


def decoder(type_: type[T]) -> Callable[[bytes], T]:
    """A function that decodes a stored record of ``type_``: one written by
    :func:`encode` (format 1) or by release 0.1.0 (a MessagePack map).

    Raises :class:`~convthread.errors.SchemaError` for a record of a newer format, and
    :class:`msgspec.DecodeError` for bytes that are not a record of ``type_``."""
    current = msgspec.msgpack.Decoder(type_).decode
    named = _named_type(type_)
    if named is type_:
        legacy: Callable[[bytes], Any] = current
    else:
        named_decode = msgspec.msgpack.Decoder(named).decode

        def legacy(data: bytes) -> Any:
            value = named_decode(data)
            try:
                return _domain_value(value)
            except (ValueError, TypeError) as exc:
                raise msgspec.ValidationError(str(exc)) from exc

    def decode(data: bytes) -> T:
        first = data[0]
        if first == FORMAT_VERSION:
            # Copying a short record is cheaper than making a view of it.
            return current(data[1:] if len(data) < 4096 else memoryview(data)[1:])
        if first >= _FIRST_MSGPACK_CONTAINER:
            result: T = legacy(data)
            return result
        raise SchemaError(
            f"a stored record of format {first}; this release reads formats up to {FORMAT_VERSION}"
        )

    return decode


decode_event: Final[Callable[[bytes], ThreadEvent]] = decoder(ThreadEvent)  # type: ignore[arg-type]
decode_customer_event: Final[Callable[[bytes], CustomerEvent]] = decoder(CustomerEvent)  # type: ignore[arg-type]
decode_thread_state: Final = decoder(ThreadState)
decode_customer_state: Final = decoder(CustomerState)


# --------------------------------------------------------------------------- export


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
    """Deterministic JSON (sorted keys): the same value gives the same bytes. Structs
    are JSON objects with their field names (never the storage arrays); decisions carry
    their rendered sentence as ``reason``."""
    return _json_encoder.encode(_named_value(_with_reasons(obj)))


def from_json(data: bytes | str, type_: type[T]) -> T:
    """The value of ``type_`` that :func:`to_json` (or ``show --json``) wrote: a
    ``ThreadView``, a ``CustomerView``, ``list[StoredEvent]``, one event, a snapshot.

    ValidationError when ``data`` is not JSON of that type."""
    name = getattr(type_, "__name__", type_)
    try:
        value = msgspec.json.decode(data, type=_named_type(type_))
        domain = _domain_value(value)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise ValidationError(f"not JSON of {name}: {exc}") from None
    result: T = _map_decisions(domain, _unrendered)
    return result


def to_builtins(obj: Any) -> Any:
    """Plain dicts, lists, strings and numbers; structs as dicts of their fields, and
    decisions with their ``reason``, as in :func:`to_json`."""
    return msgspec.to_builtins(_named_value(_with_reasons(obj)), enc_hook=_enc_hook)


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


_named_class(Content)
_named_class(SenderIdentifier)
_named_content: Final = _to_named[Content]
_named_sender: Final = _type_converter(tuple[SenderIdentifier, ...], _to_named)


def fingerprint(inbound: Inbound) -> str:
    """A digest of what the provider sent: everything in ``inbound`` except its
    idempotency key and, when ``sent_at`` is the receive time
    (:attr:`TimeSource.RECEIVED <convthread.domain.model.TimeSource>`), its ``sent_at``.

    Two deliveries of the same payload have the same fingerprint, also when they were
    received at different times; a key reused with a different payload does not.
    """
    # The digest covers the named layout (a map per struct), as it always has.
    payload = _Fingerprinted(
        channel=inbound.channel,
        provider_message_id=inbound.provider_message_id,
        sender=_named_sender(inbound.sender),
        content=_named_content(inbound.content),
        sent_at=inbound.sent_at if inbound.time_source is TimeSource.PROVIDER else None,
        recipient=inbound.recipient,
        reply_to=inbound.reply_to,
        references=inbound.references,
        subject=inbound.subject,
    )
    return hashlib.blake2b(_inbound_fp_encoder.encode(payload), digest_size=16).hexdigest()


def fingerprint_content(content: Content) -> str:
    """A digest of a message's content, the same in every release: it covers the named
    layout of ``content`` (a map), not its storage record."""
    return hashlib.blake2b(_mp_encoder.encode(_named_value(content)), digest_size=16).hexdigest()


def fingerprint_outbound(
    thread_id: str,
    content: Any,
    sender: Any,
    channel: str | None,
    provider_message_id: str | None,
) -> str:
    """A digest of an outbound message, to tell an idempotent retry from key misuse."""
    data = _inbound_fp_encoder.encode(
        _named_value((thread_id, content, sender, channel, provider_message_id))
    )
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def json_schema(type_: Any) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a convthread type as exported to JSON."""
    schema: dict[str, Any] = exported_schema(msgspec.json.schema(_named_type(type_)))
    return schema


def event_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a thread event as exported (a tagged union on
    ``"type"``, named fields)."""
    schema: dict[str, Any] = json_schema(ThreadEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convthread thread event"
    return schema
