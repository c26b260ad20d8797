"""Ingest and send: the message pipeline as store-call generators.

ingest is three stanzas: *load* (:mod:`~convthread.service._load`: the message's context,
one read in the steady state), *decide* (deduplicate; resolve identity, whose automatic
merges join the batch; :func:`~convthread.domain.ingest.decide_ingest` for the thread
and what it writes), *write* (:mod:`~convthread.service._write`: one batch, one commit).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from convthread import codec
from convthread._heads import state_of
from convthread.domain.continuity import ContinuityContext, reference_token
from convthread.domain.events import (
    Decision,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStatus,
)
from convthread.domain.identity import Resolution
from convthread.domain.ingest import IngestContext, NeedMore, decide_ingest
from convthread.domain.model import Content, Inbound, Party, SenderIdentifier, TimeSource
from convthread.domain.thread import CustomerState, ThreadState, evolve
from convthread.domain.timeline import MessageMark
from convthread.errors import (
    ErasedError,
    IdempotencyError,
    InvalidTransition,
    NotFound,
    StaleControllerError,
)
from convthread.ports import ABSENT, Item
from convthread.service import _core as core
from convthread.service import _handoff, _identity, _load, _write
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
from convthread.service._load import normalize_sender
from convthread.service._marks import decode_early, early_events
from convthread.service._results import IngestResult, SendResult
from convthread.service._write import Overlay, through


def ingest(config: Config, inbound: Inbound) -> Op[IngestResult]:
    """Ingest one message: load (one read in the steady state), decide, write one batch
    (with the automatic merges its resolution made, if any)."""
    q = _load.query(config, inbound)
    cache = yield from _load.load(config, [q])
    overlay = Overlay(cache)
    result: IngestResult
    writes: _Writes | None
    result, writes = yield from through(overlay, ingest_in(config, q, overlay))
    if writes is not None:
        yield from _write.commit(overlay, writes.batch())
    _load.learn(config, [q], [result])
    return result


def ingest_in(
    config: Config, q: _load.IngestQuery, view: Overlay
) -> Op[tuple[IngestResult, _Writes | None]]:
    """Ingest ``q`` on the batch ``view`` collects (run it through
    :func:`~convthread.service._write.through`): the result, and the message's writes
    (None for a redelivery), which the caller commits or adds to its batch. Reads ask
    ``view`` first (what was loaded, and what the batch wrote before)."""
    inbound = q.inbound
    sender = q.sender
    fp = q.fingerprint
    custom_key = inbound.idempotency_key

    # 1. Deduplicate: a redelivery returns the original outcome.
    existing = yield from _load.entry(view, NS_MSG, q.msg_key)
    if existing is None and custom_key is not None:
        existing = yield from _load.entry(view, NS_IDEM, custom_key)
    if existing is not None:
        return (yield from _original_outcome(existing.value, fp, inbound)), None

    now = config.clock.now()
    writes = _Writes()

    # 2. Resolve identity (the merge policy's automatic merges go into the batch first;
    # links, upgrades and merge suggestions follow them in it).
    resolution, customers, cust_items = yield from _identity.resolve_sender(config, sender, view)
    customer_id, new_customer = _apply_resolution(
        config, resolution, customers, cust_items, writes, inbound, now
    )

    # 3. Choose the thread and decide what the message writes.
    topic = q.topic
    cctx, open_item, threads = yield from _continuity_context(
        q, view, customer_id, topic, new_customer
    )
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
        decision=_PENDING,
        resolution=resolution.decision,
    )
    ctx = IngestContext(
        continuity=cctx,
        event=event,
        threads=threads,
        open_version=open_item.version if open_item is not None else None,
    )
    decision = decide_ingest(ctx, config.continuity, now, config.ids.new_id)
    while isinstance(decision, NeedMore):
        # a thread a custom rule found: load it
        found = yield from _load.heads(view, decision.threads)
        more = dict(threads)
        for tid in decision.threads:
            head = found.get(tid)
            if head is None:
                raise NotFound("thread", tid)
            more[tid] = (state_of(head), head.version)
        ctx = msgspec.structs.replace(
            ctx, threads=more, choice=decision.choice, fetched=decision.threads
        )
        decision = decide_ingest(ctx, config.continuity, now, config.ids.new_id)

    # 4. Write.
    _write.ingest_writes(writes, decision)
    thread_id, seq, new_thread = decision.thread_id, decision.seq, decision.new_thread
    event = decision.event
    ref = MsgRef(thread_id, seq, customer_id, new_thread, new_customer)
    writes.put(NS_MSG, q.msg_key, ref, ABSENT)
    if custom_key is not None:
        writes.put(NS_IDEM, custom_key, ref, ABSENT)
    # 5. Handoff rules and the snapshot checkpoint, in the same batch.
    choice = decision.choice
    handoff = yield from _handoff.after_ingest(config, writes, choice.thread, thread_id, event, seq)
    result = IngestResult(
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
    return result, writes


#: The continuity decision of a message event until decide_ingest sets it.
_PENDING: Final = Decision.text("pending", "not decided yet")


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


#: The threads loaded for the continuity rules: id -> (state, version of its head).
_Threads = dict[str, tuple[ThreadState, int]]


def _continuity_context(
    q: _load.IngestQuery, view: Overlay, customer_id: str, topic: str | None, new_customer: bool
) -> Op[tuple[ContinuityContext, Item | None, _Threads]]:
    """Load what the continuity rules look at: referenced threads (reply-to, references,
    reference tokens), the live and the latest thread for the customer and topic, and
    the live threads of the referenced threads' topics. Returns the context, the open
    pointer's entry (if any) and the threads loaded."""
    inbound = q.inbound
    if new_customer:
        return ContinuityContext(inbound=inbound, customer_id=customer_id, topic=topic), None, {}
    okey = core.open_key(customer_id, topic)
    token_ids = q.tokens
    if not (q.ref_ids or token_ids):
        return (yield from _live_context(inbound, view, customer_id, topic, okey))
    ref_ids, ref_keys = q.ref_ids, q.ref_keys
    refs = yield from _load.entries(view, NS_MSG, ref_keys)
    open_item = yield from _load.entry(view, NS_OPEN, okey)
    # The newest thread for the topic matters only when none is live (to reopen it or
    # to name it as predecessor): skip that read in the common case.
    latest_item = None if open_item is not None else (yield from _load.entry(view, NS_LATEST, okey))
    wanted: dict[str, str] = {}
    for rid, rkey in zip(ref_ids, ref_keys, strict=True):
        if rkey in refs:
            wanted[rid] = core.decode_msgref(refs[rkey].value).thread_id
    live_id = open_item.value.decode() if open_item is not None else None
    latest_id = latest_item.value.decode() if latest_item is not None else None
    ids = list(
        dict.fromkeys([*wanted.values(), *token_ids, *(x for x in (live_id, latest_id) if x)])
    )
    found = yield from _load.heads(view, ids)
    threads: _Threads = {tid: (state_of(h), h.version) for tid, h in found.items()}
    states = {tid: st for tid, (st, _v) in threads.items()}
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
        more = yield from _load.entries(view, NS_OPEN, list(other_keys))
        sib_ids = [it.value.decode() for it in more.values()]
        siblings = yield from _load.heads(view, [i for i in sib_ids if i not in states])
        for tid, h in siblings.items():
            st = state_of(h)
            states[tid] = st
            threads[tid] = (st, h.version)
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
    return ctx, open_item, threads


def _live_context(
    inbound: Inbound, view: Overlay, customer_id: str, topic: str | None, okey: str
) -> Op[tuple[ContinuityContext, Item | None, _Threads]]:
    """_continuity_context for a message with no reference of any kind (the common case):
    only the live thread matters, or the newest one when none is live."""
    open_item = yield from _load.entry(view, NS_OPEN, okey)
    pointer = open_item
    if pointer is None:
        pointer = yield from _load.entry(view, NS_LATEST, okey)
    live: ThreadState | None = None
    latest: ThreadState | None = None
    threads: _Threads = {}
    if pointer is not None:
        tid = pointer.value.decode()
        found, head = view.head(tid)
        if not found:
            head = (yield from core.get_heads([tid])).get(tid)
        if head is not None and head.customer_id == customer_id:
            state = state_of(head)
            threads[tid] = (state, head.version)
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
    return ctx, open_item, threads


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


__all__ = ["ingest", "ingest_in", "normalize_sender", "send"]
