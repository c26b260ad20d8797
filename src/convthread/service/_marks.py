"""Per-message marks and statuses that arrive before their message (shared helpers).

* NS_MARK ``"{thread}|{seq}"`` -> :class:`~convthread.domain.timeline.MessageMark`: what
  has been reported about a message (status, edit, deletion, reactions), written only
  once something is reported, so ingest and send never pay for it.
* NS_EARLY ``"{channel}|{provider message id}"`` -> :class:`EarlyStatuses`: delivery
  statuses reported for a provider message id that no message carries yet (a provider
  webhook that overtakes the ``send`` call that records the id). They are applied, in
  rank order, in the same batch that records the id, and the entry is deleted.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread import codec
from convthread.domain.events import StatusUpdated
from convthread.domain.model import DeliveryStatus
from convthread.domain.timeline import MessageMark, status_update

__all__ = ["EarlyStatus", "EarlyStatuses", "decode_early", "decode_mark", "early_events"]

#: Most early statuses kept per provider message id (a provider sends a handful).
MAX_EARLY = 16


class EarlyStatus(msgspec.Struct, frozen=True, array_like=True):
    status: DeliveryStatus
    reported_at: datetime
    error: str = ""


class EarlyStatuses(msgspec.Struct, frozen=True, array_like=True):
    statuses: tuple[EarlyStatus, ...] = ()


_mark_decoder = msgspec.msgpack.Decoder(MessageMark)
_early_decoder = msgspec.msgpack.Decoder(EarlyStatuses)


def decode_mark(data: bytes) -> MessageMark:
    return _mark_decoder.decode(data)


def decode_early(data: bytes) -> EarlyStatuses:
    return _early_decoder.decode(data)


def early_events(
    early: EarlyStatuses, mark: MessageMark, seq: int, now: datetime
) -> tuple[list[StatusUpdated], MessageMark]:
    """The status events that early reports add to message ``seq``, lowest rank first."""
    events: list[StatusUpdated] = []
    for item in sorted(early.statuses, key=lambda e: (e.status.rank, e.reported_at)):
        update = status_update(mark, seq, item.status, item.reported_at, now, item.error)
        if update is not None:
            event, mark = update
            events.append(event)
    return events, mark


def encode(value: object) -> bytes:
    return codec.encode(value)
