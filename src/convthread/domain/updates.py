"""What a channel adapter produces besides inbound messages.

A provider webhook may carry delivery statuses, edits, deletions and reactions, or
content the adapter does not model. Each is a frozen struct here; an adapter's ``parse``
returns a list of :data:`ChannelResult` (inbound messages and these), and the service's
``apply`` records them. ``Unsupported`` keeps what was not understood, so nothing is
silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Union

import msgspec

from convthread.domain.model import (
    Channel,
    Content,
    DeliveryStatus,
    Inbound,
    SenderIdentifier,
    ensure_utc,
)
from convthread.errors import ValidationError

__all__ = [
    "ChannelResult",
    "DeletionReport",
    "EditReport",
    "ReactionReport",
    "StatusReport",
    "Unsupported",
]


def _check(channel: str, provider_message_id: str, at: datetime, obj: msgspec.Struct) -> None:
    Channel.validate(channel)
    if not isinstance(provider_message_id, str) or not provider_message_id:
        raise ValidationError("provider_message_id must be a non-empty string")
    msgspec.structs.force_setattr(obj, "at", ensure_utc(at, "at"))


class StatusReport(msgspec.Struct, frozen=True, kw_only=True, tag="status"):
    """The provider reports the delivery status of an outbound message."""

    channel: str
    provider_message_id: str
    status: DeliveryStatus
    at: datetime
    recipient: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        _check(self.channel, self.provider_message_id, self.at, self)


class EditReport(msgspec.Struct, frozen=True, kw_only=True, tag="edit"):
    """The sender edited a message: ``content`` is the new content."""

    channel: str
    provider_message_id: str
    content: Content
    at: datetime
    sender: tuple[SenderIdentifier, ...] = ()

    def __post_init__(self) -> None:
        _check(self.channel, self.provider_message_id, self.at, self)


class DeletionReport(msgspec.Struct, frozen=True, kw_only=True, tag="deletion"):
    """The sender deleted (unsent) a message."""

    channel: str
    provider_message_id: str
    at: datetime
    sender: tuple[SenderIdentifier, ...] = ()

    def __post_init__(self) -> None:
        _check(self.channel, self.provider_message_id, self.at, self)


class ReactionReport(msgspec.Struct, frozen=True, kw_only=True, tag="reaction"):
    """The sender reacted to a message (an empty ``emoji`` removes the reaction)."""

    channel: str
    provider_message_id: str  # the message reacted to
    emoji: str
    at: datetime
    sender: tuple[SenderIdentifier, ...] = ()
    reaction_id: str = ""  # the provider's id of the reaction itself, if any

    def __post_init__(self) -> None:
        _check(self.channel, self.provider_message_id, self.at, self)


class Unsupported(msgspec.Struct, frozen=True, kw_only=True, tag="unsupported"):
    """Content the adapter does not model (kept, never silently dropped)."""

    channel: str
    reason: str
    kind: str = ""  # the provider's own type name, e.g. WhatsApp "unsupported", "order"
    provider_message_id: str = ""
    at: datetime | None = None
    raw: Any = None  # the JSON-compatible fragment the adapter could not model


#: Everything an adapter's ``parse`` may return.
ChannelResult = Union[
    Inbound, StatusReport, EditReport, DeletionReport, ReactionReport, Unsupported
]
