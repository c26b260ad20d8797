"""The channel-adapter protocol: capabilities, outbound messages, rendering, degradation.

An adapter turns a provider's raw inbound payload into normalized results and an
:class:`Outbound` message into the provider's payload:

* ``parse(payload, **options) -> list[ChannelResult]``: inbound messages, delivery
  statuses, edits, deletions, reactions and :class:`~convthread.domain.updates.Unsupported`
  for what the adapter does not model. Every failure raises
  :class:`~convthread.errors.ParseError` (or its subclass
  :class:`~convthread.errors.SignatureError`), never another exception. Every reference
  adapter takes the keyword options ``received_at=`` (a datetime) and ``clock=`` (a
  :class:`~convthread.ports.Clock`): where a payload carries no timestamp, results are
  stamped with ``received_at``, else ``clock.now()``, else the system clock (never read
  when either is given), and an :class:`~convthread.domain.model.Inbound` so stamped
  says so (``time_source=TimeSource.RECEIVED``), which keeps the receive time out of its
  fingerprint: a redelivery received later is still a duplicate.
* ``render(outbound) -> Rendered``: the provider payloads (one per provider request), the
  text as the customer will see it after degradation, and what was degraded.
* ``verify_signature(...)``: on adapters whose provider signs its requests.

Helpers for adapter authors: :func:`load_json`, :func:`load_form` (decode or raise
ParseError), :func:`guard` (turn any stray exception into ParseError), :func:`obj`,
:func:`arr`, :func:`req_str`, :func:`opt_str` (typed field access with the path in the
error), :func:`unix_time`, :func:`iso_time`, :func:`received`, :func:`clip`,
:func:`fragment` (bound ``Unsupported.raw``).

Rich content the channel cannot show degrades (:func:`degrade`): quick replies, lists and
card buttons become numbered text options; card and button links become plain URLs where
``capabilities.links`` is true and are dropped (and reported) where it is not.
"""

from __future__ import annotations

import contextlib
import email.errors
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Final, NoReturn, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import msgspec

from convthread._telemetry import logger
from convthread.domain.model import Attachment, ensure_utc
from convthread.domain.segments import SegmentCount
from convthread.domain.updates import ChannelResult
from convthread.errors import ConvthreadError, ParseError, ValidationError
from convthread.ports import Clock

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_RAW_BYTES",
    "Button",
    "Capabilities",
    "Card",
    "ChannelAdapter",
    "ListItem",
    "OptionList",
    "Outbound",
    "QuickReply",
    "Rendered",
    "arr",
    "check_size",
    "clip",
    "degrade",
    "fail",
    "fragment",
    "guard",
    "iso_time",
    "load_form",
    "load_json",
    "numbered_options",
    "obj",
    "opt_str",
    "received",
    "req_str",
    "unix_time",
]

#: Largest raw payload an adapter accepts, in bytes (an e-mail with inline images fits).
MAX_PAYLOAD_BYTES: Final = 25 * 1024 * 1024


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel can carry in one outbound message.

    * ``max_text``: most characters of text (``None``: no practical limit).
    * ``max_segments``: most SMS segments (GSM-7/UCS-2, counted exactly), if segmented.
    * ``rich_content``: native cards and lists.
    * ``attachments``: native media attachments (else they degrade to links).
    * ``quick_replies``: most native quick-reply buttons (0: degrade to numbered text).
    * ``list_items``: most rows of a native list (0: degrade to numbered text).
    * ``threading``: replies can point at an earlier message (reply-to, In-Reply-To).
    * ``subject``: messages have a subject line.
    * ``links``: a URL in the text is usable by the customer (false on voice).
    * ``synchronous_voice``: the channel is a live call: render is speech, now.
    """

    channel: str
    max_text: int | None = None
    max_segments: int | None = None
    rich_content: bool = False
    attachments: bool = False
    quick_replies: int = 0
    list_items: int = 0
    threading: bool = False
    subject: bool = False
    links: bool = True
    synchronous_voice: bool = False


class QuickReply(msgspec.Struct, frozen=True, kw_only=True):
    """A short answer the customer can tap; ``payload`` comes back when tapped."""

    title: str
    payload: str = ""


class Button(msgspec.Struct, frozen=True, kw_only=True):
    """A card button: a reply (``payload``) or a link (``url``)."""

    title: str
    payload: str = ""
    url: str = ""


class ListItem(msgspec.Struct, frozen=True, kw_only=True):
    """One row of an option list."""

    title: str
    id: str = ""
    description: str = ""


class OptionList(msgspec.Struct, frozen=True, kw_only=True):
    """A list of options behind a button labelled ``button``."""

    items: tuple[ListItem, ...]
    button: str = "Options"
    title: str = ""


class Card(msgspec.Struct, frozen=True, kw_only=True):
    """A card: title, text, an image, a link and buttons."""

    title: str
    text: str = ""
    image_url: str = ""
    url: str = ""
    buttons: tuple[Button, ...] = ()


class Outbound(msgspec.Struct, frozen=True, kw_only=True):
    """A message to send, channel-independent; adapters render it within capabilities.

    ``to`` is the channel address (phone number, wa_id, e-mail address, session id,
    conversation id); ``sender`` the business address where the channel needs one.
    ``reply_to`` is the provider message id answered; ``references`` further ids (e-mail
    ``References``); ``thread_ref`` a channel thread (an e-mail thread root, a DM
    conversation id); ``message_id`` the id to give the message, where the sender chooses
    it (e-mail ``Message-ID``, web chat).
    """

    to: str = ""
    text: str = ""
    sender: str = ""
    quick_replies: tuple[QuickReply, ...] = ()
    options: OptionList | None = None
    card: Card | None = None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    thread_ref: str = ""
    message_id: str = ""


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    """The result of rendering: what to send, and what the customer will see.

    * ``payloads``: the provider request bodies, in send order (a JSON-compatible dict,
      form fields, MIME bytes or TwiML text, per adapter).
    * ``text``: the text as shown (or spoken) after degradation and truncation.
    * ``degraded``: notes on what did not fit the capabilities and how it was degraded.
    * ``segments``: for segmented channels (SMS), the exact segment count of ``text``.
    """

    channel: str
    payloads: tuple[Any, ...]
    text: str
    degraded: tuple[str, ...] = ()
    segments: SegmentCount | None = None


@runtime_checkable
class ChannelAdapter(Protocol):
    """What the service and the conformance kit need from a channel adapter."""

    @property
    def channel(self) -> str:
        """The channel name the adapter's results carry."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What one outbound message can carry."""
        ...

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        """Parse a raw inbound payload; raise ParseError (only) on failure."""
        ...

    def render(self, outbound: Outbound) -> Rendered:
        """Render ``outbound`` within the capabilities."""
        ...


# --------------------------------------------------------------------------- degradation


def numbered_options(titles: list[str], *, voice: bool = False) -> str:
    """``1. Yes`` / ``2. No`` lines (``Press 1 for Yes.`` on voice)."""
    if voice:
        return " ".join(f"Press {i} for {t}." for i, t in enumerate(titles, 1))
    return "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1))


def degrade(outbound: Outbound, caps: Capabilities) -> tuple[str, str, list[str]]:
    """Degrade ``outbound``'s rich parts to text for ``caps``.

    Returns ``(body, options_block, notes)``: the body text (text, card text and links),
    the numbered options block (empty when there are no options to number) and notes on
    what was degraded. Parts the channel shows natively are left out of both (the adapter
    renders them itself): quick replies when ``caps.quick_replies`` allows their number,
    an option list when ``caps.list_items`` allows its length, a card when
    ``caps.rich_content``, attachments when ``caps.attachments``.
    """
    notes: list[str] = []
    parts: list[str] = [outbound.text] if outbound.text else []
    options: list[str] = []
    voice = caps.synchronous_voice
    card = outbound.card
    if card is not None and not caps.rich_content:
        notes.append("card -> text")
        lines = [card.title] if card.title else []
        if card.text:
            lines.append(card.text)
        if card.url:
            if caps.links:
                lines.append(card.url)
            else:
                notes.append("card link dropped (no links on this channel)")
        if card.image_url:
            if caps.links and not caps.attachments:
                lines.append(card.image_url)
            elif not caps.links:
                notes.append("card image dropped")
        if lines:
            parts.append("\n".join(lines))
        for button in card.buttons:
            if button.url:
                if caps.links:
                    parts.append(f"{button.title}: {button.url}")
                else:
                    notes.append(f"link button {button.title!r} dropped")
            else:
                options.append(button.title)
    if outbound.options is not None and len(outbound.options.items) > caps.list_items:
        notes.append("list -> numbered options")
        if outbound.options.title:
            parts.append(outbound.options.title)
        options.extend(
            f"{item.title} ({item.description})" if item.description and not voice else item.title
            for item in outbound.options.items
        )
    if outbound.quick_replies and len(outbound.quick_replies) > caps.quick_replies:
        notes.append("quick replies -> numbered options")
        options.extend(q.title for q in outbound.quick_replies)
    if outbound.attachments and not caps.attachments:
        for att in outbound.attachments:
            label = att.caption or att.filename or att.kind
            if att.url and caps.links:
                parts.append(f"{label}: {att.url}")
                notes.append(f"attachment {label!r} -> link")
            else:
                notes.append(f"attachment {label!r} dropped (no attachments or links)")
    sep = " " if voice else "\n\n"
    return sep.join(parts), numbered_options(options, voice=voice), notes


# --------------------------------------------------------------------------- parsing helpers

#: Exceptions that malformed input provokes in the standard library and msgspec; a
#: guarded parse turns them into ParseError. ConvthreadError covers the domain's own
#: ValidationError (an identifier or a text the domain refuses).
_WRAPPED: Final = (
    ConvthreadError,
    ValueError,  # includes UnicodeError, json.JSONDecodeError, binascii.Error
    TypeError,
    KeyError,
    IndexError,
    AttributeError,  # the email package raises it on some malformed headers
    OverflowError,
    RecursionError,
    msgspec.DecodeError,
    msgspec.ValidationError,
    email.errors.MessageError,
)


def _refused(channel: str) -> None:
    """A payload refused: DEBUG on ``convthread.channels.<channel>``, with the channel
    and the outcome only (the reason can quote the payload)."""
    log = logger(f"channels.{channel}")
    if log.isEnabledFor(logging.DEBUG):
        log.debug("payload refused", extra={"channel": str(channel), "outcome": "parse_error"})


@contextlib.contextmanager
def guard(channel: str, what: str = "payload") -> Iterator[None]:
    """Turn any failure inside the block into :class:`ParseError` (ParseError passes)."""
    try:
        yield
    except ParseError:
        raise
    except _WRAPPED as exc:
        reason = str(exc) or type(exc).__name__
        _refused(channel)
        raise ParseError(channel, f"{what}: {reason}") from exc


def fail(channel: str, reason: str) -> NoReturn:
    """Raise ParseError for ``channel`` with ``reason``."""
    _refused(channel)
    raise ParseError(channel, reason)


def check_size(channel: str, data: bytes | str) -> None:
    """Raise ParseError when a raw payload is over :data:`MAX_PAYLOAD_BYTES`."""
    if len(data) > MAX_PAYLOAD_BYTES:
        fail(channel, f"payload is {len(data)} long; the limit is {MAX_PAYLOAD_BYTES}")


def load_json(channel: str, payload: Any) -> Any:
    """Decode a JSON payload (bytes, str, or an already-decoded dict or list)."""
    if isinstance(payload, (dict, list)):
        return payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        check_size(channel, data)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            _refused(channel)
            raise ParseError(channel, f"not JSON: {exc}") from None
    if isinstance(payload, str):
        check_size(channel, payload)
        try:
            return json.loads(payload)
        except (ValueError, RecursionError) as exc:
            _refused(channel)
            raise ParseError(channel, f"not JSON: {exc}") from None
    fail(channel, f"expected JSON bytes, str, dict or list, not {type(payload).__name__}")


def load_form(channel: str, payload: Any) -> dict[str, list[str]]:
    """Decode form fields: ``application/x-www-form-urlencoded`` bytes or str, or a
    mapping of names to a string or a list of strings."""
    pairs: list[tuple[str, str]]
    if isinstance(payload, Mapping):
        out: dict[str, list[str]] = {}
        for key, value in payload.items():
            if not isinstance(key, str):
                fail(channel, f"form field name {key!r} is not a string")
            if isinstance(value, str):
                out[key] = [value]
            elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                out[key] = list(value)
            else:
                fail(channel, f"form field {key!r} must be a string or a list of strings")
        return out
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        check_size(channel, data)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            fail(channel, "form body is not ASCII (it must be percent-encoded)")
    elif isinstance(payload, str):
        check_size(channel, payload)
        text = payload
    else:
        fail(channel, f"expected form bytes, str or a mapping, not {type(payload).__name__}")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=1000)
    except ValueError as exc:
        _refused(channel)
        raise ParseError(channel, f"not form-encoded: {exc}") from None
    result: dict[str, list[str]] = {}
    for key, value in pairs:
        result.setdefault(key, []).append(value)
    return result


def obj(channel: str, value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ParseError naming ``where``."""
    if not isinstance(value, dict):
        fail(channel, f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def arr(channel: str, value: Any, where: str) -> list[Any]:
    """``value`` if it is a JSON array, else ParseError naming ``where``."""
    if not isinstance(value, list):
        fail(channel, f"{where} must be a JSON array, not {type(value).__name__}")
    return value


def req_str(channel: str, data: Mapping[str, Any], key: str, where: str) -> str:
    """A required, non-empty string field (numbers are accepted and written as text)."""
    value = data.get(key)
    if isinstance(value, bool) or value is None:
        fail(channel, f"{where}.{key} is required")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value:
        fail(channel, f"{where}.{key} must be a non-empty string")
    return value


def opt_str(channel: str, data: Mapping[str, Any], key: str, where: str) -> str:
    """An optional string field ('' when absent or null)."""
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, bool):
        fail(channel, f"{where}.{key} must be a string")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        fail(channel, f"{where}.{key} must be a string, not {type(value).__name__}")
    return value


def unix_time(channel: str, value: Any, where: str) -> datetime:
    """A Unix timestamp in seconds (a number or a numeric string) as a UTC datetime."""
    if isinstance(value, bool):
        fail(channel, f"{where} is not a timestamp")
    if isinstance(value, str):
        try:
            value = int(value.strip()) if value.strip().isdigit() else float(value)
        except ValueError:
            fail(channel, f"{where} {value!r} is not a Unix timestamp")
    if not isinstance(value, (int, float)) or value != value:
        fail(channel, f"{where} is not a timestamp")
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        fail(channel, f"{where} {value!r} is out of range")


def iso_time(channel: str, value: Any, where: str) -> datetime:
    """An ISO 8601 timestamp with an offset (``Z`` accepted) as a UTC datetime; a Unix
    timestamp (number) is accepted too."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return unix_time(channel, value, where)
    if not isinstance(value, str) or not value:
        fail(channel, f"{where} must be an ISO 8601 timestamp")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        fail(channel, f"{where} {value!r} is not an ISO 8601 timestamp")
    if parsed.utcoffset() is None:
        fail(channel, f"{where} {value!r} has no UTC offset")
    return ensure_utc(parsed)


def received(received_at: datetime | None, clock: Clock | None = None) -> datetime:
    """The time to stamp on results of payloads that carry none: the caller's
    ``received_at`` when given, else ``clock.now()`` when a clock is given (the service's
    clock, a :class:`~convthread.ports.ManualClock` in tests), else the system clock
    (adapters sit at the I/O edge; the domain never reads a clock)."""
    if received_at is not None:
        return ensure_utc(received_at, "received_at")
    if clock is not None:
        now = getattr(clock, "now", None)
        if not callable(now):
            raise ValidationError(f"clock must have a now() method, not {type(clock).__name__}")
        return ensure_utc(now(), "clock.now()")
    return datetime.now(timezone.utc)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (without splitting a surrogate-free string)."""
    return text if len(text) <= limit else text[:limit]


_raw_encoder: Final = msgspec.json.Encoder()
#: Largest ``Unsupported.raw`` kept whole, in bytes of its JSON encoding.
MAX_RAW_BYTES: Final = 64 * 1024


def fragment(value: Any) -> Any:
    """``value`` for ``Unsupported.raw``: kept whole up to 64 KiB of JSON, else replaced by
    ``{"truncated": true, "json_prefix": <the first 4096 characters of its JSON>}``."""
    try:
        encoded = _raw_encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return {"unencodable": True, "repr": repr(value)[:4096]}
    if len(encoded) <= MAX_RAW_BYTES:
        return value
    return {"truncated": True, "json_prefix": encoded[:4096].decode("utf-8", "replace")}
