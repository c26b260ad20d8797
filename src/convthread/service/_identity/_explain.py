"""Explaining where an identifier is: :func:`explain` walks the owner's stream and follows
merges (into the absorbed customer's past), unmerges (into the survivor's) and takeovers
(into the claimant's) to give the chain of events that put it there, oldest first.

Read-only. A takeover is followed only when the claimant's stream has the matching
``IdentifierUnlinked`` (the evidence text alone is not trusted); recursion stops at depth
64.
"""

from __future__ import annotations

from convthread.domain.events import (
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    MergeSuggested,
)
from convthread.domain.model import Identifier
from convthread.service import _core as core
from convthread.service._core import Config, Op
from convthread.service._identity._records import _TAKEN_FROM, _owner
from convthread.service._identity._results import ExplainStep, Explanation


def _touches(event: CustomerEvent, key: str) -> bool:
    if isinstance(event, IdentifierLinked | IdentifierUnlinked | IdentifierVerified):
        return event.identifier.key == key
    if isinstance(event, CustomerMerged | CustomerUnmerged):
        return any(i.key == key for i, _t in event.identifiers)
    if isinstance(event, MergeSuggested):
        return event.identifier.key == key
    return False


def _chain(
    customer_id: str, key: str, lo: int, hi: int | None, depth: int
) -> Op[list[ExplainStep]]:
    """Steps touching ``key`` in ``customer_id``'s stream with lo < seq <= hi, following
    merges (into the absorbed customer's past) and unmerges (into the survivor's)."""
    if depth > 64:
        return []
    events = yield from core.read_customer_events(customer_id)
    steps: list[ExplainStep] = []
    for seq, ev in events:
        if seq <= lo or (hi is not None and seq > hi) or not _touches(ev, key):
            continue
        if isinstance(ev, IdentifierLinked) and (
            claimant := _TAKEN_FROM.search(ev.evidence.detail)
        ):
            # A takeover: first the claimant's chain, up to the link being superseded.
            steps.extend((yield from _claimant_chain(claimant.group(1), ev, key, depth)))
        elif isinstance(ev, CustomerMerged) and ev.survivor == customer_id:
            other = yield from core.read_customer_events(ev.absorbed)
            end = next(
                (
                    s
                    for s, e in other
                    if isinstance(e, CustomerMerged) and e.merge_id == ev.merge_id
                ),
                None,
            )
            steps.extend((yield from _chain(ev.absorbed, key, 0, (end or 1) - 1, depth + 1)))
        elif isinstance(ev, CustomerUnmerged) and ev.restored == customer_id:
            other = yield from core.read_customer_events(ev.survivor)
            start = next(
                (
                    s
                    for s, e in other
                    if isinstance(e, CustomerMerged) and e.merge_id == ev.merge_id
                ),
                0,
            )
            end = next(
                (
                    s
                    for s, e in other
                    if isinstance(e, CustomerUnmerged) and e.merge_id == ev.merge_id
                ),
                None,
            )
            stop = None if end is None else end - 1
            steps.extend((yield from _chain(ev.survivor, key, start, stop, depth + 1)))
        steps.append(ExplainStep(customer_id, seq, ev))
    return steps


def _claimant_chain(
    claimant: str, link: IdentifierLinked, key: str, depth: int
) -> Op[list[ExplainStep]]:
    """The claimant's steps for ``key`` up to the ``IdentifierUnlinked`` written with the
    takeover ``link`` (same time, reason ``superseded``); none when there is no such
    event (the detail text alone is not trusted)."""
    events = yield from core.read_customer_events(claimant)
    end = next(
        (
            seq
            for seq, e in events
            if isinstance(e, IdentifierUnlinked)
            and e.identifier.key == key
            and e.at == link.at
            and e.reason.startswith("superseded")
        ),
        None,
    )
    if end is None:
        return []
    return (yield from _chain(claimant, key, 0, end, depth + 1))


def explain(config: Config, identifier: Identifier) -> Op[Explanation]:
    """The chain of identity events that put ``identifier`` where it is now."""
    ident = config.identifiers.renormalize(identifier)
    owner, _item = yield from _owner(ident)
    if owner is None:
        return Explanation(identifier=ident, customer_id=None, trust=None, steps=())
    state, _version = yield from core.load_customer(owner)
    steps = yield from _chain(owner, ident.key, 0, None, 0)
    return Explanation(
        identifier=ident, customer_id=owner, trust=state.trust_of(ident), steps=tuple(steps)
    )
