"""Merge suggestions: recording one (:func:`_suggest`), listing them, and an agent
accepting (a merge, the hard rules still apply) or rejecting one.

A suggestion is recorded in the suggesting customer's stream (``MergeSuggested``) and in
the index (``NS_SUGGEST`` plus its ``NS_SUGGEST_PAIR`` key, written with ``ABSENT``, so a
pair is suggested once); it leaves ``pending`` only once, and a rejected pair is not
suggested again.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread.domain.events import Decision, MergeSuggested, MergeSuggestionResolved
from convthread.domain.model import Identifier
from convthread.domain.reasons import nest
from convthread.errors import InvalidTransition, NotFound
from convthread.ports import ABSENT
from convthread.service import _core as core
from convthread.service._core import NS_SUGGEST, NS_SUGGEST_PAIR, Config, Op
from convthread.service._core import Writes as _Writes
from convthread.service._identity._merge import merge
from convthread.service._identity._records import SuggestionRef, _pair_key, _suggestion
from convthread.service._identity._results import MergeResult, MergeSuggestion


def _suggest(
    config: Config,
    w: _Writes,
    customer_id: str,
    other: str,
    identifier: Identifier,
    decision: Decision,
    now: datetime,
) -> MergeSuggested:
    """Record a merge suggestion (the event is for ``customer_id``'s stream)."""
    sid = config.ids.new_id("ms")
    ref = SuggestionRef(
        customer_id=customer_id, other=other, identifier=identifier, decision=decision, at=now
    )
    w.put(NS_SUGGEST, sid, ref, ABSENT)
    w.put(NS_SUGGEST_PAIR, _pair_key(customer_id, other), sid.encode(), ABSENT)
    return MergeSuggested(
        at=now, suggestion_id=sid, other=other, identifier=identifier, decision=decision
    )


def suggestions(
    customer_id: str | None = None, status: str | None = "pending"
) -> Op[list[MergeSuggestion]]:
    """Recorded merge suggestions (pending ones by default), oldest first."""
    out: list[MergeSuggestion] = []
    after = ""
    while True:
        page = yield from core.scan(NS_SUGGEST, "", after, 1000)
        for sid, it in page:
            ref = _suggestion(it.value)
            if status is not None and ref.status != status:
                continue
            if customer_id is not None and customer_id not in (ref.customer_id, ref.other):
                continue
            out.append(_suggestion_view(sid, ref))
        if len(page) < 1000:
            break
        after = page[-1][0]
    out.sort(key=lambda s: (s.at, s.id))
    return out


def _suggestion_view(sid: str, ref: SuggestionRef) -> MergeSuggestion:
    return MergeSuggestion(
        id=sid,
        customer_id=ref.customer_id,
        other=ref.other,
        identifier=ref.identifier,
        decision=ref.decision,
        at=ref.at,
        status=ref.status,
        by=ref.by,
    )


def _load_suggestion(suggestion_id: str) -> Op[tuple[SuggestionRef, int]]:
    item = yield from core.get(NS_SUGGEST, suggestion_id)
    if item is None:
        raise NotFound("merge suggestion", suggestion_id)
    ref = _suggestion(item.value)
    if ref.status != "pending":
        raise InvalidTransition(f"merge suggestion {suggestion_id!r} is already {ref.status}")
    return ref, item.version


def accept_suggestion(
    config: Config, suggestion_id: str, *, by: str = "", dry_run: bool = False
) -> Op[MergeResult]:
    """An agent accepts a suggestion: the customers merge (the hard rules still apply)."""
    ref, version = yield from _load_suggestion(suggestion_id)
    decision = Decision(
        rule="suggestion_accepted",
        code="merge.suggestion_accepted",
        params=nest("s", ref.decision),
        evidence={"suggestion": suggestion_id, "by": by, "identifier": str(ref.identifier)},
    )
    return (
        yield from merge(
            config,
            ref.customer_id,
            ref.other,
            by=by,
            dry_run=dry_run,
            decision=decision,
            suggestion=(suggestion_id, ref, version),
        )
    )


def reject_suggestion(config: Config, suggestion_id: str, *, by: str = "") -> Op[MergeSuggestion]:
    """An agent rejects a suggestion: recorded, and the pair is not suggested again."""
    ref, version = yield from _load_suggestion(suggestion_id)
    state, cver = yield from core.load_customer(ref.customer_id)
    now = config.clock.now()
    w = _Writes()
    new_ref = msgspec.structs.replace(ref, status="rejected", by=by)
    w.put(NS_SUGGEST, suggestion_id, new_ref, version)
    if not state.erased:
        w.customer(
            ref.customer_id,
            state,
            cver,
            [MergeSuggestionResolved(at=now, suggestion_id=suggestion_id, accepted=False, by=by)],
        )
    yield from core.commit(w.batch())
    return _suggestion_view(suggestion_id, new_ref)
