"""Undoing a merge: :func:`unmerge` reads the merge event and the ledger entry and writes
the inverse batch.

The restored customer gets back only what the survivor still holds because of the merge
(:func:`~convthread.domain.merge.unmerge_keys` decides which identifiers), its threads, the
live status of the threads the merge resolved, and its topic pointers; the survivor's
pointers are restored only where they still point where the merge left them. A merge is
undone at most once, and never while the survivor is itself merged into another customer.
"""

from __future__ import annotations

from convthread.domain.events import (
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    LifecycleChanged,
    PointerChange,
    SuspendedThread,
    ThreadEvent,
    ThreadReassigned,
    ThreadStatus,
)
from convthread.domain.merge import unmerge_keys
from convthread.domain.model import Identifier, Trust
from convthread.domain.thread import evolve
from convthread.errors import ErasedError, InvalidTransition, NotFound
from convthread.ports import ABSENT, Item
from convthread.service import _core as core
from convthread.service._core import (
    NS_IDENT,
    NS_LATEST,
    NS_MERGE,
    NS_OPEN,
    Config,
    IdentRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._identity._records import MergeRef, _mergeref
from convthread.service._identity._results import UnmergeResult


def unmerge(config: Config, merge_id: str, *, by: str = "", reason: str = "") -> Op[UnmergeResult]:
    """Undo merge ``merge_id``: the absorbed customer gets back its identifiers that the
    survivor still holds because of the merge (see
    :func:`~convthread.domain.merge.unmerge_keys`; at their current trust), its threads,
    the live status of threads the merge resolved, and its topic pointers; the
    survivor's pointers the merge changed are restored unless they moved on since."""
    item = yield from core.get(NS_MERGE, merge_id)
    if item is None:
        raise NotFound("merge", merge_id)
    ref = _mergeref(item.value)
    if ref.undone:
        raise InvalidTransition(f"merge {merge_id!r} was already undone")
    s_state, s_ver = yield from core.load_customer(ref.survivor)
    a_state, a_ver = yield from core.load_customer(ref.absorbed)
    if s_state.erased or a_state.erased:
        raise ErasedError(f"merge {merge_id!r} involves an erased customer")
    if s_state.merged_into is not None:
        raise InvalidTransition(
            f"customer {s_state.id!r} was merged into {s_state.merged_into!r} after merge "
            f"{merge_id!r}; undo that merge first"
        )
    if a_state.merged_into != s_state.id:
        raise InvalidTransition(f"customer {a_state.id!r} is not merged into {s_state.id!r}")
    mev: CustomerMerged | None = None
    later: list[CustomerEvent] = []
    for _seq, ev in (yield from core.read_customer_events(s_state.id)):
        if isinstance(ev, CustomerMerged) and ev.merge_id == merge_id and ev.survivor == s_state.id:
            mev, later = ev, []
        else:
            later.append(ev)
    if mev is None:
        raise NotFound("merge event", merge_id)
    s_id, a_id = s_state.id, a_state.id
    now = config.clock.now()
    w = _Writes()
    # Identifiers the survivor still holds because of the merge go back, at their
    # current trust; one unlinked since (and perhaps linked again) stays.
    due = unmerge_keys(mev, later)
    ident_items = yield from core.get_many(NS_IDENT, [i.key for i, _t in mev.identifiers])
    back: list[tuple[Identifier, Trust]] = []
    for ident, _trust in mev.identifiers:
        it = ident_items.get(ident.key)
        current = s_state.identifiers.get(ident.key)
        if (
            ident.key not in due
            or it is None
            or current is None
            or core.decode_identref(it.value).customer_id != s_id
        ):
            continue
        back.append(current)
        w.put(NS_IDENT, ident.key, IdentRef(a_id), it.version)
    # Threads still on the survivor go back; suspended ones get their status back.
    t_found = yield from core.get_threads(list(mev.threads))
    suspended = {s.thread_id: s for s in mev.suspended}
    moved: list[str] = []
    resumed: list[SuspendedThread] = []
    for tid in mev.threads:
        found = t_found.get(tid)
        if found is None:
            continue
        st, version = found
        if st.customer_id != s_id:
            continue
        events: list[ThreadEvent] = [
            ThreadReassigned(at=now, customer_id=a_id, previous_customer_id=s_id, merge_id=merge_id)
        ]
        sus = suspended.get(tid)
        if sus is not None and st.status is ThreadStatus.RESOLVED:
            resumed.append(sus)
            events.append(
                LifecycleChanged(
                    at=now,
                    status=sus.status,
                    until=sus.until,
                    reason=f"unmerge {merge_id}: restored to {sus.status.value}",
                )
            )
        new = st
        seq = st.version
        for tev in events:
            seq += 1
            new = evolve(new, seq, tev)
        w.append(tid, st.version, events)
        w.thread(st, new, version)  # the head's customer_id moves it back
        moved.append(tid)
    # Pointers.
    moved_set = set(moved)
    by_ns: dict[str, list[str]] = {NS_OPEN: [], NS_LATEST: []}
    for pc in mev.pointers:
        by_ns.setdefault(pc.ns, []).append(pc.key)
    current_items: dict[str, dict[str, Item]] = {}
    for ns, keys in by_ns.items():
        current_items[ns] = yield from core.get_many(ns, keys)
    restored: list[PointerChange] = []
    a_prefix = f"{a_id}|"
    for pc in mev.pointers:
        cur = current_items[pc.ns].get(pc.key)
        cur_val = cur.value.decode() if cur else None
        if pc.key.startswith(a_prefix):
            if cur is None and pc.before is not None and pc.before in moved_set:
                w.put(pc.ns, pc.key, pc.before.encode(), ABSENT)
                restored.append(PointerChange(pc.ns, pc.key, None, pc.before))
        elif cur_val == pc.after and cur is not None:
            if pc.before is None:
                w.delete(pc.ns, pc.key, cur.version)
            else:
                w.put(pc.ns, pc.key, pc.before.encode(), cur.version)
            restored.append(PointerChange(pc.ns, pc.key, cur_val, pc.before))
    event = CustomerUnmerged(
        at=now,
        merge_id=merge_id,
        survivor=s_id,
        restored=a_id,
        identifiers=tuple(back),
        threads=tuple(moved),
        by=by,
        reason=reason,
        pointers=tuple(restored),
        resumed=tuple(resumed),
    )
    w.customer(s_id, s_state, s_ver, [event])
    w.customer(a_id, a_state, a_ver, [event])
    w.put(NS_MERGE, merge_id, MergeRef(s_id, a_id, undone=True), item.version)
    yield from core.commit(w.batch())
    return UnmergeResult(
        merge_id=merge_id,
        survivor=s_id,
        restored=a_id,
        identifiers=event.identifiers,
        threads=event.threads,
        resumed=event.resumed,
        pointers=event.pointers,
    )
