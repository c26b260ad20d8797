"""Thread operations: lifecycle, sweep, channel reports, provider ids, queries, batches.

Every function here is a store-call generator like those in :mod:`._messages`; the
drivers run them sync or async and retry them whole on a conflict. Index namespaces are
documented in :mod:`._core`.

* :func:`set_status`: a lifecycle move checked against the LIFECYCLE table; leaving the
  live states (open, pending, snoozed) frees the ``{customer}|{topic}`` open pointer,
  reopening claims it back (refused if another thread is live for that topic).
* :func:`sweep`: the time-based moves due at ``now`` (wake snoozed threads, auto-resolve
  inactive ones), found by queries on the thread heads. Idempotent.
* :func:`apply`: records what a channel adapter produced. ``Inbound`` is ingested;
  ``StatusReport`` is recorded against the message found through NS_MSG (held in
  NS_EARLY until that message is known); ``EditReport`` / ``DeletionReport`` /
  ``ReactionReport`` are recorded against a known message (an unknown one is NotFound,
  so the caller can retry later); ``Unsupported`` is kept in NS_UNSUPPORTED and returned.
* :func:`threads`: cursor-paginated queries by customer, channel, status, controller and
  last activity, answered by the store's indexes on thread heads.
* :func:`ingest_many`: several inbound messages in one store transaction.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from convthread import codec
from convthread._heads import state_of
from convthread.domain.events import (
    LifecycleChanged,
    MessageSent,
    ProviderIdRecorded,
    ThreadEvent,
    ThreadStatus,
)
from convthread.domain.model import Inbound, Party, PartyKind, ensure_utc
from convthread.domain.thread import (
    LifecyclePolicy,
    ThreadState,
    due_change,
    evolve,
    lifecycle_change,
)
from convthread.domain.timeline import (
    MessageMark,
    TimelineEntry,
    deletion_update,
    edit_update,
    reaction_update,
    status_update,
)
from convthread.domain.timeline import (
    timeline as fold_timeline,
)
from convthread.domain.updates import (
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import (
    IdempotencyError,
    InvalidTransition,
    NotFound,
    ValidationError,
)
from convthread.ports import (
    ABSENT,
    HeadQuery,
    Item,
    Recorded,
)
from convthread.service import _core as core
from convthread.service import _load, _messages
from convthread.service._core import (
    NS_EARLY,
    NS_MARK,
    NS_MSG,
    NS_OPEN,
    NS_UNSUPPORTED,
    Config,
    MsgRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._marks import (
    EarlyStatus,
    EarlyStatuses,
    decode_early,
    decode_mark,
    early_events,
    hold,
)
from convthread.service._results import IngestResult
from convthread.service._write import Overlay, through

__all__ = [
    "ApplyResult",
    "MessageLocation",
    "SweepResult",
    "ThreadPage",
    "apply",
    "find_message",
    "ingest_many",
    "record_provider_id",
    "set_status",
    "sweep",
    "threads",
    "timeline",
    "unsupported",
]

_PAGE: Final = 200
_US: Final = timedelta(microseconds=1)


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Conversations.apply` did with one channel result.

    ``outcome`` is one of:

    * ``"ingested"`` / ``"duplicate"``: an inbound message (``ingest`` holds the result);
    * ``"recorded"``: an event was appended (``seq``) about message ``message_seq``;
    * ``"ignored"``: nothing changed: a status that does not move on (a late
      "delivered" after "read", a redelivered report), a repeated edit, deletion or
      reaction; ``reason`` says which;
    * ``"held"``: a status for a provider message id no message carries yet; it is
      applied when the message is recorded (``send`` or ``record_provider_id``);
    * ``"unsupported"``: content the adapter did not model, kept for review
      (``Conversations.unsupported()``), never silently dropped.
    """

    kind: str  # inbound, status, edit, deletion, reaction, unsupported
    outcome: str
    reason: str
    thread_id: str | None = None
    seq: int | None = None
    message_seq: int | None = None
    ingest: IngestResult | None = None


class SweepResult(msgspec.Struct, frozen=True, kw_only=True):
    """The time-based moves one :meth:`Conversations.sweep` made."""

    now: datetime
    woken: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()


class ThreadPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a thread query; pass ``next_cursor`` back for the next page (None: no
    more)."""

    items: tuple[ThreadState, ...]
    next_cursor: str | None = None


class MessageLocation(msgspec.Struct, frozen=True, kw_only=True):
    """Where a provider message id landed."""

    thread_id: str
    seq: int
    customer_id: str


class _Unsupported(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    recorded_at: datetime
    report: Unsupported


_unsupported_decoder: Final = codec.decoder(_Unsupported)


# --------------------------------------------------------------------------- lifecycle


def _pointer_writes(old: ThreadState, new: ThreadState, writes: _Writes) -> Op[None]:
    """Keep NS_OPEN in step when a thread leaves or re-enters the live states."""
    if old.is_open == new.is_open:
        return
    key = core.open_key(new.customer_id, new.topic)
    item = yield from core.get(NS_OPEN, key)
    if old.is_open:  # leaving: free the pointer if it is ours
        if item is not None and item.value.decode() == new.id:
            writes.delete(NS_OPEN, key, item.version)
        return
    # re-entering: claim it, unless another live thread holds it
    if item is None:
        writes.put(NS_OPEN, key, new.id.encode(), ABSENT)
        return
    other_id = item.value.decode()
    if other_id != new.id:
        other = yield from core.get_thread(other_id)
        if other is not None and other[0].is_open:
            topic = f" and topic {new.topic!r}" if new.topic else ""
            raise InvalidTransition(
                f"thread {new.id!r} cannot reopen: thread {other_id!r} is open for "
                f"customer {new.customer_id!r}{topic}"
            )
    writes.put(NS_OPEN, key, new.id.encode(), item.version)


def _change(
    state: ThreadState, version: int, event: LifecycleChanged, writes: _Writes
) -> Op[ThreadState]:
    new = evolve(state, state.version + 1, event)
    writes.append(state.id, state.version, [event])
    writes.thread(state, new, version)
    yield from _pointer_writes(state, new, writes)
    return new


def set_status(
    config: Config,
    thread_id: str,
    status: ThreadStatus | str,
    until: datetime | None,
    by: Party | None,
    reason: str,
) -> Op[ThreadState]:
    try:
        to = ThreadStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in ThreadStatus)
        raise ValidationError(f"unknown thread status {status!r}; one of {allowed}") from None
    if until is not None:
        until = ensure_utc(until, "until")
    state, version = yield from core.load_thread(thread_id)
    now = config.clock.now()
    event = lifecycle_change(state, to, now, until=until, by=by, reason=reason)
    writes = _Writes()
    new = yield from _change(state, version, event, writes)
    yield from core.commit(writes.batch())
    return new


def sweep(config: Config, now: datetime | None, policy: LifecyclePolicy | None) -> Op[SweepResult]:
    """Apply every time-based move due at ``now``: one small commit per thread."""
    now = ensure_utc(now, "now") if now is not None else config.clock.now()
    policy = policy or config.lifecycle
    woken: list[str] = []
    resolved: list[str] = []
    # 1. Snoozed threads whose wake-up time has passed.
    due = HeadQuery(tenant=core.TENANT, snoozed_before=now + _US, limit=_PAGE)
    for tid in (yield from _all_ids(due)):
        if (yield from _sweep_one(config, tid, now, policy)):
            woken.append(tid)
    # 2. Open and pending threads inactive for longer than the policy allows.
    for status in (ThreadStatus.OPEN, ThreadStatus.PENDING):
        limit = policy.inactivity_limit(status)
        if limit is None:
            continue
        idle = HeadQuery(
            tenant=core.TENANT, statuses=(status.value,), active_until=now - limit, limit=_PAGE
        )
        for tid in (yield from _all_ids(idle)):
            if (yield from _sweep_one(config, tid, now, policy)):
                resolved.append(tid)
    return SweepResult(now=now, woken=tuple(woken), resolved=tuple(resolved))


def _all_ids(query: HeadQuery) -> Op[list[str]]:
    """The thread ids of every head ``query`` selects, a page at a time."""
    ids: list[str] = []
    while True:
        page = yield from core.find_heads(query)
        ids.extend(h.thread_id for h in page)
        if len(page) < query.limit:
            return ids
        query = msgspec.structs.replace(query, after=(page[-1].last_activity, page[-1].thread_id))


def _sweep_one(config: Config, thread_id: str, now: datetime, policy: LifecyclePolicy) -> Op[bool]:
    found = yield from core.get_thread(thread_id)
    if found is None:
        return False
    state, version = found
    event = due_change(state, now, policy)
    if event is None:
        return False
    event = msgspec.structs.replace(event, at=config.clock.now())
    writes = _Writes()
    yield from _change(state, version, event, writes)
    yield from core.commit(writes.batch())
    return True


# --------------------------------------------------------------------------- reports


def apply(config: Config, result: object) -> Op[ApplyResult]:
    if isinstance(result, Inbound):
        r = yield from _messages.ingest(config, result)
        return ApplyResult(
            kind="inbound",
            outcome="duplicate" if r.duplicate else "ingested",
            reason=r.decision.reason,
            thread_id=r.thread_id,
            seq=r.seq,
            message_seq=r.seq,
            ingest=r,
        )
    if isinstance(result, StatusReport):
        return (yield from _apply_status(config, result))
    if isinstance(result, EditReport | DeletionReport | ReactionReport):
        return (yield from _apply_change(config, result))
    if isinstance(result, Unsupported):
        now = config.clock.now()
        key = f"{core.time_key(now)}|{config.ids.new_id('un')}"
        writes = _Writes()
        writes.put(NS_UNSUPPORTED, key, _Unsupported(recorded_at=now, report=result), ABSENT)
        yield from core.commit(writes.batch())
        what = f" ({result.kind})" if result.kind else ""
        return ApplyResult(
            kind="unsupported",
            outcome="unsupported",
            reason=f"{result.channel} content not modelled{what}: {result.reason}; kept as {key}",
        )
    raise ValidationError(
        f"apply() takes a channel result (Inbound, StatusReport, EditReport, "
        f"DeletionReport, ReactionReport, Unsupported), not {type(result).__name__}"
    )


def _load_message(
    msg_key: str,
) -> Op[tuple[MsgRef, ThreadState, int, MessageMark, Item | None] | None]:
    ref_item = yield from core.get(NS_MSG, msg_key)
    if ref_item is None:
        return None
    ref = core.decode_msgref(ref_item.value)
    state, version = yield from core.load_thread(ref.thread_id)
    mark_item = yield from core.get(NS_MARK, f"{ref.thread_id}|{ref.seq}")
    mark = decode_mark(mark_item.value) if mark_item is not None else MessageMark()
    return ref, state, version, mark, mark_item


def _record(
    state: ThreadState,
    version: int,
    events: Sequence[ThreadEvent],
    mark_key: str,
    mark: MessageMark,
    mark_item: Item | None,
    writes: _Writes,
) -> int:
    new = state
    for i, ev in enumerate(events, start=1):
        new = evolve(new, state.version + i, ev)
    writes.append(state.id, state.version, list(events))
    writes.thread(state, new, version)
    writes.put(NS_MARK, mark_key, mark, mark_item.version if mark_item else ABSENT)
    return new.version


def _apply_status(config: Config, report: StatusReport) -> Op[ApplyResult]:
    msg_key = f"{report.channel}|{report.provider_message_id}"
    found = yield from _load_message(msg_key)
    now = config.clock.now()
    writes = _Writes()
    status = report.status.value
    if found is None:
        item = yield from core.get(NS_EARLY, msg_key)
        early = decode_early(item.value) if item is not None else EarlyStatuses()
        kept = hold(early, EarlyStatus(report.status, report.at, report.error))
        if kept is None:
            return ApplyResult(
                kind="status",
                outcome="ignored",
                reason=f"{status} for unknown message {msg_key} is already held",
            )
        writes.put(NS_EARLY, msg_key, kept, item.version if item else ABSENT)
        # Assert the message is still unknown (deleting a missing key is a no-op): a send
        # recording this id concurrently makes one of the two retry.
        writes.delete(NS_MSG, msg_key, ABSENT)
        yield from core.commit(writes.batch())
        return ApplyResult(
            kind="status",
            outcome="held",
            reason=(
                f"no message carries {msg_key} yet; {status} is kept and applied when it "
                "is recorded"
            ),
        )
    ref, state, version, mark, mark_item = found
    update = status_update(mark, ref.seq, report.status, report.at, now, report.error)
    if update is None:
        current = mark.status.value if mark.status else "none"
        return ApplyResult(
            kind="status",
            outcome="ignored",
            reason=(
                f"message {ref.thread_id}#{ref.seq} is already {current}; {status} would "
                "not move its status on (statuses never regress)"
            ),
            thread_id=ref.thread_id,
            message_seq=ref.seq,
        )
    event, mark = update
    seq = _record(state, version, [event], f"{ref.thread_id}|{ref.seq}", mark, mark_item, writes)
    yield from core.commit(writes.batch())
    return ApplyResult(
        kind="status",
        outcome="recorded",
        reason=f"message {ref.thread_id}#{ref.seq} is now {status}",
        thread_id=ref.thread_id,
        seq=seq,
        message_seq=ref.seq,
    )


def _apply_change(
    config: Config, report: EditReport | DeletionReport | ReactionReport
) -> Op[ApplyResult]:
    msg_key = f"{report.channel}|{report.provider_message_id}"
    found = yield from _load_message(msg_key)
    kind = {EditReport: "edit", DeletionReport: "deletion", ReactionReport: "reaction"}[
        type(report)
    ]
    if found is None:
        raise NotFound("message", msg_key)
    ref, state, version, mark, mark_item = found
    now = config.clock.now()
    # The customer reacts; an edit or deletion is by whoever sent the message.
    by = Party(PartyKind.CUSTOMER, state.customer_id)
    if not isinstance(report, ReactionReport):
        records = yield from core.read(ref.thread_id, ref.seq - 1, 1)
        original = codec.decode_event(records[0].data) if records else None
        if isinstance(original, MessageSent):
            by = original.sender
    target = f"{ref.thread_id}#{ref.seq}"
    if isinstance(report, EditReport):
        fp = codec.fingerprint_content(report.content)
        update: Any = edit_update(mark, ref.seq, report.content, fp, now, by)
        why = "already deleted, or the edit repeats the latest one"
        done = f"message {target} edited"
    elif isinstance(report, DeletionReport):
        update = deletion_update(mark, ref.seq, now, by)
        why = "already deleted"
        done = f"message {target} deleted (a tombstone keeps its place)"
    else:
        update = reaction_update(mark, ref.seq, by, report.emoji, now)
        why = "the reaction is already as reported"
        done = (
            f"{by} reacted {report.emoji!r} to message {target}"
            if report.emoji
            else (f"{by} removed their reaction to message {target}")
        )
    if update is None:
        return ApplyResult(
            kind=kind,
            outcome="ignored",
            reason=f"message {target}: {why}",
            thread_id=ref.thread_id,
            message_seq=ref.seq,
        )
    event, mark = update
    writes = _Writes()
    seq = _record(state, version, [event], f"{ref.thread_id}|{ref.seq}", mark, mark_item, writes)
    yield from core.commit(writes.batch())
    return ApplyResult(
        kind=kind,
        outcome="recorded",
        reason=done,
        thread_id=ref.thread_id,
        seq=seq,
        message_seq=ref.seq,
    )


def record_provider_id(
    config: Config, thread_id: str, seq: int, provider_message_id: str
) -> Op[ApplyResult]:
    """Record the provider's id of outbound message ``seq`` (learnt after ``send``), and
    apply any statuses that were held for it."""
    if not isinstance(provider_message_id, str) or not provider_message_id:
        raise ValidationError("provider_message_id must be a non-empty string")
    state, version = yield from core.load_thread(thread_id)
    records = yield from core.read(thread_id, seq - 1, 1) if seq >= 1 else _none()
    event = codec.decode_event(records[0].data) if records else None
    if not isinstance(event, MessageSent):
        raise NotFound("outbound message", f"{thread_id}#{seq}")
    msg_key = f"{event.channel}|{provider_message_id}"
    known = yield from core.get(NS_MSG, msg_key)
    if known is not None:
        ref = core.decode_msgref(known.value)
        if (ref.thread_id, ref.seq) == (thread_id, seq):
            return ApplyResult(
                kind="provider_id",
                outcome="ignored",
                reason=f"{msg_key} is already recorded for {thread_id}#{seq}",
                thread_id=thread_id,
                message_seq=seq,
            )
        raise IdempotencyError(msg_key)
    if event.provider_message_id is not None:
        raise InvalidTransition(
            f"message {thread_id}#{seq} already has provider id {event.provider_message_id!r}"
        )
    now = config.clock.now()
    events: list[ThreadEvent] = [
        ProviderIdRecorded(at=now, message_seq=seq, provider_message_id=provider_message_id)
    ]
    writes = _Writes()
    early = yield from core.get(NS_EARLY, msg_key)
    if early is not None:
        mark_item = yield from core.get(NS_MARK, f"{thread_id}|{seq}")
        mark = decode_mark(mark_item.value) if mark_item is not None else MessageMark()
        statuses, mark = early_events(decode_early(early.value), mark, seq, now)
        events.extend(statuses)
        writes.delete(NS_EARLY, msg_key, early.version)
        writes.put(NS_MARK, f"{thread_id}|{seq}", mark, mark_item.version if mark_item else ABSENT)
    else:
        writes.delete(NS_EARLY, msg_key, ABSENT)  # no status held meanwhile (see send)
    new = state
    for i, ev in enumerate(events, start=1):
        new = evolve(new, state.version + i, ev)
    writes.append(thread_id, state.version, events)
    writes.thread(state, new, version)
    writes.put(NS_MSG, msg_key, MsgRef(thread_id, seq, state.customer_id), ABSENT)
    yield from core.commit(writes.batch())
    applied = len(events) - 1
    return ApplyResult(
        kind="provider_id",
        outcome="recorded",
        reason=f"{msg_key} recorded for {thread_id}#{seq}"
        + (f"; {applied} held status(es) applied" if applied else ""),
        thread_id=thread_id,
        seq=new.version,
        message_seq=seq,
    )


def _none() -> Op[list[Recorded]]:
    return []
    yield  # pragma: no cover


# --------------------------------------------------------------------------- reads


def timeline(thread_id: str) -> Op[list[TimelineEntry]]:
    yield from core.load_thread(thread_id)
    pairs = yield from core.read_thread_events(thread_id, 0)
    return fold_timeline(pairs)


def find_message(channel: str, provider_message_id: str) -> Op[MessageLocation | None]:
    item = yield from core.get(NS_MSG, f"{channel}|{provider_message_id}")
    if item is None:
        return None
    ref = core.decode_msgref(item.value)
    return MessageLocation(thread_id=ref.thread_id, seq=ref.seq, customer_id=ref.customer_id)


def unsupported(
    limit: int, cursor: str | None
) -> Op[tuple[list[tuple[datetime, Unsupported]], str | None]]:
    after = _decode_cursor(cursor, "unsupported") if cursor else ""
    page = yield from core.scan(NS_UNSUPPORTED, "", after, limit)
    items = [_unsupported_decoder(item.value) for _key, item in page]
    nxt = _encode_cursor("unsupported", page[-1][0]) if len(page) == limit else None
    return [(u.recorded_at, u.report) for u in items], nxt


def _encode_cursor(index: str, position: str) -> str:
    raw = json.dumps([index, position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, index: str) -> str:
    try:
        pad = "=" * (-len(cursor) % 4)
        got_index, position = json.loads(base64.urlsafe_b64decode(cursor + pad))
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"not a cursor of this query: {cursor!r}") from exc
    if got_index != index or not isinstance(position, str):
        raise ValidationError(f"the cursor belongs to another kind of query ({got_index!r})")
    return position


def threads(
    *,
    customer: str | None,
    status: ThreadStatus | str | None,
    channel: str | None,
    controller: Party | None,
    active_after: datetime | None,
    active_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> Op[ThreadPage]:
    """Threads matching every filter given, one page at a time, by last activity,
    oldest first (the threads waiting longest), thread id breaking ties: one query on
    the thread heads."""
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError("limit must be an int between 1 and 1000")
    st = ThreadStatus(status) if status is not None else None
    after: tuple[datetime, str] | None = None
    if cursor:
        position = _decode_cursor(cursor, "activity")
        when, sep, tid = position.partition("|")
        try:
            after = (ensure_utc(datetime.fromisoformat(when)), tid)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"not a cursor of this query: {cursor!r}") from exc
        if not sep or not tid:
            raise ValidationError(f"not a cursor of this query: {cursor!r}")
    query = HeadQuery(
        tenant=core.TENANT,
        customer_id=customer,
        statuses=(st.value,) if st is not None else (),
        channel=channel,
        controller=None if controller is None else f"{controller.kind.value}:{controller.id}",
        active_from=ensure_utc(active_after, "active_after") if active_after else None,
        active_until=ensure_utc(active_before, "active_before") if active_before else None,
        after=after,
        limit=limit,
    )
    heads = yield from core.find_heads(query)
    items = tuple(state_of(h) for h in heads)
    nxt = None
    if len(heads) == limit:
        last = heads[-1]
        nxt = _encode_cursor("activity", f"{last.last_activity.isoformat()}|{last.thread_id}")
    return ThreadPage(items=items, next_cursor=nxt)


# --------------------------------------------------------------------------- batches


def ingest_many(config: Config, inbounds: Sequence[Inbound]) -> Op[list[IngestResult]]:
    """Ingest ``inbounds`` in order, committing them in one store transaction.

    Each message sees the ones before it (a redelivery inside the batch is a duplicate;
    the second message of a new customer continues its thread). Atomic: an error in any
    message (a typed error such as IdempotencyError or ValidationError) writes nothing;
    a conflict with another writer retries the whole batch. What the messages need is
    loaded for all of them at once (:mod:`~convthread.service._load`).
    """
    queries: list[_load.IngestQuery | Exception] = []
    for inbound in inbounds:
        try:
            queries.append(_load.query(config, inbound))
        except Exception as exc:
            queries.append(exc)
    valid = [q for q in queries if isinstance(q, _load.IngestQuery)]
    cache = yield from _load.load(config, valid)
    overlay = Overlay(cache)
    results: list[IngestResult] = []
    for q in queries:
        if isinstance(q, Exception):
            raise q
        r, w = yield from through(overlay, _messages.ingest_in(config, q, overlay))
        if w is not None:
            overlay.take(w.batch())
        results.append(r)
    batch = overlay.batch()
    if not batch.is_empty:
        yield from core.commit(batch)
    _load.learn(config, valid, results)
    return results
