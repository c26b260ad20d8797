"""What service operations return."""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    Decision,
    MessageReceived,
    MessageSent,
    ThreadEvent,
)
from convthread.domain.handoff import HandoffRecord
from convthread.domain.snapshot import Snapshot
from convthread.domain.thread import CustomerState, ThreadState

__all__ = [
    "ContinuationToken",
    "CustomerView",
    "HandoffResult",
    "IngestResult",
    "Redemption",
    "SendResult",
    "StoredEvent",
    "ThreadView",
]


class IngestResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :meth:`Conversations.ingest`.

    A redelivery (same idempotency key, same payload) returns the original outcome with
    ``duplicate=True``: the same customer, thread, sequence number and decisions.
    """

    customer_id: str
    thread_id: str
    seq: int
    event: MessageReceived
    duplicate: bool
    new_thread: bool
    new_customer: bool
    #: why this thread: the continuity rule, a sentence, the evidence
    decision: Decision
    #: why this customer: the identity rule, a sentence, the evidence
    resolution: Decision
    #: the handoff a handoff rule requested with this message (in the same batch), if any
    handoff: HandoffRecord | None = None


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :meth:`Conversations.send`."""

    thread_id: str
    seq: int
    event: MessageSent
    duplicate: bool


class StoredEvent(msgspec.Struct, frozen=True):
    """An event with its sequence number in its thread (or customer) stream."""

    seq: int
    event: ThreadEvent


class ThreadView(msgspec.Struct, frozen=True, kw_only=True):
    """A thread: its current state and its events in sequence order."""

    state: ThreadState
    events: tuple[StoredEvent, ...]

    @property
    def id(self) -> str:
        return self.state.id


class CustomerView(msgspec.Struct, frozen=True, kw_only=True):
    """A customer: current state, identity events, and thread ids (oldest first)."""

    state: CustomerState
    events: tuple[tuple[int, CustomerEvent], ...]
    thread_ids: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.state.id


class HandoffResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a handoff operation: the handoff's record as it stands, the
    snapshot handed to the receiver (accept and transfer), and whether the operation was
    a repeat (same handoff id: nothing new was written)."""

    record: HandoffRecord
    snapshot: Snapshot | None = None
    repeat: bool = False

    @property
    def id(self) -> str:
        return self.record.handoff_id

    @property
    def thread_id(self) -> str:
        return self.record.thread_id

    @property
    def fencing_token(self) -> int:
        """The token the new controller holds (accept, transfer) or that a release left."""
        return self.record.fencing_token


class ContinuationToken(msgspec.Struct, frozen=True, kw_only=True):
    """A continuation token: ``code`` for people (``"ABC-DEF-GHJ"``), ``signed`` for links."""

    token_id: str
    thread_id: str
    code: str
    signed: str
    expires_at: datetime


class Redemption(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of redeeming a continuation token."""

    token_id: str
    thread_id: str
    customer_id: str
    #: True when the identifier was newly linked to the customer (evidence "token")
    linked: bool
    seq: int
