"""Handoff: who controls a thread, and the state machine that moves control.

Exactly one party controls a thread at a time (a bot, a queue or an agent), or none.
Control moves only by events, each carrying the handoff id that makes it idempotent:

* ``request``: somebody (the bot, a rule, the customer) asks for ``target`` to take over;
  at most one handoff is pending per thread.
* ``offer``: the pending handoff is offered to one party until ``expires_at``.
* ``accept``: the offered party (or, for a handoff to a queue, any agent) takes control.
* ``decline`` / ``expire``: the offer ends; the handoff stays pending, to be offered again.
* ``release``: the controller gives control up (the thread has no controller).
* ``transfer``: the controller hands control straight to another party.

Every change of control (accept, release, transfer) increments the thread's fencing
token. A write on behalf of a controller carries the token it holds; a token that is not
the thread's current one is stale and is refused with
:class:`~convthread.errors.StaleControllerError`.

Everything here is pure: the ``decide_*`` functions take the thread state, the handoff's
record (from the service's index) and the time, and return a :class:`Step`: the events
to append and the record as it will be. The service writes both in one batch.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import msgspec

from convthread.domain.events import (
    ControlReleased,
    ControlTransferred,
    HandoffAccepted,
    HandoffDeclined,
    HandoffExpired,
    HandoffOffered,
    HandoffRequested,
    MessageReceived,
    ThreadEvent,
    ThreadStatus,
)
from convthread.domain.model import Channel, Party, PartyKind
from convthread.domain.thread import ThreadState
from convthread.errors import (
    HandoffTaken,
    InvalidTransition,
    StaleControllerError,
    ValidationError,
)

__all__ = [
    "AsksForHuman",
    "AttributeEquals",
    "BotFailures",
    "HandoffContext",
    "HandoffKind",
    "HandoffRecord",
    "HandoffRequest",
    "HandoffRule",
    "HandoffStatus",
    "MovedToChannel",
    "Step",
    "apply_rules",
    "check_token",
    "decide_accept",
    "decide_decline",
    "decide_expire",
    "decide_offer",
    "decide_release",
    "decide_request",
    "decide_transfer",
    "evolve_record",
]

_replace: Final = msgspec.structs.replace
_CONTROLLERS: Final = frozenset({PartyKind.BOT, PartyKind.QUEUE, PartyKind.AGENT})


class HandoffKind(str, enum.Enum):
    """What a handoff record stands for."""

    HANDOFF = "handoff"  # request -> offer -> accept
    RELEASE = "release"  # the controller let go
    TRANSFER = "transfer"  # the controller handed over directly


class HandoffStatus(str, enum.Enum):
    """Where a handoff is. ``requested`` again after a decline or an expired offer."""

    REQUESTED = "requested"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    CANCELLED = "cancelled"  # a transfer took control while it was pending
    RELEASED = "released"
    TRANSFERRED = "transferred"


class HandoffRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """One handoff (or release, or transfer) and where it stands."""

    handoff_id: str
    thread_id: str
    kind: HandoffKind
    status: HandoffStatus
    at: datetime  # when it was requested (or released, transferred)
    target: Party | None = None
    reason: str = ""
    rule: str = ""
    requested_by: Party | None = None
    offered_to: Party | None = None
    expires_at: datetime | None = None
    declined_by: tuple[Party, ...] = ()
    expired_offers: int = 0
    accepted_by: Party | None = None
    accepted_at: datetime | None = None
    #: the fencing token this handoff granted (accept, transfer) or left (release)
    fencing_token: int = 0
    #: the thread sequence number the receiver's context snapshot was taken at
    snapshot_seq: int = 0
    #: the sequence number of the latest event of this handoff
    seq: int = 0

    @property
    def is_pending(self) -> bool:
        return self.status in (HandoffStatus.REQUESTED, HandoffStatus.OFFERED)


class Step(msgspec.Struct, frozen=True):
    """What a decision writes: ``events`` (none for an idempotent repeat) and the record."""

    events: tuple[ThreadEvent, ...]
    record: HandoffRecord

    @property
    def repeat(self) -> bool:
        """True when the same operation had already been done: nothing new to write."""
        return not self.events


# --------------------------------------------------------------------------- checks


def check_token(state: ThreadState, fencing_token: int | None) -> None:
    """Raise StaleControllerError unless ``fencing_token`` is None or the current one."""
    if fencing_token is not None and fencing_token != state.fencing_token:
        raise StaleControllerError(state.id, fencing_token, state.fencing_token)


def _controller_party(party: Party, what: str) -> None:
    if party.kind not in _CONTROLLERS:
        raise ValidationError(f"{what} must be a bot, a queue or an agent, not {party}")


def _live(state: ThreadState) -> None:
    if state.status is ThreadStatus.CLOSED:
        raise InvalidTransition(f"thread {state.id!r} is closed; control cannot move")


def _same_thread(record: HandoffRecord, state: ThreadState) -> None:
    if record.thread_id != state.id:
        raise InvalidTransition(
            f"handoff id {record.handoff_id!r} belongs to thread {record.thread_id!r}"
        )


# --------------------------------------------------------------------------- decisions


def decide_request(
    state: ThreadState,
    existing: HandoffRecord | None,
    *,
    handoff_id: str,
    target: Party,
    now: datetime,
    reason: str = "",
    requested_by: Party | None = None,
    fencing_token: int | None = None,
    rule: str = "",
) -> Step:
    """Request that ``target`` take over the thread."""
    if existing is not None:
        _same_thread(existing, state)
        if existing.kind is HandoffKind.HANDOFF and existing.target == target:
            return Step((), existing)
        raise InvalidTransition(f"handoff id {handoff_id!r} was already used for another move")
    _controller_party(target, "a handoff target")
    _live(state)
    check_token(state, fencing_token)
    if state.pending is not None:
        raise InvalidTransition(
            f"thread {state.id!r} already has handoff {state.pending.handoff_id!r} pending"
        )
    if state.controller == target:
        raise InvalidTransition(f"{target} already controls thread {state.id!r}")
    event = HandoffRequested(
        at=now,
        handoff_id=handoff_id,
        target=target,
        reason=reason,
        requested_by=requested_by,
        rule=rule,
    )
    record = HandoffRecord(
        handoff_id=handoff_id,
        thread_id=state.id,
        kind=HandoffKind.HANDOFF,
        status=HandoffStatus.REQUESTED,
        at=now,
        target=target,
        reason=reason,
        rule=rule,
        requested_by=requested_by,
        seq=state.version + 1,
    )
    return Step((event,), record)


def _pending_handoff(state: ThreadState, record: HandoffRecord) -> None:
    _same_thread(record, state)
    if record.status is HandoffStatus.ACCEPTED and record.accepted_by is not None:
        raise HandoffTaken(record.handoff_id, str(record.accepted_by))
    if not record.is_pending:
        raise InvalidTransition(f"handoff {record.handoff_id!r} is {record.status.value}")
    if state.pending is None or state.pending.handoff_id != record.handoff_id:
        raise InvalidTransition(f"handoff {record.handoff_id!r} is no longer pending")


def _expired(record: HandoffRecord, now: datetime) -> bool:
    return (
        record.status is HandoffStatus.OFFERED
        and record.expires_at is not None
        and now >= record.expires_at
    )


def decide_offer(
    state: ThreadState, record: HandoffRecord, *, to: Party, now: datetime, expires_at: datetime
) -> Step:
    """Offer the pending handoff to ``to`` until ``expires_at``.

    Offering again to the party that holds a live offer is a repeat; an expired offer is
    recorded as expired before the new one is made.
    """
    _controller_party(to, "an offer")
    if (
        record.status is HandoffStatus.OFFERED
        and record.offered_to == to
        and not _expired(record, now)
    ):
        return Step((), record)
    _pending_handoff(state, record)
    if expires_at <= now:
        raise ValidationError("an offer must expire after it is made")
    events: list[ThreadEvent] = []
    if record.status is HandoffStatus.OFFERED:
        if not _expired(record, now):
            raise InvalidTransition(
                f"handoff {record.handoff_id!r} is offered to {record.offered_to} until "
                f"{record.expires_at.isoformat() if record.expires_at else '?'}"
            )
        events.append(HandoffExpired(at=now, handoff_id=record.handoff_id))
    events.append(
        HandoffOffered(at=now, handoff_id=record.handoff_id, offered_to=to, expires_at=expires_at)
    )
    return _step(record, state, events)


def _may_accept(record: HandoffRecord, by: Party) -> bool:
    if record.status is HandoffStatus.OFFERED:
        offered = record.offered_to
        if offered is not None and offered.kind is PartyKind.QUEUE:
            return by == offered or by.kind is PartyKind.AGENT
        return by == offered
    target = record.target
    if target is not None and target.kind is PartyKind.QUEUE:
        return by == target or by.kind is PartyKind.AGENT
    return by == target


def decide_accept(state: ThreadState, record: HandoffRecord, *, by: Party, now: datetime) -> Step:
    """``by`` takes control. Accepting again is a repeat; anyone else is told who won."""
    _controller_party(by, "the accepting party")
    if record.status is HandoffStatus.ACCEPTED and record.accepted_by == by:
        return Step((), record)
    _pending_handoff(state, record)
    _live(state)
    events: list[ThreadEvent] = []
    effective = record
    if _expired(record, now):
        if by == record.offered_to or not _may_accept(_without_offer(record), by):
            raise InvalidTransition(
                f"the offer of handoff {record.handoff_id!r} expired at "
                f"{record.expires_at.isoformat() if record.expires_at else '?'}"
            )
        # nobody swept the expired offer yet: record its expiry, then the acceptance
        events.append(HandoffExpired(at=now, handoff_id=record.handoff_id))
        effective = _without_offer(record)
    if not _may_accept(effective, by):
        raise InvalidTransition(f"handoff {record.handoff_id!r} is not offered to {by}")
    if state.controller == by:
        raise InvalidTransition(f"{by} already controls thread {state.id!r}")
    events.append(
        HandoffAccepted(
            at=now,
            handoff_id=record.handoff_id,
            by=by,
            fencing_token=state.fencing_token + 1,
            snapshot_seq=state.version,
        )
    )
    return _step(record, state, events)


def _without_offer(record: HandoffRecord) -> HandoffRecord:
    return _replace(record, status=HandoffStatus.REQUESTED, offered_to=None, expires_at=None)


def decide_decline(
    state: ThreadState, record: HandoffRecord, *, by: Party, now: datetime, reason: str = ""
) -> Step:
    """The offered party declines the offer; the handoff stays pending."""
    if record.status is HandoffStatus.REQUESTED and by in record.declined_by:
        return Step((), record)
    _pending_handoff(state, record)
    if record.status is not HandoffStatus.OFFERED:
        raise InvalidTransition(f"handoff {record.handoff_id!r} has no offer to decline")
    offered = record.offered_to
    if by != offered and not (
        offered is not None and offered.kind is PartyKind.QUEUE and by.kind is PartyKind.AGENT
    ):
        raise InvalidTransition(f"handoff {record.handoff_id!r} is not offered to {by}")
    event = HandoffDeclined(at=now, handoff_id=record.handoff_id, by=by, reason=reason)
    return _step(record, state, [event])


def decide_expire(state: ThreadState, record: HandoffRecord, *, now: datetime) -> Step:
    """Expire the offer of ``record`` if its time has come; otherwise a repeat (no-op)."""
    _same_thread(record, state)
    if not _expired(record, now):
        return Step((), record)
    event = HandoffExpired(at=now, handoff_id=record.handoff_id)
    return _step(record, state, [event])


def decide_release(
    state: ThreadState,
    existing: HandoffRecord | None,
    *,
    handoff_id: str,
    by: Party,
    fencing_token: int,
    now: datetime,
    reason: str = "",
) -> Step:
    """The controller (holding ``fencing_token``) gives control up."""
    if existing is not None:
        _same_thread(existing, state)
        if existing.kind is HandoffKind.RELEASE:
            return Step((), existing)
        raise InvalidTransition(f"handoff id {handoff_id!r} was already used for another move")
    check_token(state, fencing_token)
    if state.controller is None:
        raise InvalidTransition(f"thread {state.id!r} has no controller to release")
    if by != state.controller and by.kind is not PartyKind.SYSTEM:
        raise InvalidTransition(f"{by} does not control thread {state.id!r}")
    event = ControlReleased(
        at=now, by=by, fencing_token=state.fencing_token + 1, reason=reason, handoff_id=handoff_id
    )
    record = HandoffRecord(
        handoff_id=handoff_id,
        thread_id=state.id,
        kind=HandoffKind.RELEASE,
        status=HandoffStatus.RELEASED,
        at=now,
        reason=reason,
        requested_by=by,
        fencing_token=event.fencing_token,
        snapshot_seq=state.version,
        seq=state.version + 1,
    )
    return Step((event,), record)


def decide_transfer(
    state: ThreadState,
    existing: HandoffRecord | None,
    *,
    handoff_id: str,
    to: Party,
    by: Party | None,
    fencing_token: int,
    now: datetime,
    reason: str = "",
) -> Step:
    """Hand control straight to ``to``. ``fencing_token`` must be the current one (0 on a
    thread nobody ever controlled). A pending handoff is cancelled by the transfer."""
    if existing is not None:
        _same_thread(existing, state)
        if existing.kind is HandoffKind.TRANSFER and existing.target == to:
            return Step((), existing)
        raise InvalidTransition(f"handoff id {handoff_id!r} was already used for another move")
    _controller_party(to, "a transfer target")
    _live(state)
    check_token(state, fencing_token)
    if (
        state.controller is not None
        and by != state.controller
        and (by is None or by.kind is not PartyKind.SYSTEM)
    ):
        raise InvalidTransition(f"{by} does not control thread {state.id!r}")
    if state.controller == to:
        raise InvalidTransition(f"{to} already controls thread {state.id!r}")
    event = ControlTransferred(
        at=now,
        handoff_id=handoff_id,
        by=by,
        to=to,
        fencing_token=state.fencing_token + 1,
        reason=reason,
    )
    record = HandoffRecord(
        handoff_id=handoff_id,
        thread_id=state.id,
        kind=HandoffKind.TRANSFER,
        status=HandoffStatus.TRANSFERRED,
        at=now,
        target=to,
        reason=reason,
        requested_by=by,
        accepted_by=to,
        accepted_at=now,
        fencing_token=event.fencing_token,
        snapshot_seq=state.version,
        seq=state.version + 1,
    )
    return Step((event,), record)


def _step(record: HandoffRecord, state: ThreadState, events: list[ThreadEvent]) -> Step:
    seq = state.version
    for event in events:
        seq += 1
        record = evolve_record(record, seq, event)
    return Step(tuple(events), record)


def evolve_record(record: HandoffRecord, seq: int, event: ThreadEvent) -> HandoffRecord:
    """Apply one handoff event to its record."""
    if isinstance(event, HandoffOffered):
        return _replace(
            record,
            status=HandoffStatus.OFFERED,
            offered_to=event.offered_to,
            expires_at=event.expires_at,
            seq=seq,
        )
    if isinstance(event, HandoffAccepted):
        return _replace(
            record,
            status=HandoffStatus.ACCEPTED,
            accepted_by=event.by,
            accepted_at=event.at,
            fencing_token=event.fencing_token,
            snapshot_seq=event.snapshot_seq,
            seq=seq,
        )
    if isinstance(event, HandoffDeclined):
        return _replace(
            record,
            status=HandoffStatus.REQUESTED,
            offered_to=None,
            expires_at=None,
            declined_by=(*record.declined_by, event.by),
            seq=seq,
        )
    if isinstance(event, HandoffExpired):
        return _replace(
            record,
            status=HandoffStatus.REQUESTED,
            offered_to=None,
            expires_at=None,
            expired_offers=record.expired_offers + 1,
            seq=seq,
        )
    if isinstance(event, ControlTransferred):
        return _replace(record, status=HandoffStatus.CANCELLED, seq=seq)
    return record


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class HandoffContext:
    """What a handoff rule looks at, right after an inbound message was appended."""

    #: the thread with the message applied
    state: ThreadState
    #: the thread before the message (None for a new thread)
    previous: ThreadState | None
    #: the message
    event: MessageReceived
    #: its sequence number
    seq: int


@dataclass(frozen=True)
class HandoffRequest:
    """A rule's verdict: hand the thread to ``target``, because ``reason``."""

    target: Party
    reason: str
    rule: str


class HandoffRule(Protocol):
    """A rule: return a :class:`HandoffRequest`, or None to pass."""

    def __call__(self, ctx: HandoffContext) -> HandoffRequest | None: ...


def _party(value: Party | str) -> Party:
    return Party.parse(value)


_HUMAN_PHRASES: Final = (
    r"\b(?:talk|speak|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s*)?(?:real\s+|live\s+)?"
    r"(?:human|person|agent|one|body|representative|operator)\b",
    r"\b(?:real|live)\s+(?:human|person|agent)\b",
    r"\bhuman\s+(?:agent|being|please)\b",
    r"^\s*(?:agent|human|operator|representative)[\s!.?]*$",
    r"\bcustomer\s+service\s+(?:agent|representative)\b",
)


@dataclass(frozen=True)
class AsksForHuman:
    """The customer asks for a person ("can I talk to a human?", "agent").

    ``patterns`` are case-insensitive regular expressions; the defaults are English.
    """

    target: Party | str = "queue:support"
    patterns: Sequence[str] = _HUMAN_PHRASES
    name: str = "asks_for_human"
    _re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _party(self.target))
        compiled = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE)
        object.__setattr__(self, "_re", compiled)

    def __call__(self, ctx: HandoffContext) -> HandoffRequest | None:
        text = ctx.event.content.text
        match = self._re.search(text) if text else None
        if match is None:
            return None
        return HandoffRequest(
            target=_party(self.target),
            reason=f"the customer asked for a person ({match.group(0).strip()!r})",
            rule=self.name,
        )


@dataclass(frozen=True)
class BotFailures:
    """The bot failed ``threshold`` times (it records ``IntentDetected("fallback")``)."""

    threshold: int = 3
    target: Party | str = "queue:support"
    name: str = "bot_failures"

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValidationError("threshold must be at least 1")
        object.__setattr__(self, "target", _party(self.target))

    def __call__(self, ctx: HandoffContext) -> HandoffRequest | None:
        state = ctx.state
        controller = state.controller
        if controller is not None and controller.kind is not PartyKind.BOT:
            return None
        if state.bot_failures < self.threshold:
            return None
        return HandoffRequest(
            target=_party(self.target),
            reason=f"the bot failed {state.bot_failures} times (threshold {self.threshold})",
            rule=self.name,
        )


@dataclass(frozen=True)
class MovedToChannel:
    """The customer moved to ``channel`` (by default: voice) from another channel."""

    target: Party | str = "queue:voice"
    channel: str = Channel.VOICE
    name: str = "moved_to_voice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _party(self.target))

    def __call__(self, ctx: HandoffContext) -> HandoffRequest | None:
        previous = ctx.previous
        if ctx.event.channel != self.channel or previous is None:
            return None
        if previous.last_channel == self.channel:
            return None
        return HandoffRequest(
            target=_party(self.target),
            reason=f"the customer moved from {previous.last_channel} to {self.channel}",
            rule=self.name,
        )


@dataclass(frozen=True)
class AttributeEquals:
    """An attribute has a given value, or satisfies ``predicate`` when one is given
    (e.g. ``AttributeEquals("refund_amount", predicate=lambda v: v > 500)``)."""

    attribute: str
    value: Any = None
    target: Party | str = "queue:support"
    predicate: Callable[[Any], bool] | None = None
    name: str = "attribute"

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _party(self.target))

    def __call__(self, ctx: HandoffContext) -> HandoffRequest | None:
        attributes = ctx.state.attributes
        if self.attribute not in attributes:
            return None
        value = attributes[self.attribute]
        try:
            hit = self.predicate(value) if self.predicate is not None else value == self.value
        except (TypeError, ValueError):
            return None
        if not hit:
            return None
        return HandoffRequest(
            target=_party(self.target),
            reason=f"attribute {self.attribute!r} is {value!r}",
            rule=self.name,
        )


def apply_rules(rules: Sequence[HandoffRule], ctx: HandoffContext) -> HandoffRequest | None:
    """The first rule's request, or None. Rules are not consulted while a handoff is
    pending, while an agent controls the thread, or on a closed thread."""
    state = ctx.state
    if state.pending is not None or state.status is ThreadStatus.CLOSED:
        return None
    if state.controller is not None and state.controller.kind is PartyKind.AGENT:
        return None
    for rule in rules:
        request = rule(ctx)
        if request is not None and request.target != state.controller:
            return request
    return None
