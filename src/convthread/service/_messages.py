"""Ingest and send: the message pipeline as store-call generators.

ingest: validate -> deduplicate -> resolve identity -> choose thread -> append -> outcome,
all written in one batch (one store transaction).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread import codec
from convthread.domain.continuity import (
    Choice,
    ContinuityContext,
    find_reference_tokens,
    reference_token,
)
from convthread.domain.events import (
    Decision,
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.identity import Resolution
from convthread.domain.model import Content, Inbound, Party, SenderIdentifier, TimeSource
from convthread.domain.thread import (
    CustomerState,
    ThreadState,
    evolve,
    start_state,
    wake_on_inbound,
)
from convthread.domain.timeline import MessageMark
from convthread.errors import (
    ErasedError,
    IdempotencyError,
    InvalidTransition,
    StaleControllerError,
    ValidationError,
)
from convthread.ports import ABSENT, ANY, Item
from convthread.service import _core as core
from convthread.service import _handoff, _identity
from convthread.service._core import (
    NS_EARLY,
    NS_IDEM,
    NS_LATEST,
    NS_MARK,
    NS_MSG,
    NS_OPEN,
    Config,
    MsgRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._marks import decode_early, early_events
from convthread.service._results import IngestResult, SendResult

#: What _continuity_context loaded for _append_message: the open pointer's entry (if
#: any) and the index versions of the threads it loaded.
_Loaded = tuple["Item | None", dict[str, int]]


def normalize_sender(config: Config, inbound: Inbound) -> tuple[SenderIdentifier, ...]:
    """Re-normalize every sender identifier (cached), rejecting unknown kinds."""
    out: list[SenderIdentifier] = []
    seen: set[str] = set()
    registry = config.identifiers
    for s in inbound.sender:
        if not isinstance(s, SenderIdentifier):
            raise ValidationError(
                f"sender entries must be SenderIdentifier, not {type(s).__name__}"
            )
        ident = registry.renormalize(s.identifier)
        if ident.key in seen:
            continue
        seen.add(ident.key)
        out.append(s if ident == s.identifier else SenderIdentifier(ident, s.trust, s.method))
    return tuple(out)


def ingest(config: Config, inbound: Inbound) -> Op[IngestResult]:
    if not isinstance(inbound, Inbound):
        raise ValidationError(f"ingest() takes an Inbound, not {type(inbound).__name__}")
    sender = normalize_sender(config, inbound)
    fp = codec.fingerprint(inbound)
    msg_key = f"{inbound.channel}|{inbound.provider_message_id}"
    custom_key = inbound.idempotency_key

    # 1. Deduplicate: a redelivery returns the original outcome.
    existing = yield from core.get(NS_MSG, msg_key)
    if existing is None and custom_key is not None:
        existing = yield from core.get(NS_IDEM, custom_key)
    if existing is not None:
        return (yield from _original_outcome(existing.value, fp, inbound))

    now = config.clock.now()
    writes = _Writes()

    # 2. Resolve identity (the merge policy's automatic merges commit first, each in its
    # own batch; links, upgrades and merge suggestions go into this batch).
    resolution, customers, cust_items = yield from _identity.resolve_sender(config, sender)
    customer_id, new_customer = _apply_resolution(
        config, resolution, customers, cust_items, writes, inbound, now
    )

    # 3. Choose the thread.
    topic = config.continuity.topic_of(inbound)
    ctx, open_item = yield from _continuity_context(inbound, customer_id, topic, new_customer)
    choice = config.continuity.decide(ctx)

    # 4. Append.
    event = MessageReceived(
        at=now,
        channel=inbound.channel,
        provider_message_id=inbound.provider_message_id,
        idempotency_key=inbound.key,
        fingerprint=fp,
        sender=_sender_of(sender, resolution),
        content=inbound.content,
        sent_at=inbound.sent_at,
        recipient=inbound.recipient,
        reply_to=inbound.reply_to,
        references=inbound.references,
        subject=inbound.subject,
        decision=choice.decision,
        resolution=resolution.decision,
    )
    thread_id, seq, new_thread = yield from _append_message(
        config, choice, ctx, open_item, customer_id, topic, event, writes, now
    )
    ref = MsgRef(thread_id, seq, customer_id, new_thread, new_customer)
    writes.put(NS_MSG, msg_key, ref, ABSENT)
    if custom_key is not None:
        writes.put(NS_IDEM, custom_key, ref, ABSENT)
    # 5. Handoff rules and the snapshot checkpoint, in the same batch.
    handoff = yield from _handoff.after_ingest(config, writes, choice.thread, thread_id, event, seq)
    yield from core.commit(writes.batch())
    return IngestResult(
        customer_id=customer_id,
        thread_id=thread_id,
        seq=seq,
        event=event,
        duplicate=False,
        new_thread=new_thread,
        new_customer=new_customer,
        decision=choice.decision,
        resolution=resolution.decision,
        handoff=handoff,
    )


def _sender_of(sender: tuple[SenderIdentifier, ...], resolution: Resolution) -> SenderIdentifier:
    if resolution.matched is not None:
        for s in sender:
            if s.identifier == resolution.matched:
                return s
    return max(sender, key=lambda s: s.trust.rank)


def _original_outcome(value: bytes, fp: str, inbound: Inbound) -> Op[IngestResult]:
    key = inbound.key
    ref = core.decode_msgref(value)
    records = yield from core.read(ref.thread_id, ref.seq - 1, 1)
    if not records:
        raise IdempotencyError(key)
    event = codec.decode_event(records[0].data)
    if not isinstance(event, MessageReceived):
        # the key was used by an outbound message, or the content was erased
        raise IdempotencyError(key)
    if event.fingerprint != fp and not _fingerprinted_with_receive_time(event, inbound):
        raise IdempotencyError(key)
    return IngestResult(
        customer_id=ref.customer_id,
        thread_id=ref.thread_id,
        seq=ref.seq,
        event=event,
        duplicate=True,
        new_thread=ref.new_thread,
        new_customer=ref.new_customer,
        decision=event.decision or Decision.text("unknown", "not recorded"),
        resolution=event.resolution or Decision.text("unknown", "not recorded"),
    )


def _fingerprinted_with_receive_time(event: MessageReceived, inbound: Inbound) -> bool:
    """Whether ``event`` is an earlier delivery of ``inbound`` (whose ``sent_at`` is a
    receive time) stored with a fingerprint that covered the receive time, as stores
    written before :class:`TimeSource` hold: the digest of this delivery stamped with the
    stored time matches."""
    if inbound.time_source is not TimeSource.RECEIVED:
        return False
    then = msgspec.structs.replace(inbound, sent_at=event.sent_at, time_source=TimeSource.PROVIDER)
    return event.fingerprint == codec.fingerprint(then)


def _apply_resolution(
    config: Config,
    resolution: Resolution,
    customers: dict[str, CustomerState],
    items: dict[str, Item],
    writes: _Writes,
    inbound: Inbound,
    now: datetime,
) -> tuple[str, bool]:
    """Add what the resolution says to the batch: a new customer, links and upgrades
    with their evidence, merge suggestions (see :mod:`convthread.service._identity`)."""
    customer_id, new, appends, puts = _identity.resolution_writes(
        config, resolution, customers, items, inbound, now
    )
    writes.appends.extend(appends)
    writes.puts.extend(puts)
    return customer_id, new


def _continuity_context(
    inbound: Inbound, customer_id: str, topic: str | None, new_customer: bool
) -> Op[tuple[ContinuityContext, _Loaded | None]]:
    """Load what the continuity rules look at: referenced threads (reply-to, references,
    reference tokens), the live and the latest thread for the customer and topic, and
    the live threads of the referenced threads' topics."""
    if new_customer:
        return ContinuityContext(inbound=inbound, customer_id=customer_id, topic=topic), None
    okey = core.open_key(customer_id, topic)
    token_ids = find_reference_tokens(inbound)
    if not (inbound.reply_to or inbound.references or token_ids):
        return (yield from _live_context(inbound, customer_id, topic, okey))
    ref_ids = ([inbound.reply_to] if inbound.reply_to else []) + list(inbound.references)
    ref_keys = [f"{inbound.channel}|{r}" for r in ref_ids]
    refs = yield from core.get_many(NS_MSG, ref_keys)
    open_item = yield from core.get(NS_OPEN, okey)
    # The newest thread for the topic matters only when none is live (to reopen it or
    # to name it as predecessor): skip that read in the common case.
    latest_item = None if open_item is not None else (yield from core.get(NS_LATEST, okey))
    wanted: dict[str, str] = {}
    for rid, rkey in zip(ref_ids, ref_keys, strict=True):
        if rkey in refs:
            wanted[rid] = core.decode_msgref(refs[rkey].value).thread_id
    live_id = open_item.value.decode() if open_item is not None else None
    latest_id = latest_item.value.decode() if latest_item is not None else None
    ids = list(
        dict.fromkeys([*wanted.values(), *token_ids, *(x for x in (live_id, latest_id) if x)])
    )
    found = yield from core.get_threads(ids)
    states = {tid: st for tid, (st, _v) in found.items()}
    versions = {tid: v for tid, (_st, v) in found.items()}
    mine = {tid: st for tid, st in states.items() if st.customer_id == customer_id}
    referenced = {rid: mine[tid] for rid, tid in wanted.items() if tid in mine}
    tokens = {tid: mine[tid] for tid in token_ids if tid in mine}
    live = mine.get(live_id) if live_id else None
    latest = mine.get(latest_id) if latest_id and latest_id != live_id else None
    if live is not None and not live.is_open:
        # a stale pointer (the next new thread takes it over): it names the newest thread
        live, latest = None, latest or live
    live_by_topic: dict[str, ThreadState] = {}
    if live is not None:
        live_by_topic[live.topic_key] = live
    # A referenced thread that is no longer live may have a live sibling for its topic.
    other_keys = {
        core.open_key(customer_id, st.topic): st.topic_key
        for st in (*referenced.values(), *tokens.values())
        if not st.is_open and st.topic_key != (topic or "")
    }
    if other_keys:
        more = yield from core.get_many(NS_OPEN, list(other_keys))
        sib_ids = [it.value.decode() for it in more.values()]
        siblings = yield from core.get_threads([i for i in sib_ids if i not in states])
        for tid, (st, v) in siblings.items():
            states[tid] = st
            versions[tid] = v
        for key, item in more.items():
            sib = states.get(item.value.decode())
            if sib is not None and sib.is_open and sib.customer_id == customer_id:
                live_by_topic[other_keys[key]] = sib
    ctx = ContinuityContext(
        inbound=inbound,
        customer_id=customer_id,
        topic=topic,
        referenced=referenced,
        live=live,
        latest=latest,
        tokens=tokens,
        live_by_topic=live_by_topic,
    )
    return ctx, (open_item, versions)


def _live_context(
    inbound: Inbound, customer_id: str, topic: str | None, okey: str
) -> Op[tuple[ContinuityContext, _Loaded]]:
    """_continuity_context for a message with no reference of any kind (the common case):
    only the live thread matters, or the newest one when none is live."""
    open_item = yield from core.get(NS_OPEN, okey)
    pointer = open_item if open_item is not None else (yield from core.get(NS_LATEST, okey))
    live: ThreadState | None = None
    latest: ThreadState | None = None
    versions: dict[str, int] = {}
    if pointer is not None:
        found = yield from core.get_thread(pointer.value.decode())
        state = found[0] if found is not None else None
        if found is not None and state is not None and state.customer_id == customer_id:
            versions[state.id] = found[1]
            if open_item is not None and state.is_open:
                live = state
            else:
                # no live thread, or a stale pointer (the next new thread takes it over):
                # it names the newest thread
                latest = state
    ctx = ContinuityContext(
        inbound=inbound,
        customer_id=customer_id,
        topic=topic,
        live=live,
        latest=latest,
        live_by_topic={live.topic_key: live} if live is not None else {},
    )
    return ctx, (open_item, versions)


def _append_message(
    config: Config,
    choice: Choice,
    ctx: ContinuityContext,
    loaded: _Loaded | None,
    customer_id: str,
    topic: str | None,
    event: MessageReceived,
    writes: _Writes,
    now: datetime,
) -> Op[tuple[str, int, bool]]:
    open_item, versions = loaded if loaded is not None else (None, {})
    okey = core.open_key(customer_id, topic)
    if choice.thread is not None:
        thread = choice.thread
        item_version = versions.get(thread.id)
        if item_version is None:  # a thread a custom rule found: load it
            thread, item_version = yield from core.load_thread(thread.id)
        events: list[ThreadEvent] = []
        if choice.reopen:
            events.append(
                LifecycleChanged(
                    at=now,
                    status=ThreadStatus.OPEN,
                    reason=f"reopened: {choice.decision.reason}",
                    reopened=True,
                )
            )
        else:
            wake = wake_on_inbound(thread, now, event.channel)
            if wake is not None:
                events.append(wake)
        events.append(event)
        state = thread
        seq = thread.version
        for ev in events:
            seq += 1
            state = evolve(state, seq, ev)
        writes.append(thread.id, thread.version, events)
        writes.thread(thread, state, item_version)
        if choice.reopen:
            # The thread becomes live again for its topic: claim the open pointer.
            reopen_key = core.open_key(thread.customer_id, thread.topic)
            expected = open_item.version if reopen_key == okey and open_item else ABSENT
            writes.put(NS_OPEN, reopen_key, thread.id.encode(), expected)
        return thread.id, seq, False

    # A new thread.
    thread_id = config.ids.new_id("th")
    predecessor = choice.predecessor
    if choice.supersede is not None:
        old = choice.supersede
        old_version = versions.get(old.id)
        if old_version is None:
            old, old_version = yield from core.load_thread(old.id)
        resolved = LifecycleChanged(
            at=now,
            status=ThreadStatus.RESOLVED,
            reason=f"superseded by {thread_id}: {choice.decision.reason}",
        )
        old_state = evolve(old, old.version + 1, resolved)
        writes.append(old.id, old.version, [resolved])
        writes.thread(old, old_state, old_version)
        old_key = core.open_key(old.customer_id, old.topic)
        if old_key != okey:
            writes.delete(NS_OPEN, old_key, ANY)
    started = ThreadStarted(
        at=now,
        customer_id=customer_id,
        channel=event.channel,
        topic=topic,
        predecessor=predecessor,
        decision=choice.decision,
    )
    state = start_state(thread_id, started)
    state = evolve(state, 2, event)
    writes.append(thread_id, 0, [started, event])
    writes.thread(None, state, ABSENT)
    if open_item is not None:
        # The open pointer names a thread that is being superseded, or that is no longer
        # live (resolved through a path that kept the pointer): take it over atomically.
        writes.put(NS_OPEN, okey, thread_id.encode(), open_item.version)
    else:
        writes.put(NS_OPEN, okey, thread_id.encode(), ABSENT)
    writes.put(NS_LATEST, okey, thread_id.encode(), ANY)
    return thread_id, 2, True


def send(
    config: Config,
    thread_id: str,
    content: Content,
    sender: Party,
    channel: str | None,
    fencing_token: int | None,
    provider_message_id: str | None,
    idempotency_key: str | None,
    reply_to: str | None,
    embed_reference: bool = False,
) -> Op[SendResult]:
    fp = codec.fingerprint_outbound(thread_id, content, sender, channel, provider_message_id)
    if idempotency_key is not None:
        existing = yield from core.get(NS_IDEM, idempotency_key)
        if existing is not None:
            return (yield from _original_send(existing.value, fp, idempotency_key))
    state, item_version = yield from core.load_thread(thread_id)
    owner = yield from core.get(core.NS_CUSTOMER, state.customer_id)
    if owner is not None and core.decode_customer_state(owner.value).erased:
        raise ErasedError(f"thread {thread_id!r} belongs to an erased customer; nothing is sent")
    if state.status is ThreadStatus.CLOSED:
        raise InvalidTransition(f"thread {thread_id!r} is closed; nothing more can be sent on it")
    if fencing_token is not None and fencing_token != state.fencing_token:
        raise StaleControllerError(thread_id, fencing_token, state.fencing_token)
    if (
        fencing_token is None
        and state.controller is not None
        and sender != state.controller
        and sender.kind.value in ("bot", "agent", "queue")
    ):
        raise StaleControllerError(thread_id, -1, state.fencing_token)
    out_channel = channel or state.last_channel
    msg_key = f"{out_channel}|{provider_message_id}" if provider_message_id is not None else ""
    early = None
    if provider_message_id is not None:
        # The provider id names one message: a retry of this send is a duplicate, any
        # other use is key misuse. Statuses reported before this call are applied now.
        known = yield from core.get(NS_MSG, msg_key)
        if known is not None:
            return (yield from _original_send(known.value, fp, msg_key))
        early = yield from core.get(NS_EARLY, msg_key)
    now = config.clock.now()
    token = reference_token(thread_id) if embed_reference else ""
    if token and token not in content.text:
        text = f"{content.text}\n\n{token}" if content.text else token
        content = msgspec.structs.replace(content, text=text)
    event = MessageSent(
        at=now,
        channel=out_channel,
        sender=sender,
        content=content,
        provider_message_id=provider_message_id,
        reply_to=reply_to,
        fencing_token=state.fencing_token,
        reference_token=token,
        idempotency_key=idempotency_key,
        fingerprint=fp,
    )
    seq = state.version + 1
    events: list[ThreadEvent] = [event]
    if early is not None:
        statuses, mark = early_events(decode_early(early.value), MessageMark(), seq, now)
        events.extend(statuses)
        writes_mark: MessageMark | None = mark
    else:
        writes_mark = None
    new_state = state
    for i, ev in enumerate(events):
        new_state = evolve(new_state, seq + i, ev)
    writes = _Writes()
    writes.append(thread_id, state.version, events)
    writes.thread(state, new_state, item_version)
    ref = MsgRef(thread_id, seq, state.customer_id)
    if provider_message_id is not None:
        writes.put(NS_MSG, msg_key, ref, ABSENT)
    if early is not None:
        writes.delete(NS_EARLY, msg_key, early.version)
        writes.put(NS_MARK, f"{thread_id}|{seq}", writes_mark, ABSENT)
    elif provider_message_id is not None:
        # Assert no status was held meanwhile (deleting a missing key is a no-op): a
        # status report racing this send makes one of the two retry, never lost.
        writes.delete(NS_EARLY, msg_key, ABSENT)
    if idempotency_key is not None:
        writes.put(NS_IDEM, idempotency_key, ref, ABSENT)
    yield from core.commit(writes.batch())
    return SendResult(thread_id=thread_id, seq=seq, event=event, duplicate=False)


def _original_send(value: bytes, fp: str, key: str) -> Op[SendResult]:
    ref = core.decode_msgref(value)
    records = yield from core.read(ref.thread_id, ref.seq - 1, 1)
    event = codec.decode_event(records[0].data) if records else None
    if not isinstance(event, MessageSent) or event.fingerprint != fp:
        raise IdempotencyError(key)
    return SendResult(thread_id=ref.thread_id, seq=ref.seq, event=event, duplicate=True)


__all__ = ["ingest", "send"]
