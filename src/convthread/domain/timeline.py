"""Messages of a thread as people see them, and the per-message rules behind them.

* :func:`timeline` folds a thread's events into one :class:`TimelineEntry` per message,
  ordered by the channel's own timestamp with the sequence number as a stable
  tie-break: a message that arrived late appears where it happened. Edits, deletions
  (tombstones that keep their place), reactions and delivery statuses are applied.
* :class:`MessageMark` is what the service keeps per message that has had a status,
  edit, deletion or reaction reported, so each report is judged without replaying the
  thread; :func:`status_update`, :func:`edit_update`, :func:`deletion_update` and
  :func:`reaction_update` decide, purely, which event (if any) a report adds.

Delivery statuses never regress: a report is recorded only when its status ranks above
the current one (:attr:`~convthread.domain.model.DeliveryStatus.rank`), so a late
"delivered" never overrides "read", and a redelivered report changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from convthread.domain.events import (
    MessageDeleted,
    MessageEdited,
    MessageErased,
    MessageReceived,
    MessageSent,
    ProviderIdRecorded,
    ReactionSet,
    StatusUpdated,
    ThreadEvent,
)
from convthread.domain.model import Content, DeliveryStatus, Party

__all__ = [
    "MessageMark",
    "TimelineEntry",
    "deletion_update",
    "edit_update",
    "reaction_update",
    "status_update",
    "timeline",
]

_replace: Final = msgspec.structs.replace
_EMPTY: Final = Content()


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a thread as it stands now.

    ``sent_at`` is the channel's timestamp for an inbound message and the recording time
    for an outbound one; ``content`` is the latest edit (empty once deleted or erased).
    """

    seq: int
    direction: str  # "inbound" or "outbound"
    channel: str
    sender: str  # an identifier ("handle[twitter]:alice") or a party ("agent:bob")
    content: Content
    sent_at: datetime
    recorded_at: datetime
    provider_message_id: str | None = None
    reply_to: str | None = None
    edited: bool = False
    deleted: bool = False
    erased: bool = False
    status: DeliveryStatus | None = None
    status_at: datetime | None = None
    reactions: dict[str, str] = {}


def timeline(events: list[tuple[int, ThreadEvent]]) -> list[TimelineEntry]:
    """The messages of a thread, ordered by ``(sent_at, seq)``."""
    entries: dict[int, TimelineEntry] = {}
    for seq, event in events:
        if isinstance(event, MessageReceived):
            entries[seq] = TimelineEntry(
                seq=seq,
                direction="inbound",
                channel=event.channel,
                sender=str(event.sender.identifier),
                content=event.content,
                sent_at=event.sent_at,
                recorded_at=event.at,
                provider_message_id=event.provider_message_id,
                reply_to=event.reply_to,
            )
        elif isinstance(event, MessageSent):
            entries[seq] = TimelineEntry(
                seq=seq,
                direction="outbound",
                channel=event.channel,
                sender=str(event.sender),
                content=event.content,
                sent_at=event.at,
                recorded_at=event.at,
                provider_message_id=event.provider_message_id,
                reply_to=event.reply_to,
            )
        elif isinstance(event, MessageErased):
            if event.original_type in ("message_received", "message_sent"):
                inbound = event.original_type == "message_received"
                entries[seq] = TimelineEntry(
                    seq=seq,
                    direction="inbound" if inbound else "outbound",
                    channel="",
                    sender="",
                    content=_EMPTY,
                    sent_at=event.at,
                    recorded_at=event.at,
                    erased=True,
                )
        else:
            target = getattr(event, "message_seq", None)
            entry = entries.get(target) if isinstance(target, int) else None
            if entry is None:
                continue
            if isinstance(event, StatusUpdated):
                current = entry.status.rank if entry.status is not None else 0
                if event.status.rank > current:
                    entries[entry.seq] = _replace(
                        entry, status=event.status, status_at=event.reported_at
                    )
            elif isinstance(event, MessageEdited):
                if not entry.deleted and not entry.erased:
                    entries[entry.seq] = _replace(entry, content=event.content, edited=True)
            elif isinstance(event, MessageDeleted):
                entries[entry.seq] = _replace(entry, content=_EMPTY, deleted=True)
            elif isinstance(event, ReactionSet):
                reactions = dict(entry.reactions)
                if event.emoji:
                    reactions[str(event.by)] = event.emoji
                else:
                    reactions.pop(str(event.by), None)
                entries[entry.seq] = _replace(entry, reactions=reactions)
            elif isinstance(event, ProviderIdRecorded):
                entries[entry.seq] = _replace(entry, provider_message_id=event.provider_message_id)
    return sorted(entries.values(), key=_order)


def _order(entry: TimelineEntry) -> tuple[datetime, int]:
    return (entry.sent_at, entry.seq)


class MessageMark(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What has been reported about one message so far (kept in an index)."""

    status: DeliveryStatus | None = None
    status_at: datetime | None = None
    deleted: bool = False
    edit_fingerprint: str = ""
    reactions: dict[str, str] = {}


def status_update(
    mark: MessageMark,
    seq: int,
    status: DeliveryStatus,
    reported_at: datetime,
    now: datetime,
    error: str = "",
) -> tuple[StatusUpdated, MessageMark] | None:
    """The event a status report adds, or None when it would not move the status on."""
    current = mark.status.rank if mark.status is not None else 0
    if status.rank <= current:
        return None
    event = StatusUpdated(
        at=now, message_seq=seq, status=status, reported_at=reported_at, error=error
    )
    return event, _replace(mark, status=status, status_at=reported_at)


def edit_update(
    mark: MessageMark,
    seq: int,
    content: Content,
    fingerprint: str,
    now: datetime,
    by: Party | None,
) -> tuple[MessageEdited, MessageMark] | None:
    """The edit event, or None for a deleted message or a repeat of the latest edit."""
    if mark.deleted or fingerprint == mark.edit_fingerprint:
        return None
    event = MessageEdited(at=now, message_seq=seq, content=content, by=by)
    return event, _replace(mark, edit_fingerprint=fingerprint)


def deletion_update(
    mark: MessageMark, seq: int, now: datetime, by: Party | None
) -> tuple[MessageDeleted, MessageMark] | None:
    """The tombstone event, or None if the message is already deleted."""
    if mark.deleted:
        return None
    return MessageDeleted(at=now, message_seq=seq, by=by), _replace(mark, deleted=True)


def reaction_update(
    mark: MessageMark, seq: int, by: Party, emoji: str, now: datetime
) -> tuple[ReactionSet, MessageMark] | None:
    """The reaction event, or None when it changes nothing (same emoji, or no reaction
    to remove)."""
    key = str(by)
    if mark.reactions.get(key, "") == emoji:
        return None
    reactions = dict(mark.reactions)
    if emoji:
        reactions[key] = emoji
    else:
        reactions.pop(key, None)
    event = ReactionSet(at=now, message_seq=seq, by=by, emoji=emoji)
    return event, _replace(mark, reactions=reactions)
