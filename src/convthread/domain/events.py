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
from collections.abc import Mapping
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
from convthread.domain.reasons import Scalar, render_reason

__all__ = [
    "AttributeSet",
    "ContinuationIssued",
    "ContinuationRedeemed",
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
    "PointerChange",
    "ProviderIdRecorded",
    "ReactionSet",
    "StatusUpdated",
    "SuspendedThread",
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


class Decision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """Why something was decided: the rule that decided, a reason code with its
    parameters, and the evidence.

    :attr:`reason` is the sentence, rendered when read from the renderer registered for
    ``code`` (:func:`convthread.register_reason`), given ``params`` laid over
    ``evidence``. Codes are namespaced (``continuity.recency.within_window``,
    ``identity.exact_match``); a code nobody registered renders as ``"<code> {params}"``.

    A decision may carry a sentence instead of a code (:meth:`text`): records written
    before reason codes decode that way, and so does exported JSON read back; the stored
    sentence is then the reason.
    """

    rule: str
    code: str = ""
    evidence: dict[str, str] = {}
    params: dict[str, str | int | float | bool | None] = {}
    # The stored sentence, under the field name records of release 0.1.0 used.
    _reason: str = msgspec.field(default="", name="reason")

    @classmethod
    def text(cls, rule: str, reason: str, *, evidence: dict[str, str] | None = None) -> Decision:
        """A decision whose reason is the sentence ``reason``, stored as it is (for a
        custom rule that has no code of its own)."""
        return cls(rule=rule, evidence=evidence or {}, _reason=reason)

    def followed_by(
        self, code: str, params: Mapping[str, Scalar] | None = None, **evidence: str
    ) -> Decision:
        """This decision with the follow-up clause ``code`` (rendered after the sentence,
        with ``params``; see :mod:`convthread.domain.reasons`) and extra ``evidence``. A
        decision that stores a sentence gets the clause's rendering appended to it."""
        ev = {**self.evidence, **evidence} if evidence else self.evidence
        if self._reason:
            said = Decision(rule=self.rule, code=code, params=dict(params or {}), evidence=ev)
            return msgspec.structs.replace(self, evidence=ev, _reason=self._reason + said.reason)
        then = self.params.get("then")
        more = {**self.params, **(params or {}), "then": f"{then} {code}" if then else code}
        return Decision(rule=self.rule, code=self.code, evidence=ev, params=more)

    @property
    def reason(self) -> str:
        """The sentence: the stored one, or ``code`` rendered with ``params``."""
        return render_reason(self.code, self.params, self.evidence, self._reason)


class Evidence(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """How a link between an identifier and a customer was established."""

    channel: str = ""
    method: str = "channel"  # channel, otp, login, signed-token, agent, token, import
    by: str = ""  # who: a party ("agent:alice"), an adapter, the system
    at: datetime | None = None
    detail: str = ""


# --------------------------------------------------------------------------- threads


class _ThreadEventBase(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    array_like=True,
    tag_field="type",
):
    at: datetime


class ThreadStarted(_ThreadEventBase, frozen=True, tag="thread_started", kw_only=True):
    customer_id: str
    channel: str
    topic: str | None = None
    predecessor: str | None = None
    decision: Decision | None = None


class MessageReceived(_ThreadEventBase, frozen=True, tag="message_received", kw_only=True):
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


class MessageSent(_ThreadEventBase, frozen=True, tag="message_sent", kw_only=True):
    channel: str
    sender: Party
    content: Content
    provider_message_id: str | None = None
    reply_to: str | None = None
    fencing_token: int = 0
    reference_token: str = ""
    idempotency_key: str | None = None
    fingerprint: str = ""


class ProviderIdRecorded(_ThreadEventBase, frozen=True, tag="provider_id_recorded", kw_only=True):
    message_seq: int
    provider_message_id: str


class StatusUpdated(_ThreadEventBase, frozen=True, tag="status_updated", kw_only=True):
    message_seq: int
    status: DeliveryStatus
    reported_at: datetime
    error: str = ""


class MessageEdited(_ThreadEventBase, frozen=True, tag="message_edited", kw_only=True):
    message_seq: int
    content: Content
    by: Party | None = None


class MessageDeleted(_ThreadEventBase, frozen=True, tag="message_deleted", kw_only=True):
    message_seq: int
    by: Party | None = None


class ReactionSet(_ThreadEventBase, frozen=True, tag="reaction_set", kw_only=True):
    message_seq: int
    by: Party
    emoji: str  # empty removes the party's reaction


class LifecycleChanged(_ThreadEventBase, frozen=True, tag="lifecycle_changed", kw_only=True):
    status: ThreadStatus
    reason: str = ""
    by: Party | None = None
    until: datetime | None = None
    reopened: bool = False


class ThreadReassigned(_ThreadEventBase, frozen=True, tag="thread_reassigned", kw_only=True):
    customer_id: str
    previous_customer_id: str
    merge_id: str = ""


class AttributeSet(_ThreadEventBase, frozen=True, tag="attribute_set", kw_only=True):
    name: str
    value: Any
    by: Party | None = None


class IntentDetected(_ThreadEventBase, frozen=True, tag="intent_detected", kw_only=True):
    name: str
    confidence: float = 1.0
    by: Party | None = None


class HandoffRequested(_ThreadEventBase, frozen=True, tag="handoff_requested", kw_only=True):
    handoff_id: str
    target: Party
    reason: str = ""
    requested_by: Party | None = None
    rule: str = ""


class HandoffOffered(_ThreadEventBase, frozen=True, tag="handoff_offered", kw_only=True):
    handoff_id: str
    offered_to: Party
    expires_at: datetime


class HandoffAccepted(_ThreadEventBase, frozen=True, tag="handoff_accepted", kw_only=True):
    handoff_id: str
    by: Party
    fencing_token: int
    snapshot_seq: int = 0


class HandoffDeclined(_ThreadEventBase, frozen=True, tag="handoff_declined", kw_only=True):
    handoff_id: str
    by: Party
    reason: str = ""


class HandoffExpired(_ThreadEventBase, frozen=True, tag="handoff_expired", kw_only=True):
    handoff_id: str


class ControlReleased(_ThreadEventBase, frozen=True, tag="control_released", kw_only=True):
    by: Party
    fencing_token: int
    reason: str = ""
    handoff_id: str = ""


class ControlTransferred(_ThreadEventBase, frozen=True, tag="control_transferred", kw_only=True):
    handoff_id: str
    by: Party | None
    to: Party
    fencing_token: int
    reason: str = ""


class MessageErased(_ThreadEventBase, frozen=True, tag="message_erased", kw_only=True):
    """Written over a message's place when its customer is erased (content gone)."""

    original_type: str


class ContinuationIssued(_ThreadEventBase, frozen=True, tag="continuation_issued", kw_only=True):
    """A continuation token was issued for this thread (the code itself is never stored)."""

    token_id: str
    expires_at: datetime
    by: Party | None = None


class ContinuationRedeemed(
    _ThreadEventBase, frozen=True, tag="continuation_redeemed", kw_only=True
):
    """A continuation token was redeemed: the thread continues on ``channel``."""

    token_id: str
    channel: str
    identifier_kind: str
    customer_id: str
    linked: bool = False


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
    ContinuationIssued,
    ContinuationRedeemed,
]

# --------------------------------------------------------------------------- customers


class _CustomerEventBase(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    array_like=True,
    tag_field="type",
):
    at: datetime


class CustomerCreated(_CustomerEventBase, tag="customer_created", frozen=True, kw_only=True):
    decision: Decision | None = None


class IdentifierLinked(_CustomerEventBase, tag="identifier_linked", frozen=True, kw_only=True):
    identifier: Identifier
    trust: Trust
    evidence: Evidence = Evidence()


class IdentifierUnlinked(_CustomerEventBase, tag="identifier_unlinked", frozen=True, kw_only=True):
    identifier: Identifier
    reason: str = ""
    by: str = ""


class IdentifierVerified(_CustomerEventBase, tag="identifier_verified", frozen=True, kw_only=True):
    identifier: Identifier
    previous: Trust
    evidence: Evidence = Evidence()


class PointerChange(msgspec.Struct, frozen=True, array_like=True):
    """An index pointer (``open`` or ``latest`` namespace) a merge or unmerge changed:
    its value before and after (None: absent). Kept so unmerge can restore it exactly."""

    ns: str
    key: str
    before: str | None
    after: str | None


class SuspendedThread(msgspec.Struct, frozen=True, array_like=True):
    """A live thread of the absorbed customer that a merge resolved because the survivor
    already had a live thread for the same topic (one live thread per customer and
    topic). Unmerge gives it back its status (and snooze deadline)."""

    thread_id: str
    status: ThreadStatus
    until: datetime | None = None


class CustomerMerged(_CustomerEventBase, tag="customer_merged", frozen=True, kw_only=True):
    """Recorded on both sides: ``survivor`` absorbed ``absorbed``.

    ``identifiers`` and ``threads`` are what moved from the absorbed customer;
    ``pointers`` and ``suspended`` what the merge changed so that unmerge can undo it.
    """

    merge_id: str
    survivor: str
    absorbed: str
    identifiers: tuple[tuple[Identifier, Trust], ...] = ()
    threads: tuple[str, ...] = ()
    decision: Decision | None = None
    by: str = ""
    pointers: tuple[PointerChange, ...] = ()
    suspended: tuple[SuspendedThread, ...] = ()


class CustomerUnmerged(_CustomerEventBase, tag="customer_unmerged", frozen=True, kw_only=True):
    """Recorded on both sides: merge ``merge_id`` was undone; ``restored`` exists again
    with ``identifiers`` and ``threads``."""

    merge_id: str
    survivor: str
    restored: str
    identifiers: tuple[tuple[Identifier, Trust], ...] = ()
    threads: tuple[str, ...] = ()
    by: str = ""
    reason: str = ""
    pointers: tuple[PointerChange, ...] = ()
    resumed: tuple[SuspendedThread, ...] = ()


class MergeSuggested(_CustomerEventBase, tag="merge_suggested", frozen=True, kw_only=True):
    suggestion_id: str
    other: str
    identifier: Identifier
    decision: Decision


class MergeSuggestionResolved(
    _CustomerEventBase, tag="merge_suggestion_resolved", frozen=True, kw_only=True
):
    suggestion_id: str
    accepted: bool
    by: str = ""


class CustomerErased(_CustomerEventBase, tag="customer_erased", frozen=True, kw_only=True):
    """The customer was erased (appended: ``threads`` are the threads erased with it),
    or, with ``original_type``, what an identity event that carried personal data was
    rewritten as (its type tag, e.g. ``"identifier_linked"``)."""

    by: str = ""
    threads: tuple[str, ...] = ()
    original_type: str = ""


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
