"""Where an inbound message goes, and what it changes: :func:`decide_ingest`.

Pure: the service loads an :class:`IngestContext` (the continuity context of the
message, the thread heads it loaded with their versions, the customer's open pointer),
and this module decides, with the continuity policy, the time and an id source passed
in, what one batch must write: the events of each thread stream, the thread heads
(each written by compare-and-set on the version it was loaded at), and the customer's
pointers for the topic (its live thread, its newest thread). When the policy chose a
thread the service did not load (a custom rule may), the answer is :class:`NeedMore`
naming it; the service loads it and asks again with the same choice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal

import msgspec

from convthread.domain.continuity import Choice, ContinuityContext, ContinuityPolicy
from convthread.domain.events import (
    LifecycleChanged,
    MessageReceived,
    ThreadEvent,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.thread import ThreadState, evolve, start_state, wake_on_inbound

__all__ = [
    "ANY_VERSION",
    "NEW",
    "HeadChange",
    "IngestContext",
    "IngestDecision",
    "NeedMore",
    "PointerWrite",
    "StreamAppend",
    "decide_ingest",
]

#: An expectation that the written entry does not exist yet.
NEW: Final = 0
#: An expectation that holds whatever the entry's version.
ANY_VERSION: Final = -1


class IngestContext(msgspec.Struct, frozen=True, gc=False):
    """What :func:`decide_ingest` looks at, loaded by the service."""

    continuity: ContinuityContext
    #: the message's event, with its identity decision (its continuity decision is set
    #: by :func:`decide_ingest`).
    event: MessageReceived
    #: thread id -> (its state, the version of its head) for every thread loaded.
    threads: dict[str, tuple[ThreadState, int]]
    #: the version of the customer's open pointer for the topic, None when it has none.
    open_version: int | None = None
    #: the choice already made, and the threads loaded for it (set by the service when
    #: it answers :class:`NeedMore`).
    choice: Choice | None = None
    fetched: tuple[str, ...] = ()


class NeedMore(msgspec.Struct, frozen=True, gc=False):
    """The threads the service must load (with the versions of their heads) before
    :func:`decide_ingest` can decide; ``choice`` goes back in the extended context."""

    threads: tuple[str, ...]
    choice: Choice


class StreamAppend(msgspec.Struct, frozen=True, gc=False):
    """Events appended to a thread's stream after its event ``expected``."""

    stream: str
    expected: int
    events: tuple[ThreadEvent, ...]


class HeadChange(msgspec.Struct, frozen=True, gc=False):
    """A thread's head written as ``new``, by compare-and-set on version ``expected``
    (:data:`NEW`: the thread is new)."""

    new: ThreadState
    expected: int


class PointerWrite(msgspec.Struct, frozen=True, gc=False):
    """The customer's ``open`` (live thread) or ``latest`` (newest thread) pointer for a
    topic set to ``thread_id`` (None: removed), expecting version ``expected``."""

    kind: Literal["open", "latest"]
    customer_id: str
    topic: str | None
    thread_id: str | None
    expected: int


class IngestDecision(msgspec.Struct, frozen=True, gc=False):
    """What one batch writes for the message, and where it landed."""

    choice: Choice
    event: MessageReceived
    thread_id: str
    seq: int
    new_thread: bool
    appends: tuple[StreamAppend, ...]
    heads: tuple[HeadChange, ...]
    pointers: tuple[PointerWrite, ...]


def decide_ingest(
    ctx: IngestContext,
    policy: ContinuityPolicy,
    now: datetime,
    new_id: Callable[[str], str],
) -> IngestDecision | NeedMore:
    """Choose the message's thread (``policy``) and say what the batch writes.

    ``now`` stamps the lifecycle events; ``new_id("th")`` names a new thread (called
    only when one starts).
    """
    choice = ctx.choice if ctx.choice is not None else policy.decide(ctx.continuity)
    event = msgspec.structs.replace(ctx.event, decision=choice.decision)
    threads = ctx.threads
    wanted = tuple(
        t.id for t in (choice.thread, choice.supersede) if t is not None and t.id not in threads
    )
    if wanted:
        return NeedMore(threads=wanted, choice=choice)
    cc = ctx.continuity
    customer_id, topic = cc.customer_id, cc.topic
    if choice.thread is not None:
        return _continue(ctx, choice, event, now, customer_id, topic)
    return _start(ctx, choice, event, now, new_id("th"), customer_id, topic)


def _current(ctx: IngestContext, chosen: ThreadState) -> tuple[ThreadState, int]:
    """The state to write ``chosen`` from, and the version its head was loaded at: as
    chosen, unless the service had to load it for the choice."""
    state, version = ctx.threads[chosen.id]
    return (state if chosen.id in ctx.fetched else chosen), version


def _continue(
    ctx: IngestContext,
    choice: Choice,
    event: MessageReceived,
    now: datetime,
    customer_id: str,
    topic: str | None,
) -> IngestDecision:
    assert choice.thread is not None
    thread, version = _current(ctx, choice.thread)
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
    pointers: tuple[PointerWrite, ...] = ()
    if choice.reopen:
        # The thread becomes live again for its topic: claim the open pointer.
        same = thread.customer_id == customer_id and (thread.topic or "") == (topic or "")
        expected = ctx.open_version if same and ctx.open_version is not None else NEW
        pointers = (PointerWrite("open", thread.customer_id, thread.topic, thread.id, expected),)
    return IngestDecision(
        choice=choice,
        event=event,
        thread_id=thread.id,
        seq=seq,
        new_thread=False,
        appends=(StreamAppend(thread.id, thread.version, tuple(events)),),
        heads=(HeadChange(state, version),),
        pointers=pointers,
    )


def _start(
    ctx: IngestContext,
    choice: Choice,
    event: MessageReceived,
    now: datetime,
    thread_id: str,
    customer_id: str,
    topic: str | None,
) -> IngestDecision:
    appends: list[StreamAppend] = []
    heads: list[HeadChange] = []
    pointers: list[PointerWrite] = []
    if choice.supersede is not None:
        old, old_version = _current(ctx, choice.supersede)
        resolved = LifecycleChanged(
            at=now,
            status=ThreadStatus.RESOLVED,
            reason=f"superseded by {thread_id}: {choice.decision.reason}",
        )
        appends.append(StreamAppend(old.id, old.version, (resolved,)))
        heads.append(HeadChange(evolve(old, old.version + 1, resolved), old_version))
        if old.customer_id != customer_id or (old.topic or "") != (topic or ""):
            pointers.append(PointerWrite("open", old.customer_id, old.topic, None, ANY_VERSION))
    started = ThreadStarted(
        at=now,
        customer_id=customer_id,
        channel=event.channel,
        topic=topic,
        predecessor=choice.predecessor,
        decision=choice.decision,
    )
    state = evolve(start_state(thread_id, started), 2, event)
    appends.append(StreamAppend(thread_id, 0, (started, event)))
    heads.append(HeadChange(state, NEW))
    # The open pointer may name a thread that is being superseded, or that is no longer
    # live (resolved through a path that kept the pointer): take it over atomically.
    open_expected = ctx.open_version if ctx.open_version is not None else NEW
    pointers.append(PointerWrite("open", customer_id, topic, thread_id, open_expected))
    pointers.append(PointerWrite("latest", customer_id, topic, thread_id, ANY_VERSION))
    return IngestDecision(
        choice=choice,
        event=event,
        thread_id=thread_id,
        seq=2,
        new_thread=True,
        appends=tuple(appends),
        heads=tuple(heads),
        pointers=tuple(pointers),
    )
