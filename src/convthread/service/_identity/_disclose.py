"""Reads on a session's behalf under the disclosure policy: :func:`disclosure` decides
what a session may see and :func:`history_for` reads it.

Every session-facing read starts at :func:`disclosure`, which reads nothing but the
thread, the customer and the identifier's link. Below the policy's trust a session sees
only its own thread, from its message on, without the attributes collected earlier.
"""

from __future__ import annotations

import msgspec

from convthread.domain.model import Identifier, SenderIdentifier, Trust
from convthread.domain.thread import ThreadState
from convthread.errors import ErasedError, ValidationError
from convthread.service import _core as core
from convthread.service import _reads
from convthread.service._core import Config, Op
from convthread.service._identity._records import _owner
from convthread.service._identity._results import Disclosure, History
from convthread.service._results import IngestResult, StoredEvent, ThreadView


def disclosure(
    config: Config,
    result: IngestResult | None = None,
    identifier: Identifier | None = None,
    *,
    trust: Trust | None = None,
    thread_id: str | None = None,
    since: int | None = None,
) -> Op[Disclosure]:
    """What a session may see, decided by the disclosure policy (nothing is read but
    the thread, the customer and the identifier's link). Every read made on a session's
    behalf starts here: :func:`history_for`, and any other session-facing read."""
    if result is not None:
        if not isinstance(result, IngestResult):
            raise ValidationError("pass the session's IngestResult")
        presented = result.event.sender
        thread_id = result.thread_id
        if since is None:
            since = result.seq
    elif identifier is not None:
        if not isinstance(trust, Trust):
            raise ValidationError("pass the trust the session's identifier arrived with")
        presented = SenderIdentifier(identifier, trust)
    else:
        raise ValidationError("pass an IngestResult, or an identifier and its trust")
    ident = config.identifiers.renormalize(presented.identifier)
    thread: ThreadState | None = None
    customer_id: str | None
    if thread_id is not None:
        thread, _tv = yield from core.load_thread(thread_id)
        customer_id = thread.customer_id
    else:
        customer_id, _item = yield from _owner(ident)
    linked: Trust | None = None
    if customer_id is not None:
        state, _cv = yield from core.load_customer(customer_id)
        if state.erased:
            raise ErasedError(f"customer {customer_id!r} was erased")
        linked = state.trust_of(ident)
    decision = config.disclosure.decide(ident, presented.trust, linked)
    history = decision.rule == "history" and customer_id is not None
    return Disclosure(
        customer_id=customer_id,
        thread_id=thread_id,
        scope="history" if history else "current_thread",
        since=1 if history else max(since or 1, 1),
        decision=decision,
        thread=thread,
    )


def history_for(
    config: Config,
    result: IngestResult | None = None,
    identifier: Identifier | None = None,
    *,
    trust: Trust | None = None,
    thread_id: str | None = None,
    since: int | None = None,
) -> Op[History]:
    """What a session may see, under the disclosure policy.

    Pass the session's :class:`IngestResult` (the identifier the message arrived with,
    its trust, its thread), or the ``identifier`` and its ``trust`` (and optionally the
    session's ``thread_id``). With enough trust: the customer's threads. Otherwise only
    the session's thread from ``since`` on (default: the session's message).
    """
    d = yield from disclosure(
        config, result, identifier, trust=trust, thread_id=thread_id, since=since
    )
    views: list[ThreadView] = []
    if d.scope == "history" and d.customer_id is not None:
        states = yield from _reads.customer_threads(d.customer_id)
        for st in states:
            pairs = yield from core.read_thread_events(st.id, 0)
            views.append(ThreadView(state=st, events=tuple(StoredEvent(s, e) for s, e in pairs)))
    elif d.thread is not None:
        pairs = yield from core.read_thread_events(d.thread.id, d.since - 1)
        # Attributes collected earlier in the thread are history too: not shown.
        visible = msgspec.structs.replace(d.thread, attributes={})
        views.append(ThreadView(state=visible, events=tuple(StoredEvent(s, e) for s, e in pairs)))
    return History(
        customer_id=d.customer_id,
        thread_id=d.thread_id,
        scope=d.scope,
        decision=d.decision,
        threads=tuple(views),
    )
