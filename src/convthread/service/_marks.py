"""Per-message marks and statuses that arrive before their message (shared helpers).

* NS_MARK ``"{thread}|{seq}"`` -> :class:`~convthread.domain.timeline.MessageMark`: what
  has been reported about a message (status, edit, deletion, reactions), written only
  once something is reported, so ingest and send never pay for it.
* NS_EARLY ``"{channel}|{provider message id}"`` -> :class:`EarlyStatuses`: delivery
  statuses reported for a provider message id that no message carries yet (a provider
  webhook that overtakes the ``send`` call that records the id). They are applied, in
  rank order, in the same batch that records the id, and the entry is deleted.

An entry holds at most one report per status (:func:`hold`): the one with the earliest
``reported_at`` (the first to arrive on a tie), so however many reports arrive, in any
order, the highest status reported is kept and an entry never holds more than one report
per :class:`~convthread.domain.model.DeliveryStatus`. Entries written by releases that kept
a window of reports decode unchanged; the next report held for them is folded in the same
way.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread import codec
from convthread.domain.events import StatusUpdated
from convthread.domain.model import DeliveryStatus
from convthread.domain.timeline import MessageMark, status_update

__all__ = [
    "EarlyStatus",
    "EarlyStatuses",
    "decode_early",
    "decode_mark",
    "early_events",
    "hold",
]


class EarlyStatus(msgspec.Struct, frozen=True, array_like=True):
    status: DeliveryStatus
    reported_at: datetime
    error: str = ""


class EarlyStatuses(msgspec.Struct, frozen=True, array_like=True):
    statuses: tuple[EarlyStatus, ...] = ()


_mark_decoder = codec.decoder(MessageMark)
_early_decoder = codec.decoder(EarlyStatuses)


def decode_mark(data: bytes) -> MessageMark:
    return _mark_decoder(data)


def decode_early(data: bytes) -> EarlyStatuses:
    return _early_decoder(data)


def hold(early: EarlyStatuses, report: EarlyStatus) -> EarlyStatuses | None:
    """``early`` with ``report`` held, or None when the report adds nothing (its status is
    already held with the same or an earlier ``reported_at``).

    One report is kept per status: the earliest reported, the first held on a tie.
    """
    kept: dict[DeliveryStatus, EarlyStatus] = {}
    for item in (*early.statuses, report):
        best = kept.get(item.status)
        if best is None or item.reported_at < best.reported_at:
            kept[item.status] = item
    if kept.get(report.status) is not report:
        return None
    return EarlyStatuses(tuple(sorted(kept.values(), key=_rank_order)))


def _rank_order(item: EarlyStatus) -> tuple[int, datetime]:
    return (item.status.rank, item.reported_at)


def early_events(
    early: EarlyStatuses, mark: MessageMark, seq: int, now: datetime
) -> tuple[list[StatusUpdated], MessageMark]:
    """The status events that early reports add to message ``seq``, lowest rank first."""
    events: list[StatusUpdated] = []
    for item in sorted(early.statuses, key=_rank_order):
        update = status_update(mark, seq, item.status, item.reported_at, now, item.error)
        if update is not None:
            event, mark = update
            events.append(event)
    return events, mark


def encode(value: object) -> bytes:
    return codec.encode(value)
