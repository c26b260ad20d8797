"""Context snapshots: a typed, versioned, deterministic projection of a thread.

Two layers:

* :class:`SnapshotState`: the fold of a thread's events (everything a snapshot may need,
  unredacted, with bounded lists: the last :data:`RING` messages, the last
  :data:`JOURNEY_MAX` channel switches, the last :data:`HISTORY_MAX` handoff steps).
  It is built incrementally: :func:`advance` folds more events into a state, so the
  service keeps a checkpoint and folds only the events after it.
* :class:`Snapshot`: what a reader gets: the state at a sequence number, projected for an
  audience (:mod:`convthread.domain.redaction`) and cut to a budget of messages.

Same events, same snapshot: nothing here reads a clock. Times in a snapshot are relative
to ``as_of``, the recorded time of the event at ``seq``. ``to_json()`` gives
byte-identical JSON for equal snapshots (sorted mapping keys, fields in schema order).

Compatibility rule of the JSON (``schema_version``): within one schema version, fields
are only ever *added* (at the end of a struct, optional or with a default), so a reader
written for version N reads any later snapshot of version N by ignoring fields it does
not know. Removing or renaming a field, changing its type or meaning, or changing an
enumeration's values increments ``schema_version``; readers must check it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import msgspec

from convthread.domain.events import (
    AttributeSet,
    ContinuationRedeemed,
    ControlReleased,
    ControlTransferred,
    HandoffAccepted,
    HandoffDeclined,
    HandoffExpired,
    HandoffOffered,
    HandoffRequested,
    IntentDetected,
    LifecycleChanged,
    MessageDeleted,
    MessageEdited,
    MessageErased,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadReassigned,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.model import Party, PartyKind
from convthread.domain.redaction import (
    Mask,
    RedactionPolicy,
    mask_value,
    pseudonym,
    scrub_text,
)
from convthread.domain.thread import CustomerState
from convthread.errors import InvalidTransition, ValidationError

__all__ = [
    "HISTORY_MAX",
    "JOURNEY_MAX",
    "RING",
    "SCHEMA_VERSION",
    "AttributeValue",
    "CustomerInfo",
    "HandoffStep",
    "IntentValue",
    "JourneyStep",
    "MessageItem",
    "ShownIdentifier",
    "Snapshot",
    "SnapshotState",
    "advance",
    "fold_snapshot",
    "known_values",
    "project",
    "snapshot_schema",
    "start_snapshot",
]

#: The version of the snapshot JSON (see the compatibility rule in the module doc).
SCHEMA_VERSION: Final = 1
#: How many of the latest messages a snapshot state keeps.
RING: Final = 50
#: How many channel switches are kept (the oldest are dropped, and counted).
JOURNEY_MAX: Final = 100
#: How many handoff steps are kept (the oldest are dropped, and counted).
HISTORY_MAX: Final = 50

_NAME_ATTRIBUTES: Final = ("name", "full_name", "display_name")
_STAFF: Final = frozenset({PartyKind.BOT, PartyKind.QUEUE, PartyKind.AGENT})
_MESSAGE_TYPES: Final = frozenset({"message_received", "message_sent"})


class MessageItem(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a snapshot shows it."""

    seq: int
    at: datetime
    direction: str  # "in" (from the customer) or "out"
    channel: str
    author: str  # "customer", or the party ("agent:alice"; "agent" when ids are hidden)
    text: str
    attachments: int = 0
    edited: bool = False
    deleted: bool = False
    erased: bool = False


class JourneyStep(msgspec.Struct, frozen=True, kw_only=True):
    """The conversation moved to ``channel`` at ``at`` (sequence number ``seq``)."""

    channel: str
    at: datetime
    seq: int
    via: str = "message"  # "message", or "token" (a continuation token was redeemed)


class AttributeValue(msgspec.Struct, frozen=True, kw_only=True):
    """An attribute's latest value (the write with the highest sequence number)."""

    name: str
    value: Any
    seq: int
    at: datetime
    by: str | None = None


class IntentValue(msgspec.Struct, frozen=True, kw_only=True):
    """An intent's latest detection."""

    name: str
    confidence: float
    seq: int
    at: datetime


class HandoffStep(msgspec.Struct, frozen=True, kw_only=True):
    """One step of the handoff history: requested, offered, accepted, declined, expired,
    released or transferred."""

    seq: int
    at: datetime
    step: str
    handoff_id: str
    party: str | None = None
    reason: str = ""
    fencing_token: int | None = None


class SnapshotState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """The unredacted fold of a thread's events up to ``seq`` (a checkpoint)."""

    thread_id: str
    customer_id: str
    seq: int
    as_of: datetime
    status: ThreadStatus
    created_at: datetime
    topic: str | None
    first_channel: str
    last_channel: str
    controller: Party | None = None
    fencing_token: int = 0
    pending_id: str | None = None
    pending_since: datetime | None = None
    journey: tuple[JourneyStep, ...] = ()
    journey_dropped: int = 0
    messages: tuple[MessageItem, ...] = ()
    message_count: int = 0
    attributes: dict[str, AttributeValue] = {}
    intents: dict[str, IntentValue] = {}
    handoffs: tuple[HandoffStep, ...] = ()
    handoffs_dropped: int = 0
    first_inbound_at: datetime | None = None
    first_response_at: datetime | None = None
    waiting_since: datetime | None = None
    #: set by the service: a fingerprint of the thread's first stored event, so a
    #: checkpoint folded from events that were later rewritten (erasure) is not used
    origin: str = ""


class ShownIdentifier(msgspec.Struct, frozen=True, kw_only=True):
    """A customer identifier as the audience sees it (``value`` empty when hidden)."""

    kind: str
    value: str
    trust: str
    scope: str = ""
    masked: bool = False


class CustomerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Who the customer is, masked to the audience."""

    id: str  # the customer id, or a pseudonym ("anon_...") when the audience gets one
    name: str | None = None
    identifiers: tuple[ShownIdentifier, ...] = ()
    version: int = 0  # the customer stream version the identifiers were read at


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The context of a thread at ``seq``, for ``audience``. See the module doc."""

    schema_version: int = SCHEMA_VERSION
    thread_id: str
    seq: int
    as_of: datetime
    audience: str
    customer: CustomerInfo
    status: str
    topic: str | None = None
    first_channel: str
    last_channel: str
    controller: str | None = None
    fencing_token: int = 0
    pending_handoff: str | None = None
    journey: tuple[JourneyStep, ...] = ()
    journey_omitted: int = 0
    messages: tuple[MessageItem, ...] = ()
    messages_omitted: int = 0
    message_count: int = 0
    attributes: tuple[AttributeValue, ...] = ()
    intents: tuple[IntentValue, ...] = ()
    handoffs: tuple[HandoffStep, ...] = ()
    handoffs_omitted: int = 0
    #: how long the customer has been waiting for a reply at ``as_of`` (None: not waiting)
    waiting_seconds: int | None = None
    #: how long the pending handoff has waited at ``as_of`` (None: none pending)
    queue_wait_seconds: int | None = None
    #: from the customer's first message to the first reply by a bot, queue or agent
    first_response_seconds: int | None = None
    #: since when the customer has been waiting (compute a live wait from your clock)
    waiting_since: datetime | None = None
    #: since when the pending handoff has been waiting
    pending_since: datetime | None = None

    def to_json(self) -> bytes:
        """Deterministic JSON: equal snapshots give identical bytes."""
        return _json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Snapshot:
        """The snapshot that :meth:`to_json` wrote (``Snapshot.from_json(s.to_json()) == s``).

        ValidationError when ``data`` is not a snapshot's JSON."""
        try:
            return _json_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValidationError(f"not a snapshot's JSON: {exc}") from None

    def render(self, fmt: str = "text", **budget: Any) -> str:
        """Render for a channel; see :func:`convthread.domain.render.render`."""
        from convthread.domain.render import render

        return render(self, fmt, **budget)


_json: Final = msgspec.json.Encoder(order="deterministic")
_json_decoder: Final = msgspec.json.Decoder(Snapshot)


# --------------------------------------------------------------------------- folding


class _Builder:
    """A mutable copy of a SnapshotState, to fold many events without copying tuples."""

    def __init__(self, s: SnapshotState) -> None:
        self.s = s
        self.customer_id = s.customer_id
        self.seq = s.seq
        self.as_of = s.as_of
        self.status = s.status
        self.last_channel = s.last_channel
        self.controller = s.controller
        self.fencing_token = s.fencing_token
        self.pending_id = s.pending_id
        self.pending_since = s.pending_since
        self.journey = list(s.journey)
        self.journey_dropped = s.journey_dropped
        self.messages = list(s.messages)
        self.message_count = s.message_count
        self.attributes = dict(s.attributes)
        self.intents = dict(s.intents)
        self.handoffs = list(s.handoffs)
        self.handoffs_dropped = s.handoffs_dropped
        self.first_inbound_at = s.first_inbound_at
        self.first_response_at = s.first_response_at
        self.waiting_since = s.waiting_since
        self.msg_channel = s.journey[-1].channel if s.journey else None

    def build(self) -> SnapshotState:
        messages = self.messages[-RING:]
        journey = self.journey
        journey_dropped = self.journey_dropped
        if len(journey) > JOURNEY_MAX:
            journey_dropped += len(journey) - JOURNEY_MAX
            journey = journey[-JOURNEY_MAX:]
        handoffs = self.handoffs
        handoffs_dropped = self.handoffs_dropped
        if len(handoffs) > HISTORY_MAX:
            handoffs_dropped += len(handoffs) - HISTORY_MAX
            handoffs = handoffs[-HISTORY_MAX:]
        return msgspec.structs.replace(
            self.s,
            customer_id=self.customer_id,
            seq=self.seq,
            as_of=self.as_of,
            status=self.status,
            last_channel=self.last_channel,
            controller=self.controller,
            fencing_token=self.fencing_token,
            pending_id=self.pending_id,
            pending_since=self.pending_since,
            journey=tuple(journey),
            journey_dropped=journey_dropped,
            messages=tuple(messages),
            message_count=self.message_count,
            attributes=self.attributes,
            intents=self.intents,
            handoffs=tuple(handoffs),
            handoffs_dropped=handoffs_dropped,
            first_inbound_at=self.first_inbound_at,
            first_response_at=self.first_response_at,
            waiting_since=self.waiting_since,
        )

    def _trim(self) -> None:
        if len(self.messages) > 2 * RING:
            del self.messages[:-RING]
        if len(self.journey) > 2 * JOURNEY_MAX:
            self.journey_dropped += len(self.journey) - JOURNEY_MAX
            del self.journey[:-JOURNEY_MAX]
        if len(self.handoffs) > 2 * HISTORY_MAX:
            self.handoffs_dropped += len(self.handoffs) - HISTORY_MAX
            del self.handoffs[:-HISTORY_MAX]

    def _moved(self, channel: str, seq: int, at: datetime, via: str = "message") -> None:
        if channel != self.msg_channel:
            self.journey.append(JourneyStep(channel=channel, at=at, seq=seq, via=via))
            self.msg_channel = channel
        self.last_channel = channel

    def _message(self, item: MessageItem) -> None:
        self.messages.append(item)
        self.message_count += 1
        self._trim()

    def _find(self, seq: int) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].seq == seq:
                return i
            if self.messages[i].seq < seq:
                return None
        return None

    def _handoff(self, step: HandoffStep) -> None:
        self.handoffs.append(step)
        self._trim()

    def apply(self, seq: int, ev: ThreadEvent) -> None:
        if seq != self.seq + 1:
            raise InvalidTransition(
                f"snapshot of {self.s.thread_id!r}: event {seq} follows {self.seq}"
            )
        self.seq = seq
        self.as_of = ev.at
        if isinstance(ev, MessageReceived):
            self._moved(ev.channel, seq, ev.at)
            self._message(
                MessageItem(
                    seq=seq,
                    at=ev.at,
                    direction="in",
                    channel=ev.channel,
                    author="customer",
                    text=ev.content.text,
                    attachments=len(ev.content.attachments),
                )
            )
            if self.first_inbound_at is None:
                self.first_inbound_at = ev.at
            if self.waiting_since is None:
                self.waiting_since = ev.at
        elif isinstance(ev, MessageSent):
            self._moved(ev.channel, seq, ev.at)
            self._message(
                MessageItem(
                    seq=seq,
                    at=ev.at,
                    direction="out",
                    channel=ev.channel,
                    author=str(ev.sender),
                    text=ev.content.text,
                    attachments=len(ev.content.attachments),
                )
            )
            if ev.sender.kind in _STAFF:
                self.waiting_since = None
                if self.first_inbound_at is not None and self.first_response_at is None:
                    self.first_response_at = ev.at
        elif isinstance(ev, MessageEdited):
            i = self._find(ev.message_seq)
            if i is not None:
                self.messages[i] = msgspec.structs.replace(
                    self.messages[i], text=ev.content.text, edited=True
                )
        elif isinstance(ev, MessageDeleted):
            i = self._find(ev.message_seq)
            if i is not None:
                self.messages[i] = msgspec.structs.replace(
                    self.messages[i], text="", attachments=0, deleted=True
                )
        elif isinstance(ev, MessageErased):
            if ev.original_type in _MESSAGE_TYPES:
                self._message(
                    MessageItem(
                        seq=seq,
                        at=ev.at,
                        direction="in" if ev.original_type == "message_received" else "out",
                        channel=self.last_channel,
                        author="customer" if ev.original_type == "message_received" else "",
                        text="",
                        erased=True,
                    )
                )
        elif isinstance(ev, AttributeSet):
            self.attributes[ev.name] = AttributeValue(
                name=ev.name,
                value=ev.value,
                seq=seq,
                at=ev.at,
                by=None if ev.by is None else str(ev.by),
            )
        elif isinstance(ev, IntentDetected):
            self.intents[ev.name] = IntentValue(
                name=ev.name, confidence=ev.confidence, seq=seq, at=ev.at
            )
        elif isinstance(ev, LifecycleChanged):
            self.status = ev.status
        elif isinstance(ev, ThreadReassigned):
            self.customer_id = ev.customer_id
        elif isinstance(ev, HandoffRequested):
            self.pending_id = ev.handoff_id
            self.pending_since = ev.at
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="requested",
                    handoff_id=ev.handoff_id,
                    party=str(ev.target),
                    reason=ev.reason,
                )
            )
        elif isinstance(ev, HandoffOffered):
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="offered",
                    handoff_id=ev.handoff_id,
                    party=str(ev.offered_to),
                )
            )
        elif isinstance(ev, HandoffAccepted):
            self.controller = ev.by
            self.fencing_token = ev.fencing_token
            self.pending_id = None
            self.pending_since = None
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="accepted",
                    handoff_id=ev.handoff_id,
                    party=str(ev.by),
                    fencing_token=ev.fencing_token,
                )
            )
        elif isinstance(ev, HandoffDeclined):
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="declined",
                    handoff_id=ev.handoff_id,
                    party=str(ev.by),
                    reason=ev.reason,
                )
            )
        elif isinstance(ev, HandoffExpired):
            self._handoff(HandoffStep(seq=seq, at=ev.at, step="expired", handoff_id=ev.handoff_id))
        elif isinstance(ev, ControlReleased):
            self.controller = None
            self.fencing_token = ev.fencing_token
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="released",
                    handoff_id=ev.handoff_id,
                    party=str(ev.by),
                    reason=ev.reason,
                    fencing_token=ev.fencing_token,
                )
            )
        elif isinstance(ev, ControlTransferred):
            self.controller = ev.to
            self.fencing_token = ev.fencing_token
            self.pending_id = None
            self.pending_since = None
            self._handoff(
                HandoffStep(
                    seq=seq,
                    at=ev.at,
                    step="transferred",
                    handoff_id=ev.handoff_id,
                    party=str(ev.to),
                    reason=ev.reason,
                    fencing_token=ev.fencing_token,
                )
            )
        elif isinstance(ev, ContinuationRedeemed):
            self._moved(ev.channel, seq, ev.at, via="token")


def start_snapshot(thread_id: str, event: ThreadStarted) -> SnapshotState:
    """The snapshot state right after ``thread_started`` (sequence number 1)."""
    return SnapshotState(
        thread_id=thread_id,
        customer_id=event.customer_id,
        seq=1,
        as_of=event.at,
        status=ThreadStatus.OPEN,
        created_at=event.at,
        topic=event.topic,
        first_channel=event.channel,
        last_channel=event.channel,
    )


def advance(state: SnapshotState, events: Iterable[tuple[int, ThreadEvent]]) -> SnapshotState:
    """Fold ``(seq, event)`` pairs that follow ``state.seq``, in order, into ``state``."""
    builder = _Builder(state)
    for seq, event in events:
        builder.apply(seq, event)
    return builder.build()


def fold_snapshot(thread_id: str, events: list[tuple[int, ThreadEvent]]) -> SnapshotState:
    """Fold a thread's events from the start (``thread_started`` at sequence 1)."""
    if not events or events[0][0] != 1 or not isinstance(events[0][1], ThreadStarted):
        raise InvalidTransition(f"thread {thread_id!r} does not start with thread_started")
    return advance(start_snapshot(thread_id, events[0][1]), events[1:])


# --------------------------------------------------------------------------- projection


def _seconds(later: datetime, earlier: datetime | None) -> int | None:
    if earlier is None:
        return None
    return max(0, int((later - earlier).total_seconds()))


def _party_label(party: Party | str | None, policy: RedactionPolicy) -> str | None:
    if party is None:
        return None
    text = str(party)
    if policy.show_staff_ids:
        return text
    kind, _sep, _rest = text.partition(":")
    return "customer" if kind == "customer" else kind


def _scrub_value(value: Any, policy: RedactionPolicy, known: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, policy, known)
    if isinstance(value, list | tuple):
        return [_scrub_value(v, policy, known) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, policy, known) for k, v in value.items()}
    if isinstance(value, int | float) and policy.scrub_digit_runs and not isinstance(value, bool):
        digits = str(abs(int(value))) if isinstance(value, int) else ""
        if len(digits) >= policy.scrub_digit_runs:
            return policy.placeholder.format("number")
    return value


def known_values(
    state: SnapshotState, customer: CustomerState | None, policy: RedactionPolicy
) -> list[str]:
    """The customer's personal values: PII attribute strings and identifier values."""
    known: list[str] = []
    for name in sorted(state.attributes):
        if name in policy.pii_attributes:
            value = state.attributes[name].value
            if isinstance(value, str):
                known.append(value)
    if customer is not None:
        for key in sorted(customer.identifiers):
            ident, _trust = customer.identifiers[key]
            known.append(ident.value)
    return known


def project(
    state: SnapshotState,
    *,
    audience: str,
    policy: RedactionPolicy,
    customer: CustomerState | None = None,
    max_messages: int = 20,
    max_chars: int | None = None,
) -> Snapshot:
    """The snapshot of ``state`` for ``audience``: redacted by ``policy``, with at most
    ``max_messages`` of the latest messages whose texts total at most ``max_chars``."""
    if not 0 <= max_messages <= RING:
        raise ValidationError(f"max_messages must be between 0 and {RING}")
    if max_chars is not None and max_chars < 0:
        raise ValidationError("max_chars must be >= 0")
    known = known_values(state, customer, policy) if policy.scrub_known_values else []

    def text(value: str) -> str:
        return scrub_text(value, policy, known)

    # who
    if policy.pseudonymize_customer:
        cid = "anon_" + pseudonym(state.customer_id, policy.pseudonym_salt)
    else:
        cid = state.customer_id
    name: str | None = None
    if policy.show_pii_attributes:
        for attr in _NAME_ATTRIBUTES:
            if attr in state.attributes and isinstance(state.attributes[attr].value, str):
                name = state.attributes[attr].value
                break
    shown: list[ShownIdentifier] = []
    if customer is not None:
        for key in sorted(customer.identifiers):
            ident, trust = customer.identifiers[key]
            shown.append(
                ShownIdentifier(
                    kind=ident.kind,
                    value=mask_value(ident.kind, ident.value, policy.identifiers),
                    trust=trust.value,
                    scope=ident.scope if policy.identifiers is not Mask.HIDDEN else "",
                    masked=policy.identifiers is not Mask.FULL,
                )
            )
    who = CustomerInfo(
        id=cid,
        name=name,
        identifiers=tuple(shown),
        version=0 if customer is None else customer.version,
    )

    # messages within the budget, newest first
    picked: list[MessageItem] = []
    used = 0
    for item in reversed(state.messages):
        if len(picked) >= max_messages:
            break
        body = text(item.text)
        if max_chars is not None and used + len(body) > max_chars:
            break
        used += len(body)
        author = "customer" if item.direction == "in" else _party_label(item.author, policy)
        picked.append(msgspec.structs.replace(item, text=body, author=author or ""))
    picked.reverse()

    attributes = tuple(
        msgspec.structs.replace(
            value,
            value=_scrub_value(value.value, policy, known),
            by=_party_label(value.by, policy),
        )
        for key, value in sorted(state.attributes.items())
        if policy.attribute_visible(key)
    )
    intents = (
        tuple(value for _key, value in sorted(state.intents.items())) if policy.show_intents else ()
    )
    handoffs = tuple(
        msgspec.structs.replace(
            step,
            party=_party_label(step.party, policy),
            reason=text(step.reason) if policy.show_handoff_reasons else "",
        )
        for step in state.handoffs
    )
    return Snapshot(
        thread_id=state.thread_id,
        seq=state.seq,
        as_of=state.as_of,
        audience=audience,
        customer=who,
        status=state.status.value,
        topic=state.topic,
        first_channel=state.first_channel,
        last_channel=state.last_channel,
        controller=_party_label(state.controller, policy),
        fencing_token=state.fencing_token,
        pending_handoff=state.pending_id,
        journey=state.journey,
        journey_omitted=state.journey_dropped,
        messages=tuple(picked),
        messages_omitted=state.message_count - len(picked),
        message_count=state.message_count,
        attributes=attributes,
        intents=intents,
        handoffs=handoffs,
        handoffs_omitted=state.handoffs_dropped,
        waiting_seconds=_seconds(state.as_of, state.waiting_since),
        queue_wait_seconds=_seconds(state.as_of, state.pending_since),
        first_response_seconds=(
            _seconds(state.first_response_at, state.first_inbound_at)
            if state.first_response_at is not None
            else None
        ),
        waiting_since=state.waiting_since,
        pending_since=state.pending_since,
    )


# --------------------------------------------------------------------------- schema


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of :class:`Snapshot` as exported by ``to_json()``."""
    schema: dict[str, Any] = msgspec.json.schema(Snapshot)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://convthread.dev/schema/snapshot-v{SCHEMA_VERSION}.json"
    schema["title"] = "convthread context snapshot"
    schema["x-schema-version"] = SCHEMA_VERSION
    return schema
