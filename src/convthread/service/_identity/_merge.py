"""Merging two customers: :func:`merge`, for an agent, the ingest policy, an accepted
suggestion or a verification.

A merge is one batch: both customers' streams and cached states, every identifier of
the absorbed customer (``ident``), every thread of the absorbed customer (a
``ThreadReassigned`` event and its head, whose customer changes), and the
``open``/``latest`` pointers of its topics. When both customers have a live thread for
the same topic, the survivor's stays live and the absorbed one's is resolved (one live
thread per customer and topic); the merge event records it, and the pointers it changed,
so that unmerge restores the exact prior state. The hard rules of the merge policy always
apply; a pending suggestion for the pair is settled in the same batch.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    CustomerMerged,
    Decision,
    LifecycleChanged,
    MergeSuggestionResolved,
    PointerChange,
    SuspendedThread,
    ThreadEvent,
    ThreadReassigned,
    ThreadStatus,
)
from convthread.domain.thread import CustomerState, evolve
from convthread.errors import InvalidTransition, PolicyViolation
from convthread.ports import ABSENT
from convthread.service import _core as core
from convthread.service import _reads
from convthread.service._core import (
    NS_IDENT,
    NS_LATEST,
    NS_MERGE,
    NS_OPEN,
    NS_SUGGEST,
    NS_SUGGEST_PAIR,
    Config,
    IdentRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._identity._records import (
    MergeRef,
    SuggestionRef,
    _live_customer,
    _pair_key,
    _suggestion,
)
from convthread.service._identity._results import MergeResult


def merge(
    config: Config,
    a: str,
    b: str,
    *,
    by: str = "",
    reason: str = "",
    dry_run: bool = False,
    decision: Decision | None = None,
    suggestion: tuple[str, SuggestionRef, int] | None = None,
) -> Op[MergeResult]:
    """Merge customers ``a`` and ``b``; the policy's survivor rule says who survives.

    The hard rules (per-kind limits, verified account ids, blocklist) always apply and
    raise PolicyViolation. ``dry_run`` computes the same batch and returns it as a preview
    without writing.
    """
    policy = config.merge_policy
    a_state, a_ver = yield from core.load_customer(a)
    b_state, b_ver = yield from core.load_customer(b)
    _live_customer(a_state)
    _live_customer(b_state)
    if a == b:
        raise InvalidTransition(f"customer {a!r} cannot be merged with itself")
    hard = policy.hard_violations(a_state, b_state)
    if hard:
        raise PolicyViolation(f"cannot merge {a} and {b}: " + "; ".join(hard))
    survivor, absorbed = policy.choose_survivor(a_state, b_state)
    s_state, s_ver = (a_state, a_ver) if survivor == a else (b_state, b_ver)
    x_state, x_ver = (b_state, b_ver) if survivor == a else (a_state, a_ver)
    now = config.clock.now()
    merge_id = config.ids.new_id("mg")
    if decision is None:
        decision = Decision(
            rule="manual_merge",
            code="merge.manual",
            params={"note": reason} if reason else {},
            evidence={"by": by, "survivor": survivor, "absorbed": absorbed},
        )
    extra: dict[str, list[CustomerEvent]] = {}
    w = _Writes()
    if suggestion is None:
        # A pending suggestion for this pair is settled by the merge.
        pair = yield from core.get(NS_SUGGEST_PAIR, _pair_key(a, b))
        if pair is not None:
            sid = pair.value.decode()
            found = yield from core.get(NS_SUGGEST, sid)
            if found is not None:
                pending = _suggestion(found.value)
                if pending.status == "pending":
                    suggestion = (sid, pending, found.version)
    if suggestion is not None:
        sid, ref, version = suggestion
        extra[ref.customer_id] = [
            MergeSuggestionResolved(at=now, suggestion_id=sid, accepted=True, by=by)
        ]
        w.put(NS_SUGGEST, sid, msgspec.structs.replace(ref, status="accepted", by=by), version)
    result = yield from _plan_merge(
        w,
        s_state,
        s_ver,
        x_state,
        x_ver,
        merge_id=merge_id,
        decision=decision,
        by=by,
        now=now,
        extra=extra,
    )
    if dry_run:
        return msgspec.structs.replace(result, dry_run=True)
    yield from core.commit(w.batch())
    return result


def _plan_merge(
    w: _Writes,
    s_state: CustomerState,
    s_ver: int,
    a_state: CustomerState,
    a_ver: int,
    *,
    merge_id: str,
    decision: Decision,
    by: str,
    now: datetime,
    extra: dict[str, list[CustomerEvent]],
) -> Op[MergeResult]:
    s_id, a_id = s_state.id, a_state.id
    # Identifiers.
    moved = tuple(sorted(a_state.identifiers.values(), key=lambda p: p[0].key))
    ident_items = yield from core.get_many(NS_IDENT, [i.key for i, _t in moved])
    for ident, _trust in moved:
        item = ident_items.get(ident.key)
        if item is None or core.decode_identref(item.value).customer_id != a_id:
            # Changed by a concurrent writer since the state was read: that writer also
            # bumped the customer's cached state, so this batch's compare-and-set on it
            # conflicts and the operation runs again.
            continue
        w.put(NS_IDENT, ident.key, IdentRef(s_id), item.version)
    # Threads and their topic pointers.
    a_tids = yield from _reads.customer_thread_ids(a_id)
    a_threads = yield from core.get_threads(a_tids)
    topics = sorted({st.topic for st, _v in a_threads.values()}, key=lambda t: t or "")
    a_keys = [core.open_key(a_id, t) for t in topics]
    s_keys = [core.open_key(s_id, t) for t in topics]
    opens = yield from core.get_many(NS_OPEN, a_keys + s_keys)
    latests = yield from core.get_many(NS_LATEST, a_keys + s_keys)
    named = {it.value.decode() for k in s_keys for it in (opens.get(k), latests.get(k)) if it}
    s_found = yield from core.get_threads(sorted(named))
    s_threads = {tid: st for tid, (st, _v) in s_found.items()}
    pointers: list[PointerChange] = []
    suspend: dict[str, str] = {}  # absorbed thread id -> the survivor's live thread id
    for ka, ks in zip(a_keys, s_keys, strict=True):
        a_open, s_open = opens.get(ka), opens.get(ks)
        a_tid = a_open.value.decode() if a_open else None
        s_tid = s_open.value.decode() if s_open else None
        if a_open is not None and a_tid is not None:
            a_st = a_threads.get(a_tid)
            s_st = s_threads.get(s_tid) if s_tid else None
            a_live = a_st is not None and a_st[0].is_open
            s_live = s_st is not None and s_st.is_open and s_st.customer_id == s_id
            w.delete(NS_OPEN, ka, a_open.version)
            pointers.append(PointerChange(NS_OPEN, ka, a_tid, None))
            if a_live and s_live and s_tid is not None:
                suspend[a_tid] = s_tid
            elif a_live or s_open is None:
                w.put(NS_OPEN, ks, a_tid.encode(), s_open.version if s_open else ABSENT)
                pointers.append(PointerChange(NS_OPEN, ks, s_tid, a_tid))
        a_latest, s_latest = latests.get(ka), latests.get(ks)
        if a_latest is not None:
            a_lid = a_latest.value.decode()
            s_lid = s_latest.value.decode() if s_latest else None
            w.delete(NS_LATEST, ka, a_latest.version)
            pointers.append(PointerChange(NS_LATEST, ka, a_lid, None))
            a_lst = a_threads.get(a_lid)
            s_lst = s_threads.get(s_lid) if s_lid else None
            take = s_lst is None or (
                a_lst is not None and (a_lst[0].created_at, a_lid) > (s_lst.created_at, s_lst.id)
            )
            if take:
                w.put(NS_LATEST, ks, a_lid.encode(), s_latest.version if s_latest else ABSENT)
                pointers.append(PointerChange(NS_LATEST, ks, s_lid, a_lid))
    suspended: list[SuspendedThread] = []
    for tid in sorted(a_threads):
        st, version = a_threads[tid]
        events: list[ThreadEvent] = [
            ThreadReassigned(at=now, customer_id=s_id, previous_customer_id=a_id, merge_id=merge_id)
        ]
        if tid in suspend:
            suspended.append(SuspendedThread(tid, st.status, st.snoozed_until))
            events.append(
                LifecycleChanged(
                    at=now,
                    status=ThreadStatus.RESOLVED,
                    reason=(
                        f"merge {merge_id}: customer {a_id} merged into {s_id}, whose live "
                        f"thread {suspend[tid]} continues topic {st.topic_key!r}; "
                        "unmerge restores this thread"
                    ),
                )
            )
        new = st
        seq = st.version
        for ev in events:
            seq += 1
            new = evolve(new, seq, ev)
        w.append(tid, st.version, events)
        w.thread(st, new, version)  # the head's customer_id moves it to the survivor
    event = CustomerMerged(
        at=now,
        merge_id=merge_id,
        survivor=s_id,
        absorbed=a_id,
        identifiers=moved,
        threads=tuple(sorted(a_threads)),
        decision=decision,
        by=by,
        pointers=tuple(pointers),
        suspended=tuple(suspended),
    )
    w.customer(s_id, s_state, s_ver, [*extra.get(s_id, []), event])
    w.customer(a_id, a_state, a_ver, [*extra.get(a_id, []), event])
    w.put(NS_MERGE, merge_id, MergeRef(s_id, a_id), ABSENT)
    return MergeResult(
        merge_id=merge_id,
        survivor=s_id,
        absorbed=a_id,
        identifiers=moved,
        threads=event.threads,
        suspended=event.suspended,
        pointers=event.pointers,
        decision=decision,
    )
