"""The change feed's records: :class:`Change`, one stored event seen in commit order;
:func:`change_kind`, its dotted kind; :class:`Tracking` and :class:`Consumer`, where a
named consumer of the feed has got to.

Every event the service stores (a thread's or a customer's) is one change, at the
event's global position (see :mod:`convthread.ports`, semantics 6). Positions only grow
in commit order, so a reader that remembers the last position it handled resumes
exactly there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Union

import msgspec

from convthread.domain.events import (
    CustomerErased,
    CustomerEvent,
    LifecycleChanged,
    MessageErased,
    ThreadEvent,
    ThreadStatus,
)

__all__ = ["Change", "Consumer", "Tracking", "change_kind"]


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the store, as the change feed shows it.

    * ``position``: the event's global position (commit order; gaps are possible).
    * ``tenant``: the tenant whose data it is (``""``: the single default tenant).
    * ``kind``: a dotted name such as ``"message.received"`` or ``"customer.merged"``
      (see :func:`change_kind`; it stays the same after erasure).
    * ``thread_id`` / ``customer_id``: the thread (for thread events) and the customer
      the change concerns, where known.
    * ``stream`` and ``seq``: where the event is stored (its stream and sequence number).
    * ``at``: when the event was recorded.
    * ``event``: the event itself (after erasure, its redacted form).
    """

    position: int
    tenant: str
    kind: str
    thread_id: str | None
    customer_id: str | None
    stream: str
    seq: int
    at: datetime
    event: Union[ThreadEvent, CustomerEvent]


class Tracking(msgspec.Struct, frozen=True):
    """A consumer's checkpoint to commit with its own writes: ``consumer`` has handled
    every change up to ``position`` (see ``Conversations.commit_tracked``)."""

    consumer: str
    position: int


class Consumer(msgspec.Struct, frozen=True, kw_only=True):
    """A named consumer of the feed: the last position it acknowledged, how far behind
    the feed's last position that is (``lag``, in positions), and when it last moved
    (None if it never acknowledged anything)."""

    name: str
    tenant: str
    position: int
    lag: int
    updated_at: datetime | None


#: Kinds by event type tag, where the tag alone decides.
_KINDS: Final[dict[str, str]] = {
    # threads
    "thread_started": "thread.opened",
    "thread_reassigned": "thread.reassigned",
    "attribute_set": "thread.attribute_set",
    "intent_detected": "thread.intent_detected",
    # messages
    "message_received": "message.received",
    "message_sent": "message.sent",
    "provider_id_recorded": "message.provider_id",
    "status_updated": "message.status",
    "message_edited": "message.edited",
    "message_deleted": "message.deleted",
    "reaction_set": "message.reaction",
    # handoff
    "handoff_requested": "handoff.requested",
    "handoff_offered": "handoff.offered",
    "handoff_accepted": "handoff.accepted",
    "handoff_declined": "handoff.declined",
    "handoff_expired": "handoff.expired",
    "control_released": "handoff.released",
    "control_transferred": "handoff.transferred",
    # continuation tokens
    "continuation_issued": "continuation.issued",
    "continuation_redeemed": "continuation.redeemed",
    # customers and identity
    "customer_created": "customer.created",
    "identifier_linked": "identifier.linked",
    "identifier_unlinked": "identifier.unlinked",
    "identifier_verified": "identifier.verified",
    "customer_merged": "customer.merged",
    "customer_unmerged": "customer.unmerged",
    "merge_suggested": "customer.merge_suggested",
    "merge_suggestion_resolved": "customer.merge_suggestion_resolved",
    "customer_erased": "customer.erased",
}


def _tag(event: msgspec.Struct) -> str:
    return str(type(event).__struct_config__.tag)


def change_kind(event: ThreadEvent | CustomerEvent) -> str:
    """The dotted kind of ``event`` in the feed.

    A lifecycle change is ``thread.reopened``, ``thread.resolved`` or
    ``thread.status_changed``. An event rewritten by erasure keeps the kind it had
    (a message's ``MessageErased`` is still ``message.received``, an identifier's is
    still ``identifier.linked``), so a consumer that saw it before erasure and one that
    reads it after agree on what it was; only the closing ``CustomerErased`` is
    ``customer.erased``.
    """
    if isinstance(event, LifecycleChanged):
        if event.reopened:
            return "thread.reopened"
        if event.status is ThreadStatus.RESOLVED:
            return "thread.resolved"
        return "thread.status_changed"
    if isinstance(event, MessageErased):
        return _KINDS.get(event.original_type, "message.erased")
    if isinstance(event, CustomerErased) and event.original_type:
        return _KINDS.get(event.original_type, "customer.erased")
    return _KINDS[_tag(event)]
