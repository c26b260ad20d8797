"""Thread state as a fold of thread events, and customer state as a fold of identity events.

``evolve(state, seq, event)`` is pure: same events, same state. Stores may cache the
folded state (written in the same transaction as the events) so a long thread is never
replayed to answer "what is this thread now".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from convthread.domain.events import (
    AttributeSet,
    ControlReleased,
    ControlTransferred,
    CustomerCreated,
    CustomerErased,
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    HandoffAccepted,
    HandoffDeclined,
    HandoffExpired,
    HandoffOffered,
    HandoffRequested,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    IntentDetected,
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadReassigned,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.model import Identifier, Party, Trust
from convthread.errors import InvalidTransition, ValidationError

__all__ = [
    "FALLBACK_INTENT",
    "LIFECYCLE",
    "CustomerState",
    "LifecyclePolicy",
    "PendingHandoff",
    "ThreadState",
    "check_transition",
    "due_change",
    "evolve",
    "evolve_customer",
    "fold",
    "last_active",
    "lifecycle_change",
    "wake_on_inbound",
]

_replace: Final = msgspec.structs.replace

#: The intent name a bot records (``IntentDetected``) when it failed to understand the
#: customer; ``ThreadState.bot_failures`` counts them until control changes hands.
FALLBACK_INTENT: Final = "fallback"


class PendingHandoff(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True
):
    """A handoff that was requested and not yet accepted, declined or expired."""

    handoff_id: str
    target: Party
    requested_at: datetime
    offered_to: Party | None = None
    expires_at: datetime | None = None


class ThreadState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """What a thread is now: the fold of its events up to ``version``."""

    id: str
    customer_id: str
    status: ThreadStatus
    version: int
    created_at: datetime
    channel: str
    channels: tuple[str, ...]
    last_channel: str
    topic: str | None = None
    predecessor: str | None = None
    last_activity: datetime | None = None  # channel time of the latest message
    last_inbound_at: datetime | None = None
    status_changed_at: datetime | None = None
    snoozed_until: datetime | None = None
    message_count: int = 0
    controller: Party | None = None
    fencing_token: int = 0
    pending: PendingHandoff | None = None
    #: attribute values set on the thread (``AttributeSet``; last write wins)
    attributes: dict[str, Any] = {}
    #: fallback intents recorded since control last changed hands (see FALLBACK_INTENT)
    bot_failures: int = 0

    @property
    def thread_id(self) -> str:
        """The thread's id, by the name every other result uses (``IngestResult.thread_id``,
        ``Snapshot.thread_id``); the same value as ``id``, the field that is stored."""
        return self.id

    @property
    def is_open(self) -> bool:
        """Open, pending or snoozed: the thread is live for its customer and topic."""
        return self.status in _LIVE

    @property
    def topic_key(self) -> str:
        return self.topic or ""


_LIVE: Final = frozenset({ThreadStatus.OPEN, ThreadStatus.PENDING, ThreadStatus.SNOOZED})

# Allowed lifecycle moves: from -> set of to. Closed is final; a resolved thread may only
# reopen (open) or close.
LIFECYCLE: Final[dict[ThreadStatus, frozenset[ThreadStatus]]] = {
    ThreadStatus.OPEN: frozenset(
        {ThreadStatus.PENDING, ThreadStatus.SNOOZED, ThreadStatus.RESOLVED, ThreadStatus.CLOSED}
    ),
    ThreadStatus.PENDING: frozenset(
        {ThreadStatus.OPEN, ThreadStatus.SNOOZED, ThreadStatus.RESOLVED, ThreadStatus.CLOSED}
    ),
    # A snoozed thread may be snoozed again (a new wake-up time); every other move to the
    # same status is refused, so a lifecycle call always changes something.
    ThreadStatus.SNOOZED: frozenset(
        {
            ThreadStatus.OPEN,
            ThreadStatus.PENDING,
            ThreadStatus.SNOOZED,
            ThreadStatus.RESOLVED,
            ThreadStatus.CLOSED,
        }
    ),
    ThreadStatus.RESOLVED: frozenset({ThreadStatus.OPEN, ThreadStatus.CLOSED}),
    ThreadStatus.CLOSED: frozenset(),
}


def check_transition(state: ThreadState, to: ThreadStatus) -> None:
    """Raise InvalidTransition unless ``state`` may move to ``to``."""
    if to not in LIFECYCLE[state.status]:
        raise InvalidTransition(
            f"thread {state.id!r} cannot go from {state.status.value} to {to.value}"
        )


def lifecycle_change(
    state: ThreadState,
    to: ThreadStatus,
    now: datetime,
    *,
    until: datetime | None = None,
    by: Party | None = None,
    reason: str = "",
) -> LifecycleChanged:
    """The event that moves ``state`` to ``to`` at ``now``, or a typed error.

    * InvalidTransition when the LIFECYCLE table forbids the move;
    * ValidationError when snoozing without a wake-up time in the future, or passing
      ``until`` to anything but a snooze.
    """
    check_transition(state, to)
    if to is ThreadStatus.SNOOZED:
        if until is None:
            raise ValidationError("snoozing needs 'until', the time the thread wakes up")
        if until <= now:
            raise ValidationError(
                f"snooze until {until.isoformat()} is not after now ({now.isoformat()})"
            )
    elif until is not None:
        raise ValidationError("'until' only applies when snoozing")
    reopened = to is ThreadStatus.OPEN and state.status is ThreadStatus.RESOLVED
    return LifecycleChanged(at=now, status=to, reason=reason, by=by, until=until, reopened=reopened)


def wake_on_inbound(state: ThreadState, now: datetime, channel: str) -> LifecycleChanged | None:
    """A customer message on a pending or snoozed thread makes it open again."""
    if state.status is ThreadStatus.PENDING:
        why = f"the customer replied on {channel} (it was waiting on the customer)"
    elif state.status is ThreadStatus.SNOOZED:
        until = state.snoozed_until.isoformat() if state.snoozed_until else "?"
        why = f"the customer wrote on {channel} (it was snoozed until {until})"
    else:
        return None
    return LifecycleChanged(at=now, status=ThreadStatus.OPEN, reason=why)


@dataclass(frozen=True)
class LifecyclePolicy:
    """Time-based lifecycle moves, applied by an explicit ``sweep(now)`` only.

    * ``auto_resolve_after``: an open thread with no activity for this long is resolved
      (None: never).
    * ``pending_resolve_after``: the same for a pending thread (waiting on the customer);
      None means ``auto_resolve_after`` applies to pending threads too.

    Activity is the later of the last message (channel time) and the last status change.
    Snoozed threads wake (become open) once their ``until`` has passed.
    """

    auto_resolve_after: timedelta | None = None
    pending_resolve_after: timedelta | None = None

    def __post_init__(self) -> None:
        for name in ("auto_resolve_after", "pending_resolve_after"):
            value = getattr(self, name)
            if value is not None and value <= timedelta(0):
                raise ValidationError(f"{name} must be a positive duration")

    def inactivity_limit(self, status: ThreadStatus) -> timedelta | None:
        if status is ThreadStatus.PENDING and self.pending_resolve_after is not None:
            return self.pending_resolve_after
        if status in (ThreadStatus.OPEN, ThreadStatus.PENDING):
            return self.auto_resolve_after
        return None


def last_active(state: ThreadState) -> datetime:
    """When anything last happened on the thread: a message or a status change."""
    last = state.last_activity or state.created_at
    changed = state.status_changed_at
    return changed if changed is not None and changed > last else last


def due_change(
    state: ThreadState, now: datetime, policy: LifecyclePolicy
) -> LifecycleChanged | None:
    """The time-based move that is due for ``state`` at ``now``, if any."""
    if state.status is ThreadStatus.SNOOZED:
        until = state.snoozed_until
        if until is not None and until <= now:
            return LifecycleChanged(
                at=now,
                status=ThreadStatus.OPEN,
                reason=f"snooze ended at {until.isoformat()}",
            )
        return None
    limit = policy.inactivity_limit(state.status)
    if limit is None:
        return None
    last = last_active(state)
    if now - last < limit:
        return None
    return LifecycleChanged(
        at=now,
        status=ThreadStatus.RESOLVED,
        reason=(
            f"auto-resolved: no activity since {last.isoformat()} "
            f"({state.status.value} for longer than {limit})"
        ),
    )


def _add_channel(state: ThreadState, channel: str) -> tuple[str, ...]:
    if channel in state.channels:
        return state.channels
    return (*state.channels, channel)


def evolve(state: ThreadState | None, seq: int, event: ThreadEvent) -> ThreadState:
    """Apply one event (at sequence number ``seq``) to ``state``."""
    if state is None:
        if not isinstance(event, ThreadStarted):
            raise InvalidTransition(f"a thread must start with thread_started, not {event!r}")
        raise InvalidTransition("evolve(None, ...) needs the thread id; use start_state()")
    if isinstance(event, MessageReceived):
        last = state.last_activity
        activity = event.sent_at if last is None or event.sent_at > last else last
        return _replace(
            state,
            version=seq,
            channels=_add_channel(state, event.channel),
            last_channel=event.channel,
            last_activity=activity,
            last_inbound_at=event.at,
            message_count=state.message_count + 1,
        )
    if isinstance(event, MessageSent):
        last = state.last_activity
        activity = event.at if last is None or event.at > last else last
        return _replace(
            state,
            version=seq,
            channels=_add_channel(state, event.channel),
            last_channel=event.channel,
            last_activity=activity,
            message_count=state.message_count + 1,
        )
    if isinstance(event, LifecycleChanged):
        return _replace(
            state,
            version=seq,
            status=event.status,
            status_changed_at=event.at,
            snoozed_until=event.until if event.status is ThreadStatus.SNOOZED else None,
        )
    if isinstance(event, ThreadReassigned):
        return _replace(state, version=seq, customer_id=event.customer_id)
    if isinstance(event, HandoffRequested):
        requested = PendingHandoff(
            handoff_id=event.handoff_id, target=event.target, requested_at=event.at
        )
        return _replace(state, version=seq, pending=requested)
    if isinstance(event, HandoffOffered):
        pending: PendingHandoff | None = state.pending
        if pending is not None and pending.handoff_id == event.handoff_id:
            pending = _replace(pending, offered_to=event.offered_to, expires_at=event.expires_at)
        return _replace(state, version=seq, pending=pending)
    if isinstance(event, HandoffAccepted):
        return _replace(
            state,
            version=seq,
            controller=event.by,
            fencing_token=event.fencing_token,
            pending=None,
            bot_failures=0,
        )
    if isinstance(event, HandoffDeclined | HandoffExpired):
        pending = state.pending
        if pending is not None and pending.handoff_id == event.handoff_id:
            pending = _replace(pending, offered_to=None, expires_at=None)
        return _replace(state, version=seq, pending=pending)
    if isinstance(event, ControlReleased):
        return _replace(
            state,
            version=seq,
            controller=None,
            fencing_token=event.fencing_token,
            bot_failures=0,
        )
    if isinstance(event, ControlTransferred):
        return _replace(
            state,
            version=seq,
            controller=event.to,
            fencing_token=event.fencing_token,
            pending=None,
            bot_failures=0,
        )
    if isinstance(event, AttributeSet):
        attributes = dict(state.attributes)
        attributes[event.name] = event.value
        return _replace(state, version=seq, attributes=attributes)
    if isinstance(event, IntentDetected) and event.name == FALLBACK_INTENT:
        return _replace(state, version=seq, bot_failures=state.bot_failures + 1)
    return _replace(state, version=seq)


def start_state(thread_id: str, event: ThreadStarted) -> ThreadState:
    """The state of a thread right after its ``thread_started`` event (sequence 1)."""
    return ThreadState(
        id=thread_id,
        customer_id=event.customer_id,
        status=ThreadStatus.OPEN,
        version=1,
        created_at=event.at,
        channel=event.channel,
        channels=(event.channel,),
        last_channel=event.channel,
        topic=event.topic,
        predecessor=event.predecessor,
        status_changed_at=event.at,
    )


def fold(thread_id: str, events: list[tuple[int, ThreadEvent]]) -> ThreadState:
    """Fold ``(seq, event)`` pairs, starting with ``thread_started``, into a state."""
    if not events:
        raise InvalidTransition(f"thread {thread_id!r} has no events")
    seq0, first = events[0]
    if seq0 != 1 or not isinstance(first, ThreadStarted):
        raise InvalidTransition(f"thread {thread_id!r} does not start with thread_started")
    state = start_state(thread_id, first)
    for seq, event in events[1:]:
        state = evolve(state, seq, event)
    return state


# --------------------------------------------------------------------------- customers


class CustomerState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """A customer now: linked identifiers with their trust, and merge status."""

    id: str
    version: int
    created_at: datetime
    identifiers: dict[str, tuple[Identifier, Trust]] = {}
    merged_into: str | None = None
    erased: bool = False

    def trust_of(self, identifier: Identifier) -> Trust | None:
        entry = self.identifiers.get(identifier.key)
        return None if entry is None else entry[1]


def evolve_customer(
    state: CustomerState | None, customer_id: str, seq: int, event: CustomerEvent
) -> CustomerState:
    """Apply one identity event to a customer's state."""
    if state is None:
        if not isinstance(event, CustomerCreated):
            raise InvalidTransition(f"customer {customer_id!r} must start with customer_created")
        return CustomerState(id=customer_id, version=seq, created_at=event.at)
    if isinstance(event, IdentifierLinked):
        idents = dict(state.identifiers)
        idents[event.identifier.key] = (event.identifier, event.trust)
        return _replace(state, version=seq, identifiers=idents)
    if isinstance(event, IdentifierVerified):
        idents = dict(state.identifiers)
        idents[event.identifier.key] = (event.identifier, Trust.VERIFIED)
        return _replace(state, version=seq, identifiers=idents)
    if isinstance(event, IdentifierUnlinked):
        idents = dict(state.identifiers)
        idents.pop(event.identifier.key, None)
        return _replace(state, version=seq, identifiers=idents)
    if isinstance(event, CustomerMerged):
        if event.absorbed == customer_id:
            return _replace(state, version=seq, identifiers={}, merged_into=event.survivor)
        idents = dict(state.identifiers)
        for ident, trust in event.identifiers:
            idents[ident.key] = (ident, trust)
        return _replace(state, version=seq, identifiers=idents)
    if isinstance(event, CustomerUnmerged):
        if event.restored == customer_id:
            idents = {i.key: (i, t) for i, t in event.identifiers}
            return _replace(state, version=seq, identifiers=idents, merged_into=None)
        idents = dict(state.identifiers)
        for ident, _trust in event.identifiers:
            idents.pop(ident.key, None)
        return _replace(state, version=seq, identifiers=idents)
    if isinstance(event, CustomerErased):
        return _replace(state, version=seq, identifiers={}, erased=True)
    return _replace(state, version=seq)
