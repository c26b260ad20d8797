"""Context snapshots as store-call generators: checkpoint + tail, never a full replay.

The snapshot state of a thread is kept as a checkpoint (NS_HSNAP, key ``"{thread}|"``
-> SnapshotState at some sequence number; see :func:`checkpoint_key`). Building a
snapshot reads the checkpoint and only the events after it (whoever appended them, in
whatever operation), folds them, and projects the result for the audience. When the tail
has grown to CHECKPOINT_EVERY events the folded state is written back as the new
checkpoint (compare-and-set on its version), so the tail stays short; ingest also moves
the checkpoint forward in its own batch once the thread is CHECKPOINT_EVERY events past
it (see :func:`maintain_checkpoint`).
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from convthread import codec
from convthread.domain.redaction import policy_for
from convthread.domain.snapshot import (
    Snapshot,
    SnapshotState,
    advance,
    fold_snapshot,
    project,
)
from convthread.domain.thread import CustomerState
from convthread.errors import NotFound, PolicyViolation, ValidationError
from convthread.ports import ABSENT, Append, Item, Put
from convthread.service import _core as core
from convthread.service import _identity
from convthread.service._core import (
    CHECKPOINT_EVERY,
    NS_CUSTOMER,
    NS_HSNAP,
    Config,
    Op,
    Writes,
    checkpoint_key,
)
from convthread.service._results import IngestResult

__all__ = [
    "CHECKPOINT_EVERY",
    "Writes",
    "handed_over",
    "load_snapshot_state",
    "maintain_checkpoint",
    "snapshot",
    "snapshot_at",
]

#: Events folded after a checkpoint before a new checkpoint is written.

_state_decoder: Final = codec.decoder(SnapshotState)
_snapshot_json: Final = msgspec.json.Decoder(Snapshot)


class _SeqOnly(msgspec.Struct, array_like=True):
    """The first fields of an encoded SnapshotState, in its order, up to its ``seq``."""

    thread_id: str
    customer_id: str
    seq: int


_seq_only: Final = codec.decoder(_SeqOnly)  # reads a checkpoint's seq, skips the rest


def decode_snapshot_state(data: bytes) -> SnapshotState:
    return _state_decoder(data)


def origin_of(first_event: bytes) -> str:
    """The fingerprint of a thread's first stored event, kept in its checkpoint."""
    return hashlib.blake2b(first_event, digest_size=8).hexdigest()


def load_checkpoint(thread_id: str) -> Op[tuple[SnapshotState | None, Item | None]]:
    """The thread's checkpoint (None if missing or no longer valid) and its entry.

    A checkpoint is valid while the thread's first event is the one it was folded from:
    rewriting events in place (erasure blanks the first event's decision) invalidates it,
    so a checkpoint written from events read before an erasure is never used after it."""
    item = yield from core.get(NS_HSNAP, checkpoint_key(thread_id))
    if item is None:
        return None, None
    base = decode_snapshot_state(item.value)
    first = yield from core.read(thread_id, 0, 1)
    if not first or base.origin != origin_of(first[0].data):
        return None, item
    return base, item


def load_snapshot_state(
    thread_id: str, upto: int | None = None
) -> Op[tuple[SnapshotState, Item | None, int]]:
    """The snapshot state at ``upto`` (default: the latest event), the checkpoint entry,
    and how many events were folded on top of the checkpoint."""
    base, item = yield from load_checkpoint(thread_id)
    if base is not None and upto is not None and base.seq > upto:
        base = None  # a snapshot of the past: the checkpoint is ahead of it
    after = 0 if base is None else base.seq
    limit = None if upto is None else upto - after
    records = yield from core.read(thread_id, after, limit)
    pairs = [(r.seq, codec.decode_event(r.data)) for r in records]
    if base is None:
        if not pairs:
            raise NotFound("thread", thread_id)
        state = fold_snapshot(thread_id, pairs)
        state = msgspec.structs.replace(state, origin=origin_of(records[0].data))
    elif pairs:
        state = advance(base, pairs)
    else:
        state = base
    if upto is not None and state.seq != upto:
        raise NotFound("thread event", f"{thread_id}#{upto}")
    return state, item, len(pairs)


def checkpoint(writes: object, thread_id: str, state: SnapshotState, item: Item | None) -> None:
    """Add the checkpoint write of ``state`` to ``writes`` (a batch being built)."""
    expected = ABSENT if item is None else item.version
    puts: list[Put] = writes.puts  # type: ignore[attr-defined]  # Writes or ingest's
    puts.append(Put(NS_HSNAP, checkpoint_key(thread_id), codec.encode(state), expected))


def load_customer_state(customer_id: str) -> Op[CustomerState | None]:
    item = yield from core.get(NS_CUSTOMER, customer_id)
    return None if item is None else core.decode_customer_state(item.value)


def snapshot_at(
    config: Config,
    state: SnapshotState,
    audience: str,
    *,
    max_messages: int = 20,
    max_chars: int | None = None,
) -> Op[Snapshot]:
    """Project ``state`` for ``audience`` (loading its customer)."""
    policy = policy_for(audience, config.redaction)
    customer = yield from load_customer_state(state.customer_id)
    return project(
        state,
        audience=audience,
        policy=policy,
        customer=customer,
        max_messages=max_messages,
        max_chars=max_chars,
    )


def snapshot(
    config: Config,
    thread_id: str,
    audience: str,
    at_seq: int | None,
    max_messages: int,
    max_chars: int | None,
    session: IngestResult | None = None,
) -> Op[Snapshot]:
    if at_seq is not None and at_seq < 1:
        raise ValidationError("at_seq must be >= 1")
    policy_for(audience, config.redaction)  # an unknown audience fails before any read
    if audience == "customer" and session is None:
        raise ValidationError(
            "a customer-audience snapshot is read on a session's behalf: pass "
            "session=<the IngestResult of the session's message> so the disclosure "
            "policy can apply"
        )
    since = 1
    if session is not None:
        if session.thread_id != thread_id:
            raise PolicyViolation(
                f"the session's message is in thread {session.thread_id!r}, not {thread_id!r}"
            )
        seen = yield from _identity.disclosure(config, session)
        if seen.scope != "history":
            since = seen.since
    state, item, tail = yield from load_snapshot_state(thread_id, at_seq)
    result = yield from snapshot_at(
        config, state, audience, max_messages=max_messages, max_chars=max_chars
    )
    if since > 1:
        result = _from(result, since)
    if tail >= CHECKPOINT_EVERY and (
        item is None or state.seq > decode_snapshot_state(item.value).seq
    ):
        writes = Writes()
        checkpoint(writes, thread_id, state, item)
        yield from core.commit(writes.batch())
    return result


def _from(result: Snapshot, since: int) -> Snapshot:
    """``result`` restricted to what a session below the disclosure trust may see: its
    own messages from ``since`` on; no earlier attributes, intents or handoff history."""
    kept = tuple(m for m in result.messages if m.seq >= since)
    return msgspec.structs.replace(
        result,
        messages=kept,
        messages_omitted=0,
        message_count=len(kept),
        journey=(),
        journey_omitted=0,
        attributes=(),
        intents=(),
        handoffs=(),
        handoffs_omitted=0,
    )


def handed_over(thread_id: str, handoff_id: str) -> Op[Snapshot]:
    """The snapshot stored with a handoff: exactly what its receiver was given."""
    item = yield from core.get(NS_HSNAP, f"{thread_id}|{handoff_id}")
    if item is None:
        raise NotFound("handoff snapshot", f"{thread_id}|{handoff_id}")
    return _snapshot_json.decode(item.value)


def maintain_checkpoint(writes: object, thread_id: str) -> Op[None]:
    """Inside ingest: when the thread has CHECKPOINT_EVERY events or more past its
    checkpoint, fold the checkpoint forward to the end of the batch and write it in the
    same batch. Events appended by other operations are folded from the store. Threads
    shorter than CHECKPOINT_EVERY cost nothing (no read)."""
    appends: list[Append] = writes.appends  # type: ignore[attr-defined]
    append = next((a for a in appends if a.stream == thread_id), None)
    if append is None or not append.events:
        return
    last = append.expected + len(append.events)
    if last < CHECKPOINT_EVERY:
        return
    probe = yield from core.get(NS_HSNAP, checkpoint_key(thread_id))
    after = 0 if probe is None else _seq_only(probe.value).seq
    if last - after < CHECKPOINT_EVERY or after > append.expected:
        return
    base, item = yield from load_checkpoint(thread_id)
    after = 0 if base is None else base.seq
    extra = [
        (append.expected + i + 1, codec.decode_event(data)) for i, data in enumerate(append.events)
    ]
    records = yield from core.read(thread_id, after, append.expected - after)
    pairs = [(r.seq, codec.decode_event(r.data)) for r in records] + extra
    if base is None:
        first = records[0].data if records else append.events[0]
        state = fold_snapshot(thread_id, pairs)
        state = msgspec.structs.replace(state, origin=origin_of(first))
    else:
        state = advance(base, pairs)
    checkpoint(writes, thread_id, state, item)
