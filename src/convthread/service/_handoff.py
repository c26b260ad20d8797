"""Handoff operations as store-call generators.

Every operation loads the thread's cached state and the handoff's record, lets the pure
state machine (:mod:`convthread.domain.handoff`) decide, and writes the events, the
thread's state and the record in one batch, compare-and-set on the thread stream: of two
concurrent moves on one thread, one commits and the other runs again on the new state
(where, say, the offer it wanted to accept has been taken).

A refusal is decided on a record and a state of one moment: the two are read one after
the other, so when the machine refuses and the record has moved since it was read, the
machine decides again on the fresh pair. The loser of two accepts is therefore always
told who won (:class:`~convthread.errors.HandoffTaken`), never that the offer merely
"is no longer pending".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from convthread import codec
from convthread._heads import head_of, state_of
from convthread.domain.events import AttributeSet, IntentDetected, MessageReceived, ThreadEvent
from convthread.domain.handoff import (
    HandoffContext,
    HandoffRecord,
    Step,
    apply_rules,
    check_token,
    decide_accept,
    decide_decline,
    decide_expire,
    decide_offer,
    decide_release,
    decide_request,
    decide_transfer,
    evolve_record,
)
from convthread.domain.model import Party, PartyKind, to_json_values
from convthread.domain.redaction import Audience
from convthread.domain.thread import ThreadState, evolve
from convthread.errors import (
    HandoffTaken,
    InvalidTransition,
    NotFound,
    StaleControllerError,
    ValidationError,
)
from convthread.ports import ABSENT, Append, HeadWrite, Item, Put
from convthread.service import _core as core
from convthread.service import _snapshots
from convthread.service._core import (
    NS_HANDOFF,
    NS_HSNAP,
    NS_OFFERS,
    Config,
    Op,
)
from convthread.service._results import HandoffResult
from convthread.service._snapshots import Writes

__all__ = [
    "accept",
    "after_ingest",
    "decline",
    "due_offers",
    "expire_offer",
    "get_handoff",
    "offer",
    "record_intent",
    "release",
    "request",
    "set_attribute",
    "transfer",
]

_record_decoder: Final = codec.decoder(HandoffRecord)
_STAFF: Final = frozenset({PartyKind.BOT, PartyKind.QUEUE, PartyKind.AGENT})
MAX_ATTRIBUTE_NAME: Final = 128


def decode_record(data: bytes) -> HandoffRecord:
    return _record_decoder(data)


def receiver_audience(party: Party) -> str:
    """The audience a handoff's receiver gets its snapshot for: a bot is an external
    vendor's; a queue or an agent is internal."""
    return Audience.BOT_VENDOR.value if party.kind is PartyKind.BOT else Audience.AGENT.value


def offer_key(record: HandoffRecord) -> str | None:
    if record.expires_at is None:
        return None
    return f"{core.time_key(record.expires_at)}|{record.handoff_id}"


def load_handoff(handoff_id: str) -> Op[tuple[HandoffRecord, Item]]:
    item = yield from core.get(NS_HANDOFF, handoff_id)
    if item is None:
        raise NotFound("handoff", handoff_id)
    return decode_record(item.value), item


def find_handoff(handoff_id: str) -> Op[HandoffRecord | None]:
    """The handoff's record, or None when the id is new (a first request, release or
    transfer under that id)."""
    item = yield from core.get(NS_HANDOFF, handoff_id)
    return None if item is None else decode_record(item.value)


def decide_on(
    handoff_id: str, decide: Callable[[ThreadState, HandoffRecord], Step]
) -> Op[tuple[HandoffRecord, Item, ThreadState, int, Step]]:
    """Load the handoff's record and its thread's state and let ``decide`` rule on them.

    The record is read before the state, so a move committed in between pairs a stale
    record with a newer state (an offer the record still has pending, on a thread that
    has handed it over). A step that commits is safe either way (its batch names the
    record's version); a refusal is final, so when ``decide`` refuses and the record has
    moved meanwhile, it rules again on the fresh pair. A record that stood still across
    the state's read is of the same moment as that state: every move writes both.
    Returns the record, its item, the state, the state's item version and the step.
    """
    record, record_item = yield from load_handoff(handoff_id)
    while True:
        state, item_version = yield from core.load_thread(record.thread_id)
        try:
            return record, record_item, state, item_version, decide(state, record)
        except HandoffTaken:
            raise  # the record names the winner: already the latest word
        except InvalidTransition as refusal:
            fresh, fresh_item = yield from load_handoff(handoff_id)
            if fresh_item.version == record_item.version:
                raise refusal from None
            record, record_item = fresh, fresh_item


def get_handoff(handoff_id: str) -> Op[HandoffRecord]:
    record, _item = yield from load_handoff(handoff_id)
    return record


def _write_step(
    writes: Writes,
    state: ThreadState,
    item_version: int,
    step: Step,
    record_item: Item | None,
) -> ThreadState:
    """Add the step's events, the thread's new state and the record to ``writes``."""
    new = state
    seq = state.version
    for event in step.events:
        seq += 1
        new = evolve(new, seq, event)
    writes.append(state.id, state.version, list(step.events))
    writes.thread(state, new, item_version)
    expected = ABSENT if record_item is None else record_item.version
    writes.put(NS_HANDOFF, step.record.handoff_id, step.record, expected)
    return new


def _move_offer(writes: Writes, before: HandoffRecord, after: HandoffRecord) -> None:
    old_key, new_key = offer_key(before), offer_key(after)
    if old_key == new_key:
        return
    if old_key is not None:
        writes.delete(NS_OFFERS, old_key)
    if new_key is not None:
        writes.put(NS_OFFERS, new_key, after.thread_id.encode(), ABSENT)


def _hand_over(
    config: Config, writes: Writes, state: ThreadState, record: HandoffRecord, receiver: Party
) -> Op[Any]:
    """Build the receiver's snapshot at the thread's version before the move and store it
    with the handoff (NS_HSNAP). Returns the snapshot."""
    snap_state, item, tail = yield from _snapshots.load_snapshot_state(state.id, state.version)
    snap = yield from _snapshots.snapshot_at(config, snap_state, receiver_audience(receiver))
    writes.put(NS_HSNAP, f"{state.id}|{record.handoff_id}", snap.to_json(), ABSENT)
    if tail >= _snapshots.CHECKPOINT_EVERY:
        _snapshots.checkpoint(writes, state.id, snap_state, item)
    return snap


def _stored_snapshot(record: HandoffRecord) -> Op[Any]:
    try:
        return (yield from _snapshots.handed_over(record.thread_id, record.handoff_id))
    except NotFound:
        return None


# --------------------------------------------------------------------------- operations


def request(
    config: Config,
    thread_id: str,
    target: Party,
    reason: str,
    by: Party | None,
    fencing_token: int | None,
    handoff_id: str | None,
) -> Op[HandoffResult]:
    hid = handoff_id or config.ids.new_id("ho")
    record = yield from find_handoff(hid)
    state, item_version = yield from core.load_thread(thread_id)
    step = decide_request(
        state,
        record,
        handoff_id=hid,
        target=target,
        now=config.clock.now(),
        reason=reason,
        requested_by=by,
        fencing_token=fencing_token,
    )
    if step.repeat:
        return HandoffResult(record=step.record, repeat=True)
    writes = Writes()
    _write_step(writes, state, item_version, step, None)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record)


def offer(config: Config, handoff_id: str, to: Party, ttl: timedelta) -> Op[HandoffResult]:
    if ttl <= timedelta(0):
        raise ValidationError("an offer's ttl must be positive")
    now = config.clock.now()
    record, record_item, state, item_version, step = yield from decide_on(
        handoff_id, lambda s, r: decide_offer(s, r, to=to, now=now, expires_at=now + ttl)
    )
    if step.repeat:
        return HandoffResult(record=step.record, repeat=True)
    writes = Writes()
    _write_step(writes, state, item_version, step, record_item)
    _move_offer(writes, record, step.record)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record)


def accept(config: Config, handoff_id: str, by: Party) -> Op[HandoffResult]:
    now = config.clock.now()
    record, record_item, state, item_version, step = yield from decide_on(
        handoff_id, lambda s, r: decide_accept(s, r, by=by, now=now)
    )
    if step.repeat:
        snap = yield from _stored_snapshot(step.record)
        return HandoffResult(record=step.record, snapshot=snap, repeat=True)
    writes = Writes()
    snap = yield from _hand_over(config, writes, state, step.record, by)
    _write_step(writes, state, item_version, step, record_item)
    _move_offer(writes, record, step.record)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record, snapshot=snap)


def decline(config: Config, handoff_id: str, by: Party, reason: str) -> Op[HandoffResult]:
    now = config.clock.now()
    record, record_item, state, item_version, step = yield from decide_on(
        handoff_id, lambda s, r: decide_decline(s, r, by=by, now=now, reason=reason)
    )
    if step.repeat:
        return HandoffResult(record=step.record, repeat=True)
    writes = Writes()
    _write_step(writes, state, item_version, step, record_item)
    _move_offer(writes, record, step.record)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record)


def expire_offer(config: Config, handoff_id: str, now: datetime) -> Op[HandoffResult | None]:
    """Expire the offer of one handoff if it is due at ``now`` (None when there was
    nothing to expire). Stale entries of the offers index are cleaned up."""
    item = yield from core.get(NS_HANDOFF, handoff_id)
    if item is None:
        return None
    record = decode_record(item.value)
    state, item_version = yield from core.load_thread(record.thread_id)
    step = decide_expire(state, record, now=now)
    if step.repeat:
        return None
    writes = Writes()
    _write_step(writes, state, item_version, step, item)
    _move_offer(writes, record, step.record)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record)


def due_offers(now: datetime, limit: int = 1000) -> Op[list[str]]:
    """Handoff ids whose offers expire at or before ``now`` (oldest first); removes index
    entries whose handoff no longer has that offer."""
    bound = core.time_key(now)
    page = yield from core.scan(NS_OFFERS, "", "", limit)
    due: list[str] = []
    stale = Writes()
    for key, _item in page:
        stamp, _sep, handoff_id = key.partition("|")
        if stamp > bound:
            break
        record_item = yield from core.get(NS_HANDOFF, handoff_id)
        record = decode_record(record_item.value) if record_item is not None else None
        if record is None or offer_key(record) != key:
            stale.delete(NS_OFFERS, key)
            continue
        due.append(handoff_id)
    if stale.deletes:
        yield from core.commit(stale.batch())
    return due


def release(
    config: Config,
    thread_id: str,
    by: Party,
    fencing_token: int,
    reason: str,
    handoff_id: str | None,
) -> Op[HandoffResult]:
    hid = handoff_id or config.ids.new_id("ho")
    record = yield from find_handoff(hid)
    state, item_version = yield from core.load_thread(thread_id)
    step = decide_release(
        state,
        record,
        handoff_id=hid,
        by=by,
        fencing_token=fencing_token,
        now=config.clock.now(),
        reason=reason,
    )
    if step.repeat:
        return HandoffResult(record=step.record, repeat=True)
    writes = Writes()
    _write_step(writes, state, item_version, step, None)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record)


def transfer(
    config: Config,
    thread_id: str,
    to: Party,
    by: Party | None,
    fencing_token: int,
    reason: str,
    handoff_id: str | None,
) -> Op[HandoffResult]:
    hid = handoff_id or config.ids.new_id("ho")
    record = yield from find_handoff(hid)
    state, item_version = yield from core.load_thread(thread_id)
    now = config.clock.now()
    step = decide_transfer(
        state,
        record,
        handoff_id=hid,
        to=to,
        by=by,
        fencing_token=fencing_token,
        now=now,
        reason=reason,
    )
    if step.repeat:
        snap = yield from _stored_snapshot(step.record)
        return HandoffResult(record=step.record, snapshot=snap, repeat=True)
    writes = Writes()
    snap = yield from _hand_over(config, writes, state, step.record, to)
    _write_step(writes, state, item_version, step, None)
    if state.pending is not None:
        # The transfer cancels the pending handoff: its record says so, its offer goes.
        pending, pending_item = yield from load_handoff(state.pending.handoff_id)
        cancelled = evolve_record(pending, state.version + 1, step.events[0])
        writes.put(NS_HANDOFF, pending.handoff_id, cancelled, pending_item.version)
        key = offer_key(pending)
        if key is not None:
            writes.delete(NS_OFFERS, key)
    yield from core.commit(writes.batch())
    return HandoffResult(record=step.record, snapshot=snap)


def _controller_write(state: ThreadState, by: Party | None, fencing_token: int | None) -> None:
    """The rule ``send`` applies: a presented token must be current; a bot, queue or agent
    writing without one must be the controller (when there is one)."""
    check_token(state, fencing_token)
    if (
        fencing_token is None
        and by is not None
        and state.controller is not None
        and by != state.controller
        and by.kind in _STAFF
    ):
        raise StaleControllerError(state.id, -1, state.fencing_token)


def _append_one(
    config: Config, thread_id: str, make: Any, by: Party | None, fencing_token: int | None
) -> Op[int]:
    state, item_version = yield from core.load_thread(thread_id)
    _controller_write(state, by, fencing_token)
    event: ThreadEvent = make(config.clock.now())
    new = evolve(state, state.version + 1, event)
    writes = Writes()
    writes.append(thread_id, state.version, [event])
    writes.thread(state, new, item_version)
    yield from core.commit(writes.batch())
    return new.version


def set_attribute(
    config: Config,
    thread_id: str,
    name: str,
    value: Any,
    by: Party | None,
    fencing_token: int | None,
) -> Op[int]:
    if not isinstance(name, str) or not name or len(name) > MAX_ATTRIBUTE_NAME:
        raise ValidationError(f"an attribute name is 1-{MAX_ATTRIBUTE_NAME} characters")
    value = to_json_values(value, f"attribute {name!r}")
    size = len(codec.to_json(value))
    if size > 64 * 1024:
        raise ValidationError(f"attribute {name!r} is {size} bytes encoded; the limit is 65536")
    return (
        yield from _append_one(
            config,
            thread_id,
            lambda now: AttributeSet(at=now, name=name, value=value, by=by),
            by,
            fencing_token,
        )
    )


def record_intent(
    config: Config,
    thread_id: str,
    name: str,
    confidence: float,
    by: Party | None,
    fencing_token: int | None,
) -> Op[int]:
    if not isinstance(name, str) or not name or len(name) > MAX_ATTRIBUTE_NAME:
        raise ValidationError(f"an intent name is 1-{MAX_ATTRIBUTE_NAME} characters")
    if not 0.0 <= confidence <= 1.0:
        raise ValidationError("confidence must be between 0 and 1")
    return (
        yield from _append_one(
            config,
            thread_id,
            lambda now: IntentDetected(at=now, name=name, confidence=confidence, by=by),
            by,
            fencing_token,
        )
    )


# --------------------------------------------------------------------------- ingest hook


def after_ingest(
    config: Config,
    writes: object,
    previous: ThreadState | None,
    thread_id: str,
    event: MessageReceived,
    seq: int,
) -> Op[HandoffRecord | None]:
    """The end of ingest's pipeline, on the batch being built: apply the handoff rules
    (a request joins the message's append, in the same batch) and move the snapshot
    checkpoint forward when due. Returns the handoff a rule requested, if any."""
    record: HandoffRecord | None = None
    if config.handoff_rules:
        record = _apply_rules(config, writes, previous, thread_id, event, seq)
    yield from _snapshots.maintain_checkpoint(writes, thread_id)
    return record


def _apply_rules(
    config: Config,
    writes: object,
    previous: ThreadState | None,
    thread_id: str,
    event: MessageReceived,
    seq: int,
) -> HandoffRecord | None:
    appends: list[Append] = writes.appends  # type: ignore[attr-defined]
    puts: list[Put] = writes.puts  # type: ignore[attr-defined]
    heads: list[HeadWrite] = writes.heads  # type: ignore[attr-defined]
    a_index = next((i for i, a in enumerate(appends) if a.stream == thread_id), None)
    h_index = next((i for i, h in enumerate(heads) if h.head.thread_id == thread_id), None)
    if a_index is None or h_index is None:
        return None
    state = state_of(heads[h_index].head)
    if state.version != seq:
        return None  # something followed the message in this batch: leave it alone
    request_ = apply_rules(
        config.handoff_rules, HandoffContext(state=state, previous=previous, event=event, seq=seq)
    )
    if request_ is None:
        return None
    try:
        step = decide_request(
            state,
            None,
            handoff_id=config.ids.new_id("ho"),
            target=request_.target,
            now=event.at,
            reason=request_.reason,
            rule=request_.rule,
        )
    except (InvalidTransition, ValidationError):
        return None
    new = state
    for i, ev in enumerate(step.events, start=1):
        new = evolve(new, state.version + i, ev)
    append = appends[a_index]
    appends[a_index] = Append(
        append.stream, append.expected, (*append.events, *(codec.encode(e) for e in step.events))
    )
    written = heads[h_index]
    heads[h_index] = HeadWrite(head_of(new, written.head.tenant), written.expected)
    puts.append(Put(NS_HANDOFF, step.record.handoff_id, codec.encode(step.record), ABSENT))
    return step.record
