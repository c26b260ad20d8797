"""Events: the record. A thread is its ordered events; a customer is its identity events.

Both unions are msgspec tagged unions (the tag field is ``"type"``). The schema-evolution
rules that keep stored data readable (msgspec's own):

* a new event type is added to the union with a new tag; old data never contains it;
* a new field is added **at the end** of a struct **with a default**; old data decodes
  with the default;
* a field is never removed, renamed, or given a different type; a tag never changes.

Events carry ``at``: when convthread recorded them (the injected clock). Channel time
(the provider's own timestamp) is a separate field where a channel gives one.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Union

import msgspec

from convthread.domain.model import (
    Content,
    DeliveryStatus,
    Identifier,
    Party,
    SenderIdentifier,
    Trust,
)

__all__ = [
    "AttributeSet",
    "ControlReleased",
    "ControlTransferred",
    "CustomerCreated",
    "CustomerErased",
    "CustomerEvent",
    "CustomerMerged",
    "CustomerUnmerged",
    "Decision",
    "Evidence",
    "HandoffAccepted",
    "HandoffDeclined",
    "HandoffExpired",
    "HandoffOffered",
    "HandoffRequested",
    "IdentifierLinked",
    "IdentifierUnlinked",
    "IdentifierVerified",
    "IntentDetected",
    "LifecycleChanged",
    "MergeSuggested",
    "MergeSuggestionResolved",
    "MessageDeleted",
    "MessageEdited",
    "MessageErased",
    "MessageReceived",
    "MessageSent",
    "ProviderIdRecorded",
    "ReactionSet",
    "StatusUpdated",
    "ThreadEvent",
    "ThreadReassigned",
    "ThreadStarted",
    "ThreadStatus",
]


class ThreadStatus(str, enum.Enum):
    """Lifecycle of a thread. ``reopened`` threads are ``open`` again (an event says why)."""

    OPEN = "open"
    PENDING = "pending"  # waiting on the customer
    SNOOZED = "snoozed"  # until a time; sweep() wakes it
    RESOLVED = "resolved"  # may reopen within the reopen window
    CLOSED = "closed"  # final


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Why something was decided: the rule that decided, a sentence, and the evidence."""

    rule: str
    reason: str
    evidence: dict[str, str] = {}


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """How a link between an identifier and a customer was established."""

    channel: str = ""
    method: str = "channel"  # channel, otp, login, signed-token, agent, token, import
    by: str = ""  # who: a party ("agent:alice"), an adapter, the system
    at: datetime | None = None
    detail: str = ""


# --------------------------------------------------------------------------- threads


class _ThreadEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    at: datetime


class ThreadStarted(_ThreadEventBase, tag="thread_started"):
    customer_id: str
    channel: str
    topic: str | None = None
    predecessor: str | None = None
    decision: Decision | None = None


class MessageReceived(_ThreadEventBase, tag="message_received"):
    channel: str
    provider_message_id: str
    idempotency_key: str
    fingerprint: str
    sender: SenderIdentifier
    content: Content
    sent_at: datetime
    recipient: str = ""
    reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    decision: Decision | None = None
    resolution: Decision | None = None


class MessageSent(_ThreadEventBase, tag="message_sent"):
    channel: str
    sender: Party
    content: Content
    provider_message_id: str | None = None
    reply_to: str | None = None
    fencing_token: int = 0
    reference_token: str = ""
    idempotency_key: str | None = None
    fingerprint: str = ""


class ProviderIdRecorded(_ThreadEventBase, tag="provider_id_recorded"):
    message_seq: int
    provider_message_id: str


class StatusUpdated(_ThreadEventBase, tag="status_updated"):
    message_seq: int
    status: DeliveryStatus
    reported_at: datetime
    error: str = ""


class MessageEdited(_ThreadEventBase, tag="message_edited"):
    message_seq: int
    content: Content
    by: Party | None = None


class MessageDeleted(_ThreadEventBase, tag="message_deleted"):
    message_seq: int
    by: Party | None = None


class ReactionSet(_ThreadEventBase, tag="reaction_set"):
    message_seq: int
    by: Party
    emoji: str  # empty removes the party's reaction


class LifecycleChanged(_ThreadEventBase, tag="lifecycle_changed"):
    status: ThreadStatus
    reason: str = ""
    by: Party | None = None
    until: datetime | None = None
    reopened: bool = False


class ThreadReassigned(_ThreadEventBase, tag="thread_reassigned"):
    customer_id: str
    previous_customer_id: str
    merge_id: str = ""


class AttributeSet(_ThreadEventBase, tag="attribute_set"):
    name: str
    value: Any
    by: Party | None = None


class IntentDetected(_ThreadEventBase, tag="intent_detected"):
    name: str
    confidence: float = 1.0
    by: Party | None = None


class HandoffRequested(_ThreadEventBase, tag="handoff_requested"):
    handoff_id: str
    target: Party
    reason: str = ""
    requested_by: Party | None = None
    rule: str = ""


class HandoffOffered(_ThreadEventBase, tag="handoff_offered"):
    handoff_id: str
    offered_to: Party
    expires_at: datetime


class HandoffAccepted(_ThreadEventBase, tag="handoff_accepted"):
    handoff_id: str
    by: Party
    fencing_token: int
    snapshot_seq: int = 0


class HandoffDeclined(_ThreadEventBase, tag="handoff_declined"):
    handoff_id: str
    by: Party
    reason: str = ""


class HandoffExpired(_ThreadEventBase, tag="handoff_expired"):
    handoff_id: str


class ControlReleased(_ThreadEventBase, tag="control_released"):
    by: Party
    fencing_token: int
    reason: str = ""


class ControlTransferred(_ThreadEventBase, tag="control_transferred"):
    handoff_id: str
    by: Party | None
    to: Party
    fencing_token: int
    reason: str = ""


class MessageErased(_ThreadEventBase, tag="message_erased"):
    """Written over a message's place when its customer is erased (content gone)."""

    original_type: str


ThreadEvent = Union[
    ThreadStarted,
    MessageReceived,
    MessageSent,
    ProviderIdRecorded,
    StatusUpdated,
    MessageEdited,
    MessageDeleted,
    ReactionSet,
    LifecycleChanged,
    ThreadReassigned,
    AttributeSet,
    IntentDetected,
    HandoffRequested,
    HandoffOffered,
    HandoffAccepted,
    HandoffDeclined,
    HandoffExpired,
    ControlReleased,
    ControlTransferred,
    MessageErased,
]

# --------------------------------------------------------------------------- customers


class _CustomerEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    at: datetime


class CustomerCreated(_CustomerEventBase, tag="customer_created"):
    decision: Decision | None = None


class IdentifierLinked(_CustomerEventBase, tag="identifier_linked"):
    identifier: Identifier
    trust: Trust
    evidence: Evidence = Evidence()


class IdentifierUnlinked(_CustomerEventBase, tag="identifier_unlinked"):
    identifier: Identifier
    reason: str = ""
    by: str = ""


class IdentifierVerified(_CustomerEventBase, tag="identifier_verified"):
    identifier: Identifier
    previous: Trust
    evidence: Evidence = Evidence()


class CustomerMerged(_CustomerEventBase, tag="customer_merged"):
    """Recorded on both sides: ``survivor`` absorbed ``absorbed``."""

    merge_id: str
    survivor: str
    absorbed: str
    identifiers: tuple[tuple[Identifier, Trust], ...] = ()
    threads: tuple[str, ...] = ()
    decision: Decision | None = None


class CustomerUnmerged(_CustomerEventBase, tag="customer_unmerged"):
    merge_id: str
    survivor: str
    restored: str
    identifiers: tuple[tuple[Identifier, Trust], ...] = ()
    threads: tuple[str, ...] = ()
    by: str = ""
    reason: str = ""


class MergeSuggested(_CustomerEventBase, tag="merge_suggested"):
    suggestion_id: str
    other: str
    identifier: Identifier
    decision: Decision


class MergeSuggestionResolved(_CustomerEventBase, tag="merge_suggestion_resolved"):
    suggestion_id: str
    accepted: bool
    by: str = ""


class CustomerErased(_CustomerEventBase, tag="customer_erased"):
    by: str = ""


CustomerEvent = Union[
    CustomerCreated,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    CustomerMerged,
    CustomerUnmerged,
    MergeSuggested,
    MergeSuggestionResolved,
    CustomerErased,
]
