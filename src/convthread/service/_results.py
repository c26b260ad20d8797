"""What service operations return."""

from __future__ import annotations

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    Decision,
    MessageReceived,
    MessageSent,
    ThreadEvent,
)
from convthread.domain.thread import CustomerState, ThreadState

__all__ = ["CustomerView", "IngestResult", "SendResult", "StoredEvent", "ThreadView"]


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
