"""The shared vocabulary: identifiers, trust, parties, channels, content, inbound messages.

Everything here is a frozen :class:`msgspec.Struct` (a value) or an enum. Nothing reads
a clock or does I/O. Validation happens on construction, so an invalid value cannot
exist; the errors are the library's own (:mod:`convthread.errors`).
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import msgspec

from convthread.errors import ContentTooLarge, ValidationError

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_IDENTIFIERS",
    "MAX_METADATA_BYTES",
    "MAX_PROVIDER_ID",
    "MAX_TEXT",
    "Attachment",
    "Channel",
    "Content",
    "DeliveryStatus",
    "Identifier",
    "IdentifierKind",
    "Inbound",
    "Party",
    "PartyKind",
    "SenderIdentifier",
    "TimeSource",
    "Trust",
    "check_text",
    "ensure_utc",
    "to_json_values",
    "user_object_hook",
]

#: Longest message text accepted, in characters (a long e-mail body fits; a file does not).
MAX_TEXT: Final = 100_000
#: Largest metadata mapping accepted, in bytes of its JSON encoding.
MAX_METADATA_BYTES: Final = 64 * 1024
#: Longest provider message id, reference or idempotency key accepted, in characters.
MAX_PROVIDER_ID: Final = 512
#: Most sender identifiers one inbound message may carry.
MAX_IDENTIFIERS: Final = 32
#: Most attachments one message may carry.
MAX_ATTACHMENTS: Final = 64

_CHANNEL_RE: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_UTC: Final = timezone.utc
_ZERO: Final = timedelta(0)


def ensure_utc(value: datetime, what: str = "timestamp") -> datetime:
    """Return ``value`` converted to UTC; reject naive datetimes with a typed error."""
    if value.__class__ is datetime and value.tzinfo is _UTC:
        return value  # already UTC (a plain datetime: its offset is timezone.utc's)
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise ValidationError(
            f"{what} {value.isoformat()} is naive; pass a timezone-aware datetime"
        )
    if offset == _ZERO and value.tzinfo is _UTC:
        return value
    return value.astimezone(_UTC)


def _set(obj: msgspec.Struct, name: str, value: object) -> None:
    msgspec.structs.force_setattr(obj, name, value)


def check_text(value: object, what: str) -> str:
    """Return ``value`` if it is a string of valid Unicode text, else raise
    ValidationError (a non-string, or a string with a lone surrogate, which no encoding
    can store)."""
    if isinstance(value, str) and value.isascii():
        return value
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} holds a lone surrogate ({value[exc.start]!r} at {exc.start}); "
            "text must be valid Unicode"
        ) from None
    return value


def user_object_hook(obj: Any) -> Any:
    """The JSON-compatible form of a user object msgspec does not encode itself: a
    pydantic model (v2 ``model_dump(mode="json")``, v1 ``dict()``). Anything else is a
    TypeError."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # pydantic v2
        return dump(mode="json")
    dump_v1 = getattr(obj, "dict", None)
    if callable(dump_v1) and hasattr(obj, "__fields__"):  # pydantic v1
        return msgspec.to_builtins(dump_v1())
    raise TypeError(f"cannot encode {type(obj).__name__}; use JSON-compatible values")


def to_json_values(value: Any, what: str) -> Any:
    """``value`` as plain JSON values (dicts with string keys, lists, strings, numbers,
    booleans, None): msgspec structs, dataclasses, attrs classes and pydantic models
    become dicts, datetimes ISO 8601 strings. ValidationError when that is impossible."""
    try:
        plain = msgspec.to_builtins(value, enc_hook=user_object_hook)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"{what} is not encodable: {exc}") from None
    _check_json(plain, what)
    return plain


def _check_json(value: Any, what: str) -> None:
    if isinstance(value, str):
        check_text(value, what)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"{what} has a key of type {type(key).__name__} ({key!r}); keys must be strings"
                )
            check_text(key, what)
            _check_json(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, what)


_SCALARS: Final = frozenset({int, float, bool, type(None)})


def _plain_ascii(mapping: dict[Any, Any]) -> bool:
    """Whether ``mapping`` is already plain JSON that :func:`to_json_values` would return
    unchanged and accept: ASCII string keys, and values that are ASCII strings or
    scalars. The common metadata passes this cheaply; anything else takes the full walk."""
    for key, value in mapping.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return False
        elif kind not in _SCALARS:
            return False
    return True


class Trust(str, enum.Enum):
    """How far an identifier is to be believed.

    * ``claimed``: typed by the person (an e-mail address in a web form, a From header).
    * ``asserted``: vouched for by the channel (a carrier's caller id, WhatsApp's wa_id).
    * ``verified``: proven (a login, a one-time code, a signed token).

    Trust levels are ordered: ``Trust.CLAIMED < Trust.ASSERTED < Trust.VERIFIED``.
    """

    CLAIMED = "claimed"
    ASSERTED = "asserted"
    VERIFIED = "verified"

    @property
    def rank(self) -> int:
        return _TRUST_RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Trust):
            return NotImplemented
        return _TRUST_RANK[self] < _TRUST_RANK[other]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Trust):
            return NotImplemented
        return _TRUST_RANK[self] <= _TRUST_RANK[other]

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Trust):
            return NotImplemented
        return _TRUST_RANK[self] > _TRUST_RANK[other]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Trust):
            return NotImplemented
        return _TRUST_RANK[self] >= _TRUST_RANK[other]


_TRUST_RANK: Final = {Trust.CLAIMED: 0, Trust.ASSERTED: 1, Trust.VERIFIED: 2}


class IdentifierKind:
    """Well-known identifier kinds. The set is open: register a normalizer for others."""

    PHONE: Final = "phone"
    EMAIL: Final = "email"
    HANDLE: Final = "handle"  # scope: the platform ("twitter", "messenger", ...)
    ACCOUNT: Final = "account"  # scope: the tenant
    DEVICE: Final = "device"
    SESSION: Final = "session"


class Identifier(msgspec.Struct, frozen=True, order=True, omit_defaults=True, array_like=True):
    """A normalized identifier value: ``kind``, ``value`` and, for scoped kinds, ``scope``.

    Build these through :func:`convthread.normalize_identifier` (or the helpers such as
    :func:`convthread.phone`) so the value is normalized; equality is on the normalized
    triple.
    """

    kind: str
    value: str
    scope: str = ""

    def __post_init__(self) -> None:
        if not self.kind or not isinstance(self.kind, str):
            raise ValidationError("identifier kind must be a non-empty string")
        if not isinstance(self.value, str) or not self.value:
            raise ValidationError(f"{self.kind} identifier value must be a non-empty string")
        check_text(self.kind, "identifier kind")
        check_text(self.value, f"{self.kind} identifier value")
        check_text(self.scope, f"{self.kind} identifier scope")
        if len(self.value) > MAX_PROVIDER_ID:
            raise ContentTooLarge(f"{self.kind} identifier", len(self.value), MAX_PROVIDER_ID)

    @property
    def key(self) -> str:
        """A stable string key: ``kind:scope:value``."""
        return f"{self.kind}:{self.scope}:{self.value}"

    def __str__(self) -> str:
        if self.scope:
            return f"{self.kind}[{self.scope}]:{self.value}"
        return f"{self.kind}:{self.value}"


class SenderIdentifier(msgspec.Struct, frozen=True, omit_defaults=True, array_like=True):
    """An identifier as presented by a sender, with the trust the channel gives it.

    ``method`` records how the trust was established (``"channel"``, ``"otp"``,
    ``"login"``, ``"signed-token"``, ``"agent"``, ``"token"``); empty means the
    channel's default for that trust level.
    """

    identifier: Identifier
    trust: Trust = Trust.CLAIMED
    method: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.identifier, Identifier):
            raise ValidationError(
                f"a sender identifier holds an Identifier, not {type(self.identifier).__name__}"
            )
        if not isinstance(self.trust, Trust):
            try:
                _set(self, "trust", Trust(self.trust))
            except ValueError:
                allowed = ", ".join(t.value for t in Trust)
                raise ValidationError(
                    f"trust must be one of {allowed}, got {self.trust!r}"
                ) from None
        check_text(self.method, "sender identifier method")


class PartyKind(str, enum.Enum):
    """Who takes part in a conversation."""

    CUSTOMER = "customer"
    BOT = "bot"
    QUEUE = "queue"
    AGENT = "agent"
    SYSTEM = "system"


class Party(msgspec.Struct, frozen=True, order=True, omit_defaults=True, array_like=True):
    """A participant: a customer, a bot, a queue, an agent or the system.

    ``Party.parse("agent:alice")`` reads the ``kind:id`` form; ``str(party)`` writes it.
    That is the one rule for every ``by=``, ``to=`` and ``sender=`` of the service: a
    :class:`Party`, or a string ``"kind:id"`` whose kind is one of :class:`PartyKind`
    (``"system:scheduler"``, not ``"system"``).
    """

    kind: PartyKind
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > MAX_PROVIDER_ID:
            raise ValidationError(f"party id must be a non-empty string, got {self.id!r}")
        check_text(self.id, "party id")
        if not isinstance(self.kind, PartyKind):
            raise ValidationError(f"party kind must be a PartyKind, got {self.kind!r}")

    @classmethod
    def parse(cls, text: str | Party) -> Party:
        """Parse ``"kind:id"`` (e.g. ``"queue:billing"``) into a :class:`Party`."""
        if isinstance(text, Party):
            return text
        if not isinstance(text, str):
            raise ValidationError(f"a party is a Party or a 'kind:id' string, not {text!r}")
        kind, sep, ident = text.partition(":")
        if not sep or not ident:
            raise ValidationError(
                f"party must look like 'kind:id' (e.g. 'agent:alice', 'system:scheduler'), "
                f"got {text!r}"
            )
        try:
            party_kind = PartyKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in PartyKind)
            raise ValidationError(
                f"unknown party kind {kind!r} in {text!r}; expected one of {allowed}"
            ) from None
        return cls(party_kind, ident)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"


class Channel:
    """Well-known channel names. The set is open: any lowercase name is a channel."""

    SMS: Final = "sms"
    WHATSAPP: Final = "whatsapp"
    EMAIL: Final = "email"
    WEBCHAT: Final = "webchat"
    VOICE: Final = "voice"
    MESSENGER: Final = "messenger"
    TWITTER: Final = "twitter"
    APP: Final = "app"

    @staticmethod
    def validate(name: str) -> str:
        """Return ``name`` if it is a valid channel name, else raise ValidationError."""
        if name.__class__ is str and name in _VALID_CHANNELS:
            return name  # seen before and valid (the names in use are few)
        if not isinstance(name, str) or not _CHANNEL_RE.match(name):
            raise ValidationError(
                f"channel name must be lowercase letters, digits, '_', '.', '-' "
                f"(1-32, starting with a letter), got {name!r}"
            )
        if name.__class__ is str and len(_VALID_CHANNELS) < _VALID_CHANNELS_LIMIT:
            _VALID_CHANNELS.add(name)
        return name


#: Channel names found valid so far (a bounded set: the names in use are few).
_VALID_CHANNELS: Final[set[str]] = set()
_VALID_CHANNELS_LIMIT: Final = 1024


class DeliveryStatus(str, enum.Enum):
    """Delivery status of an outbound message. Statuses never regress (see ``rank``)."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


# failed is terminal and outranks everything except a later read (a provider that
# reports read after failed is reporting the truth about what the customer saw).
_STATUS_RANK: Final = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.READ: 4,
}


class Attachment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """Metadata about an attachment. convthread stores metadata, never the bytes."""

    kind: str  # image, audio, video, document, sticker, location, contacts, ...
    url: str = ""
    media_id: str = ""
    mime_type: str = ""
    filename: str = ""
    size: int | None = None
    sha256: str = ""
    caption: str = ""


_metadata_encoder: Final = msgspec.json.Encoder()


class Content(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """What a message says: text, attachments metadata and free metadata.

    ``metadata`` is a mapping of strings to JSON-compatible values; msgspec structs,
    dataclasses, attrs classes and pydantic models are accepted too. Every value is
    kept as plain JSON values from the start (objects become dicts, datetimes ISO 8601
    strings), so the metadata reads back the same from the object, from any store and
    from an export; :func:`convthread.codec.read_as` turns a value back into its type.
    """

    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_text(self.text, "message text")
        if len(self.text) > MAX_TEXT:
            raise ContentTooLarge("message text", len(self.text), MAX_TEXT)
        if len(self.attachments) > MAX_ATTACHMENTS:
            raise ContentTooLarge("attachment list", len(self.attachments), MAX_ATTACHMENTS)
        if not isinstance(self.attachments, tuple) or not all(
            isinstance(a, Attachment) for a in self.attachments
        ):
            raise ValidationError("attachments must be a tuple of Attachment")
        if self.metadata:
            if not isinstance(self.metadata, dict):
                raise ValidationError("metadata must be a mapping of strings to values")
            plain = self.metadata
            if not _plain_ascii(plain):  # (every stored message is checked on each load)
                plain = to_json_values(plain, "metadata")
                if plain != self.metadata:
                    _set(self, "metadata", plain)
            size = len(_metadata_encoder.encode(plain))
            if size > MAX_METADATA_BYTES:
                raise ContentTooLarge("metadata (encoded)", size, MAX_METADATA_BYTES)

    @property
    def is_empty(self) -> bool:
        return not self.text and not self.attachments


class TimeSource(str, enum.Enum):
    """Where an inbound message's ``sent_at`` comes from.

    * ``provider``: the payload's own timestamp (a WhatsApp ``timestamp``, an e-mail
      ``Date``). It is part of what the provider sent, so the fingerprint covers it.
    * ``received``: the time the payload was received, because the payload carries none
      (Twilio webhooks, an e-mail without ``Date``). A redelivery is received at another
      time, so the fingerprint leaves it out; the first delivery's time is the one stored.
    """

    PROVIDER = "provider"
    RECEIVED = "received"


def _check_id(value: object, what: str, *, allow_empty: bool = False) -> None:
    check_text(value, what)
    assert isinstance(value, str)
    if not value and not allow_empty:
        raise ValidationError(f"{what} must not be empty")
    if len(value) > MAX_PROVIDER_ID:
        raise ContentTooLarge(what, len(value), MAX_PROVIDER_ID)


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """A normalized inbound message: what every channel adapter produces.

    * ``channel``: the channel name (see :class:`Channel`).
    * ``provider_message_id``: the provider's id for this message; with the channel it
      makes the default idempotency key, so a redelivery is stored once.
    * ``sender``: the identifiers the message arrived with, each with its trust.
    * ``content``: text, attachments metadata, metadata.
    * ``sent_at``: when the message was sent (timezone-aware; kept in UTC): the
      provider's own timestamp, or the receive time where the payload has none.
    * ``recipient``: the business address it was sent to (a number, a mailbox, a page).
    * ``reply_to``: the provider message id this message replies to, if any.
    * ``references``: further message ids it refers to (e-mail ``References``).
    * ``subject``: a subject line, where the channel has one.
    * ``idempotency_key``: overrides the default ``channel`` + ``provider_message_id`` key.
    * ``time_source``: where ``sent_at`` comes from (:class:`TimeSource`; default: the
      provider). Adapters set ``TimeSource.RECEIVED`` when they stamp the receive time, so
      that a redelivery received later is still the same payload.
    """

    channel: str
    provider_message_id: str
    sender: tuple[SenderIdentifier, ...]
    content: Content = Content()
    sent_at: datetime
    recipient: str = ""
    reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    idempotency_key: str | None = None
    time_source: TimeSource = TimeSource.PROVIDER

    def __post_init__(self) -> None:
        Channel.validate(self.channel)
        _check_id(self.provider_message_id, "provider_message_id")
        if not isinstance(self.sender, tuple) or not all(
            isinstance(s, SenderIdentifier) for s in self.sender
        ):
            raise ValidationError("sender must be a tuple of SenderIdentifier")
        if not self.sender:
            raise ValidationError("an inbound message needs at least one sender identifier")
        if len(self.sender) > MAX_IDENTIFIERS:
            raise ContentTooLarge("sender identifier list", len(self.sender), MAX_IDENTIFIERS)
        _set(self, "sent_at", ensure_utc(self.sent_at, "sent_at"))
        if self.reply_to is not None:
            _check_id(self.reply_to, "reply_to")
        if len(self.references) > 100:
            raise ContentTooLarge("references", len(self.references), 100)
        for ref in self.references:
            _check_id(ref, "reference")
        if not isinstance(self.content, Content):
            raise ValidationError(f"content must be a Content, not {type(self.content).__name__}")
        if not isinstance(self.references, tuple):
            raise ValidationError("references must be a tuple of strings")
        check_text(self.subject, "subject")
        if len(self.subject) > 2000:
            raise ContentTooLarge("subject", len(self.subject), 2000)
        _check_id(self.recipient, "recipient", allow_empty=True)
        if self.idempotency_key is not None:
            _check_id(self.idempotency_key, "idempotency_key")
        if not isinstance(self.time_source, TimeSource):
            try:
                _set(self, "time_source", TimeSource(self.time_source))
            except ValueError:
                raise ValidationError(
                    f"time_source must be 'provider' or 'received', got {self.time_source!r}"
                ) from None

    @property
    def key(self) -> str:
        """The idempotency key: the explicit one, else ``channel`` + provider message id."""
        if self.idempotency_key is not None:
            return self.idempotency_key
        return f"{self.channel}|{self.provider_message_id}"
