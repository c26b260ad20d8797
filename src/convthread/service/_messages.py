"""Ingest and send: the message pipeline as store-call generators.

ingest: validate -> deduplicate -> resolve identity -> choose thread -> append -> outcome,
all written in one batch (one store transaction).
"""

from __future__ import annotations

from datetime import datetime

from convthread import codec
from convthread.domain.continuity import Choice, ContinuityContext
from convthread.domain.events import (
    CustomerCreated,
    CustomerEvent,
    Decision,
    Evidence,
    IdentifierLinked,
    LifecycleChanged,
    MessageReceived,
    MessageSent,
    ThreadEvent,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.identity import Resolution, resolve
from convthread.domain.model import Content, Inbound, Party, SenderIdentifier
from convthread.domain.thread import CustomerState, ThreadState, evolve, evolve_customer, start_state
from convthread.errors import (
    IdempotencyError,
    InvalidTransition,
    StaleControllerError,
    ValidationError,
)
from convthread.ports import ABSENT, ANY, Append, Batch, Put
from convthread.service import _core as core
from convthread.service._core import (
    NS_CTHREADS,
    NS_CUSTOMER,
    NS_IDEM,
    NS_IDENT,
    NS_LATEST,
    NS_MSG,
    NS_OPEN,
    NS_THREAD,
    Config,
    IdentRef,
    MsgRef,
    Op,
)
from convthread.service._results import IngestResult, SendResult

_EMPTY = b""


class _Writes:
    """Collects the batch of one operation."""

    def __init__(self) -> None:
        self.appends: list[Append] = []
        self.puts: list[Put] = []

    def append(self, stream: str, expected: int, events: list[ThreadEvent] | list[CustomerEvent]) -> None:
        self.appends.append(Append(stream, expected, tuple(codec.encode(e) for e in events)))

    def put(self, ns: str, key: str, value: object, expected: int = ANY) -> None:
        data = value if isinstance(value, bytes) else codec.encode(value)
        self.puts.append(Put(ns, key, data, expected))

    def batch(self) -> Batch:
        return Batch(appends=tuple(self.appends), puts=tuple(self.puts))


def normalize_sender(config: Config, inbound: Inbound) -> tuple[SenderIdentifier, ...]:
    """Re-normalize every sender identifier (cached), rejecting unknown kinds."""
    out: list[SenderIdentifier] = []
    seen: set[str] = set()
    registry = config.identifiers
    for s in inbound.sender:
        if not isinstance(s, SenderIdentifier):
            raise ValidationError(f"sender entries must be SenderIdentifier, not {type(s).__name__}")
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
        return (yield from _original_outcome(existing.value, fp, inbound.key))

    now = config.clock.now()
    writes = _Writes()

    # 2. Resolve identity.
    keys = [s.identifier.key for s in sender]
    owned = yield from core.get_many(NS_IDENT, keys)
    owners = {k: core.decode_identref(item.value).customer_id for k, item in owned.items()}
    owner_ids = list(dict.fromkeys(owners.values()))
    cust_items = yield from core.get_many(NS_CUSTOMER, owner_ids)
    customers = {cid: core.decode_customer_state(item.value) for cid, item in cust_items.items()}
    resolution = resolve(sender, owners, customers)
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
    )


def _sender_of(sender: tuple[SenderIdentifier, ...], resolution: Resolution) -> SenderIdentifier:
    if resolution.matched is not None:
        for s in sender:
            if s.identifier == resolution.matched:
                return s
    return max(sender, key=lambda s: s.trust.rank)


def _original_outcome(value: bytes, fp: str, key: str) -> Op[IngestResult]:
    ref = core.decode_msgref(value)
    records = yield from core.read(ref.thread_id, ref.seq - 1, 1)
    if not records:
        raise IdempotencyError(key)
    event = codec.decode_event(records[0].data)
    if not isinstance(event, MessageReceived):
        # the key was used by an outbound message, or the content was erased
        raise IdempotencyError(key)
    if event.fingerprint != fp:
        raise IdempotencyError(key)
    return IngestResult(
        customer_id=ref.customer_id,
        thread_id=ref.thread_id,
        seq=ref.seq,
        event=event,
        duplicate=True,
        new_thread=ref.new_thread,
        new_customer=ref.new_customer,
        decision=event.decision or Decision(rule="unknown", reason="not recorded"),
        resolution=event.resolution or Decision(rule="unknown", reason="not recorded"),
    )


def _apply_resolution(
    config: Config,
    resolution: Resolution,
    customers: dict[str, CustomerState],
    items: dict[str, object],
    writes: _Writes,
    inbound: Inbound,
    now: datetime,
) -> tuple[str, bool]:
    events: list[CustomerEvent] = []
    if resolution.customer_id is None:
        customer_id = config.ids.new_id("cu")
        events.append(CustomerCreated(at=now, decision=resolution.decision))
        state: CustomerState | None = None
        expected_stream = 0
        expected_item = ABSENT
        new = True
    else:
        customer_id = resolution.customer_id
        state = customers[customer_id]
        expected_stream = state.version
        item = items[customer_id]
        expected_item = item.version  # type: ignore[attr-defined]
        new = False
    for s in (*resolution.links, *resolution.upgrades):
        events.append(
            IdentifierLinked(
                at=now,
                identifier=s.identifier,
                trust=s.trust,
                evidence=Evidence(
                    channel=inbound.channel,
                    method=s.method or ("channel" if s.trust.rank > 0 else "claim"),
                    by=f"channel:{inbound.channel}",
                    at=inbound.sent_at,
                    detail=f"arrived with message {inbound.provider_message_id}",
                ),
            )
        )
    for s in resolution.links:
        writes.put(NS_IDENT, s.identifier.key, IdentRef(customer_id), ABSENT)
    if events:
        seq = expected_stream
        for ev in events:
            seq += 1
            state = evolve_customer(state, customer_id, seq, ev)
        writes.append(customer_id, expected_stream, events)
        writes.put(NS_CUSTOMER, customer_id, state, expected_item)
    return customer_id, new


def _continuity_context(
    inbound: Inbound, customer_id: str, topic: str | None, new_customer: bool
) -> Op[tuple[ContinuityContext, object]]:
    if new_customer:
        return ContinuityContext(inbound=inbound, customer_id=customer_id, topic=topic), None
    okey = core.open_key(customer_id, topic)
    ref_ids = ([inbound.reply_to] if inbound.reply_to else []) + list(inbound.references)
    ref_keys = [f"{inbound.channel}|{r}" for r in ref_ids]
    refs = yield from core.get_many(NS_MSG, ref_keys)
    pointers = yield from core.get_many(NS_OPEN, [okey])
    latest_ptr = yield from core.get_many(NS_LATEST, [okey])
    wanted: dict[str, str] = {}
    for rid, rkey in zip(ref_ids, ref_keys):
        if rkey in refs:
            wanted[rid] = core.decode_msgref(refs[rkey].value).thread_id
    open_item = pointers.get(okey)
    live_id = open_item.value.decode() if open_item is not None else None
    latest_id = latest_ptr[okey].value.decode() if okey in latest_ptr else None
    ids = list(dict.fromkeys([*wanted.values(), *(x for x in (live_id, latest_id) if x)]))
    items = yield from core.get_many(NS_THREAD, ids)
    states = {tid: core.decode_thread_state(it.value) for tid, it in items.items()}
    referenced = {
        rid: states[tid]
        for rid, tid in wanted.items()
        if tid in states and states[tid].customer_id == customer_id
    }
    live = states.get(live_id) if live_id else None
    latest = states.get(latest_id) if latest_id and latest_id != live_id else None
    ctx = ContinuityContext(
        inbound=inbound,
        customer_id=customer_id,
        topic=topic,
        referenced=referenced,
        live=live,
        latest=latest,
    )
    return ctx, (open_item, {tid: it.version for tid, it in items.items()})


def _append_message(
    config: Config,
    choice: Choice,
    ctx: ContinuityContext,
    loaded: object,
    customer_id: str,
    topic: str | None,
    event: MessageReceived,
    writes: _Writes,
    now: datetime,
) -> Op[tuple[str, int, bool]]:
    open_item, versions = loaded if loaded is not None else (None, {})  # type: ignore[misc]
    okey = core.open_key(customer_id, topic)
    if choice.thread is not None:
        thread = choice.thread
        item_version = versions.get(thread.id)
        if item_version is None:  # referenced thread loaded lazily
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
        events.append(event)
        state = thread
        seq = thread.version
        for ev in events:
            seq += 1
            state = evolve(state, seq, ev)
        writes.append(thread.id, thread.version, events)
        writes.put(NS_THREAD, thread.id, state, item_version)
        if choice.reopen:
            # The thread becomes live again for its topic: claim the open pointer.
            reopen_key = core.open_key(thread.customer_id, thread.topic)
            writes.put(NS_OPEN, reopen_key, thread.id.encode(), ABSENT)
        return thread.id, seq, False

    # A new thread.
    thread_id = config.ids.new_id("th")
    predecessor = choice.predecessor
    if choice.supersede is not None:
        old = choice.supersede
        resolved = LifecycleChanged(
            at=now,
            status=ThreadStatus.RESOLVED,
            reason=f"superseded by {thread_id}: {choice.decision.reason}",
        )
        old_state = evolve(old, old.version + 1, resolved)
        writes.append(old.id, old.version, [resolved])
        writes.put(NS_THREAD, old.id, old_state, versions[old.id])
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
    writes.put(NS_THREAD, thread_id, state, ABSENT)
    if open_item is not None:
        # The open pointer names a thread that is being superseded, or that is no longer
        # live (resolved through a path that kept the pointer): take it over atomically.
        writes.put(NS_OPEN, okey, thread_id.encode(), open_item.version)
    else:
        writes.put(NS_OPEN, okey, thread_id.encode(), ABSENT)
    writes.put(NS_LATEST, okey, thread_id.encode(), ANY)
    writes.put(NS_CTHREADS, f"{customer_id}|{thread_id}", _EMPTY, ABSENT)
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
) -> Op[SendResult]:
    fp = codec.fingerprint_outbound(thread_id, content, sender, channel, provider_message_id)
    if idempotency_key is not None:
        existing = yield from core.get(NS_IDEM, idempotency_key)
        if existing is not None:
            ref = core.decode_msgref(existing.value)
            records = yield from core.read(ref.thread_id, ref.seq - 1, 1)
            event = codec.decode_event(records[0].data) if records else None
            if not isinstance(event, MessageSent) or event.fingerprint != fp:
                raise IdempotencyError(idempotency_key)
            return SendResult(thread_id=ref.thread_id, seq=ref.seq, event=event, duplicate=True)
    state, item_version = yield from core.load_thread(thread_id)
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
    now = config.clock.now()
    event = MessageSent(
        at=now,
        channel=channel or state.last_channel,
        sender=sender,
        content=content,
        provider_message_id=provider_message_id,
        reply_to=reply_to,
        fencing_token=state.fencing_token,
        idempotency_key=idempotency_key,
        fingerprint=fp,
    )
    seq = state.version + 1
    new_state = evolve(state, seq, event)
    writes = _Writes()
    writes.append(thread_id, state.version, [event])
    writes.put(NS_THREAD, thread_id, new_state, item_version)
    ref = MsgRef(thread_id, seq, state.customer_id)
    if provider_message_id is not None:
        writes.put(NS_MSG, f"{event.channel}|{provider_message_id}", ref, ABSENT)
    if idempotency_key is not None:
        writes.put(NS_IDEM, idempotency_key, ref, ABSENT)
    yield from core.commit(writes.batch())
    return SendResult(thread_id=thread_id, seq=seq, event=event, duplicate=False)


__all__ = ["ingest", "send"]
