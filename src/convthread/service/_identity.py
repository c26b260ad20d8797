"""Identity operations as store-call generators: link, unlink, merge, unmerge, explain,
merge suggestions, verification by one-time code, and reads on a session's behalf under
the disclosure policy.

Randomness (one-time codes, salts) and the clock live here, in the service layer; the
domain (:mod:`convthread.domain.merge`, :mod:`convthread.domain.identity`) is pure.

A merge is one batch: both customers' streams and cached states, every identifier of
the absorbed customer (``ident``), every thread of the absorbed customer (a
``ThreadReassigned`` event and its head, whose customer changes), and the
``open``/``latest`` pointers of its topics. When both customers have a live thread for
the same topic, the survivor's stays live and the absorbed one's is resolved (one live
thread per customer and topic); the merge event records it, and the pointers it changed,
so that unmerge restores the exact prior state.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import replace as dc_replace
from datetime import datetime, timedelta

import msgspec

from convthread.domain.events import (
    CustomerCreated,
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    Decision,
    Evidence,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    LifecycleChanged,
    MergeSuggested,
    MergeSuggestionResolved,
    PointerChange,
    SuspendedThread,
    ThreadEvent,
    ThreadReassigned,
    ThreadStatus,
)
from convthread.domain.identity import (
    Resolution,
    Takeover,
    proven_claims,
    resolve,
    takeover_suggestion,
)
from convthread.domain.merge import MergeAction, unmerge_keys
from convthread.domain.model import (
    MAX_IDENTIFIERS,
    Identifier,
    Inbound,
    SenderIdentifier,
    Trust,
)
from convthread.domain.thread import CustomerState, ThreadState, evolve, evolve_customer
from convthread.errors import (
    ErasedError,
    InvalidTransition,
    NotFound,
    PolicyViolation,
    ValidationError,
    VerificationError,
)
from convthread.ports import ABSENT, ANY, Append, Delete, Item, Put
from convthread.service import _core as core
from convthread.service import _reads
from convthread.service._core import (
    NS_CUSTOMER,
    NS_IDENT,
    NS_LATEST,
    NS_MERGE,
    NS_OPEN,
    NS_SUGGEST,
    NS_SUGGEST_PAIR,
    NS_VERIFY,
    Config,
    IdentRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._results import IngestResult, StoredEvent, ThreadView

__all__ = [
    "Disclosure",
    "ExplainStep",
    "Explanation",
    "History",
    "MergeResult",
    "MergeSuggestion",
    "UnmergeResult",
    "VerificationResult",
    "VerificationStarted",
]

_EMPTY = b""


# --------------------------------------------------------------------------- records


class MergeRef(msgspec.Struct, frozen=True, array_like=True):
    """NS_MERGE value: who absorbed whom, and whether it was undone."""

    survivor: str
    absorbed: str
    undone: bool = False


class SuggestionRef(msgspec.Struct, frozen=True, kw_only=True):
    """NS_SUGGEST value: a recorded merge suggestion and its status."""

    customer_id: str
    other: str
    identifier: Identifier
    decision: Decision
    at: datetime
    status: str = "pending"  # pending, accepted, rejected
    by: str = ""


class VerificationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """NS_VERIFY value: a started verification. The code is kept only as an HMAC."""

    identifier: Identifier
    customer_id: str | None
    salt: bytes
    digest: bytes
    expires_at: datetime
    attempts_left: int
    session_trust: Trust = Trust.CLAIMED
    channel: str = ""
    by: str = ""


_mergeref = msgspec.msgpack.Decoder(MergeRef)
_suggestion = msgspec.msgpack.Decoder(SuggestionRef)
_verification = msgspec.msgpack.Decoder(VerificationRecord)


# --------------------------------------------------------------------------- results


class MergeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a merge did (or, with ``dry_run``, would do)."""

    merge_id: str
    survivor: str
    absorbed: str
    #: identifiers moved from the absorbed customer, with their trust
    identifiers: tuple[tuple[Identifier, Trust], ...]
    #: threads moved from the absorbed customer
    threads: tuple[str, ...]
    #: live threads of the absorbed customer resolved because the survivor has a live
    #: thread for the same topic
    suspended: tuple[SuspendedThread, ...]
    #: open/latest pointers changed
    pointers: tuple[PointerChange, ...]
    decision: Decision
    dry_run: bool = False


class UnmergeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an unmerge gave back to the restored customer."""

    merge_id: str
    survivor: str
    restored: str
    identifiers: tuple[tuple[Identifier, Trust], ...]
    threads: tuple[str, ...]
    resumed: tuple[SuspendedThread, ...]
    pointers: tuple[PointerChange, ...]


class ExplainStep(msgspec.Struct, frozen=True):
    """One identity event in the chain: which customer's stream, where, what."""

    customer_id: str
    seq: int
    event: CustomerEvent


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """Why an identifier is where it is: its owner, its trust, and the chain of events
    (links, verifications, merges, unmerges) that put it there, oldest first."""

    identifier: Identifier
    customer_id: str | None
    trust: Trust | None
    steps: tuple[ExplainStep, ...]

    def render(self) -> str:
        """The chain as text, one line per event."""
        head = (
            f"{self.identifier}: not linked to any customer"
            if self.customer_id is None
            else f"{self.identifier}: customer {self.customer_id} "
            f"({self.trust.value if self.trust else '?'})"
        )
        lines = [head]
        for step in self.steps:
            lines.append(f"  {step.customer_id}#{step.seq} {_describe(step.event)}")
        return "\n".join(lines)


class MergeSuggestion(msgspec.Struct, frozen=True, kw_only=True):
    """A merge the policy would not make automatically; an agent accepts or rejects it."""

    id: str
    customer_id: str
    other: str
    identifier: Identifier
    decision: Decision
    at: datetime
    status: str
    by: str = ""


class VerificationStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A started verification. Deliver ``code`` to the identifier (SMS, e-mail); it is
    not stored, only its HMAC."""

    verification_id: str
    code: str
    identifier: Identifier
    customer_id: str | None
    expires_at: datetime
    attempts: int


class VerificationResult(msgspec.Struct, frozen=True, kw_only=True):
    """A confirmed verification: the identifier is verified on ``customer_id``."""

    identifier: Identifier
    customer_id: str
    previous: Trust | None
    decision: Decision
    merge: MergeResult | None = None
    suggestion_id: str | None = None


class Disclosure(msgspec.Struct, frozen=True, kw_only=True):
    """The disclosure policy's answer for a session: ``scope`` ``"history"`` (the
    customer's threads) or ``"current_thread"`` (only ``thread_id``, events with
    sequence number >= ``since``), and why."""

    customer_id: str | None
    thread_id: str | None
    scope: str
    since: int
    decision: Decision
    thread: ThreadState | None = None


class History(msgspec.Struct, frozen=True, kw_only=True):
    """What a session may see under the disclosure policy.

    ``scope`` is ``"history"`` (the customer's threads, oldest first) or
    ``"current_thread"`` (only the session's thread, from ``since`` on), and
    ``decision`` says why.
    """

    customer_id: str | None
    thread_id: str | None
    scope: str
    decision: Decision
    threads: tuple[ThreadView, ...]


# --------------------------------------------------------------------------- writes


def sender_first(inbound: Inbound) -> Identifier:
    return inbound.sender[0].identifier


def _ident_slot(key: str) -> str:
    """Where resolve_sender passes the index entry of an identifier that may be taken
    over, among the customers' items (customer ids never contain ``|``)."""
    return f"{NS_IDENT}|{key}"


def _pair_key(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return f"{x}|{y}"


def _live_customer(state: CustomerState) -> None:
    if state.erased:
        raise ErasedError(f"customer {state.id!r} was erased")
    if state.merged_into is not None:
        raise InvalidTransition(
            f"customer {state.id!r} was merged into {state.merged_into!r}; use that customer"
        )


def _load_live(customer_id: str) -> Op[tuple[CustomerState, int]]:
    state, version = yield from core.load_customer(customer_id)
    _live_customer(state)
    return state, version


def _owner(identifier: Identifier) -> Op[tuple[str | None, Item | None]]:
    item = yield from core.get(NS_IDENT, identifier.key)
    if item is None:
        return None, None
    return core.decode_identref(item.value).customer_id, item


# --------------------------------------------------------------------------- ingest


def resolve_sender(
    config: Config, sender: tuple[SenderIdentifier, ...]
) -> Op[tuple[Resolution, dict[str, CustomerState], dict[str, Item]]]:
    """Step 2 of ingest: resolve, commit the automatic merges the policy allows (each in
    its own batch, then resolve again), and drop suggestions already on record."""
    policy = config.merge_policy
    merged: list[MergeResult] = []
    for _round in range(MAX_IDENTIFIERS + 1):
        keys = [s.identifier.key for s in sender]
        owned = yield from core.get_many(NS_IDENT, keys)
        owners = {k: core.decode_identref(it.value).customer_id for k, it in owned.items()}
        owner_ids = list(dict.fromkeys(owners.values()))
        items = yield from core.get_many(NS_CUSTOMER, owner_ids)
        customers = {cid: core.decode_customer_state(it.value) for cid, it in items.items()}
        # Identifiers proven here that their owner only claimed may be taken over: the
        # takeover replaces their index entry by compare-and-set (its version goes to
        # resolution_writes with the customers' items), and records a merge suggestion
        # unless one is on record for the pair.
        proven = proven_claims(sender, owners, customers)
        suggested: set[frozenset[str]] = set()
        if proven:
            claimants = {owners[s.identifier.key] for s in proven}
            pairs = sorted({_pair_key(c, o) for c in claimants for o in owner_ids if o != c})
            on_record = yield from core.get_many(NS_SUGGEST_PAIR, pairs)
            suggested = {frozenset(k.split("|", 1)) for k in on_record}
            for s in proven:
                items[_ident_slot(s.identifier.key)] = owned[s.identifier.key]
        resolution = resolve(sender, owners, customers, policy, suggested)
        if not resolution.merges:
            break
        verdict = resolution.merges[0]
        result = yield from merge(
            config,
            verdict.survivor,
            verdict.absorbed,
            by="policy:auto",
            decision=verdict.decision,
        )
        merged.append(result)
    if resolution.suggestions:
        pairs = sorted({_pair_key(v.survivor, v.absorbed) for v in resolution.suggestions})
        known = yield from core.get_many(NS_SUGGEST_PAIR, pairs)
        keep = tuple(
            v
            for v in resolution.verdicts
            if v.action is not MergeAction.SUGGEST or _pair_key(v.survivor, v.absorbed) not in known
        )
        resolution = dc_replace(resolution, verdicts=keep)
    if merged:
        note = "; ".join(f"merged {m.absorbed} into {m.survivor} ({m.merge_id})" for m in merged)
        decision = resolution.decision
        evidence = {**decision.evidence, "merged": ",".join(m.merge_id for m in merged)}
        resolution = dc_replace(
            resolution,
            decision=Decision(
                rule=decision.rule,
                reason=f"{decision.reason}; {note}: {merged[0].decision.reason}",
                evidence=evidence,
            ),
        )
    return resolution, customers, items


def resolution_writes(
    config: Config,
    resolution: Resolution,
    customers: dict[str, CustomerState],
    items: dict[str, Item],
    inbound: Inbound,
    now: datetime,
) -> tuple[str, bool, list[Append], list[Put]]:
    """What ingest writes for a resolution: a new customer, links and upgrades with their
    evidence, and merge suggestions. Returns (customer id, is new, appends, puts)."""
    w = _Writes()
    events: list[CustomerEvent] = []
    state: CustomerState | None
    if resolution.customer_id is None:
        customer_id = config.ids.new_id("cu")
        events.append(CustomerCreated(at=now, decision=resolution.decision))
        state = None
        expected_item = ABSENT
        new = True
    else:
        customer_id = resolution.customer_id
        state = customers[customer_id]
        expected_item = items[customer_id].version
        new = False
    for s in (*resolution.links, *resolution.upgrades):
        evidence = Evidence(
            channel=inbound.channel,
            method=s.method or ("channel" if s.trust.rank > 0 else "claim"),
            by=f"channel:{inbound.channel}",
            at=inbound.sent_at,
            detail=f"arrived with message {inbound.provider_message_id}",
        )
        previous = state.trust_of(s.identifier) if state is not None else None
        if previous is not None and s.trust is Trust.VERIFIED:
            events.append(
                IdentifierVerified(
                    at=now, identifier=s.identifier, previous=previous, evidence=evidence
                )
            )
        else:
            events.append(
                IdentifierLinked(at=now, identifier=s.identifier, trust=s.trust, evidence=evidence)
            )
    for s in resolution.links:
        w.put(NS_IDENT, s.identifier.key, IdentRef(customer_id), ABSENT)
    events.extend(
        _takeover_writes(
            config, w, resolution.takeovers, customer_id, customers, items, inbound, now
        )
    )
    for verdict in resolution.suggestions:
        other = verdict.absorbed if verdict.survivor == customer_id else verdict.survivor
        sid = config.ids.new_id("ms")
        # The customer's own identifier that tied the message to it: the record lives in
        # this customer's stream, so erasing the other customer leaves none of theirs.
        via = verdict.via[0] if verdict.via else (resolution.matched or sender_first(inbound))
        events.append(
            MergeSuggested(
                at=now, suggestion_id=sid, other=other, identifier=via, decision=verdict.decision
            )
        )
        ref = SuggestionRef(
            customer_id=customer_id, other=other, identifier=via, decision=verdict.decision, at=now
        )
        w.put(NS_SUGGEST, sid, ref, ABSENT)
        w.put(NS_SUGGEST_PAIR, _pair_key(customer_id, other), sid.encode(), ABSENT)
    if events:
        w.customer(customer_id, state, expected_item, events)
    return customer_id, new, w.appends, w.puts


_TAKEN_FROM = re.compile(r"taken over from (\S+), which only claimed it$")


def _taken_detail(detail: str, claimant: str) -> str:
    """The evidence detail of a link that took an identifier over (read by explain)."""
    return f"{detail + '; ' if detail else ''}taken over from {claimant}, which only claimed it"


def _takeover_writes(
    config: Config,
    w: _Writes,
    takeovers: Sequence[Takeover],
    customer_id: str,
    customers: dict[str, CustomerState],
    items: dict[str, Item],
    inbound: Inbound,
    now: datetime,
) -> list[CustomerEvent]:
    """Identifiers taken over from claimants: each claimant's ``IdentifierUnlinked``
    events (and cached state), the index entries replaced by compare-and-set, and the
    merge suggestions. Returns the events for the holder's (``customer_id``) stream."""
    events: list[CustomerEvent] = []
    unlinked: dict[str, list[CustomerEvent]] = {}
    for t in takeovers:
        s = t.identifier
        events.append(
            IdentifierLinked(
                at=now,
                identifier=s.identifier,
                trust=s.trust,
                evidence=Evidence(
                    channel=inbound.channel,
                    method=s.method or "channel",
                    by=f"channel:{inbound.channel}",
                    at=inbound.sent_at,
                    detail=_taken_detail(
                        f"arrived with message {inbound.provider_message_id}", t.claimant
                    ),
                ),
            )
        )
        unlinked.setdefault(t.claimant, []).append(
            IdentifierUnlinked(
                at=now,
                identifier=s.identifier,
                reason=(
                    f"superseded: arrived {t.presented.value} via {inbound.channel}, "
                    f"message {inbound.provider_message_id}"
                ),
                by=f"channel:{inbound.channel}",
            )
        )
        entry = items[_ident_slot(s.identifier.key)]
        w.put(NS_IDENT, s.identifier.key, IdentRef(customer_id), entry.version)
        if t.suggestion is not None:
            events.append(
                _suggest(config, w, customer_id, t.claimant, s.identifier, t.suggestion, now)
            )
    for claimant, evs in unlinked.items():
        w.customer(claimant, customers[claimant], items[claimant].version, evs)
    return events


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


# --------------------------------------------------------------------------- merge


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
            reason=f"{by or 'an agent'} merged {absorbed} into {survivor}"
            + (f": {reason}" if reason else ""),
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
                pending = _suggestion.decode(found.value)
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
        w.thread(st, new, version)  # the head's customer_id moves it between customers
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


def unmerge(config: Config, merge_id: str, *, by: str = "", reason: str = "") -> Op[UnmergeResult]:
    """Undo merge ``merge_id``: the absorbed customer gets back its identifiers that the
    survivor still holds because of the merge (see
    :func:`~convthread.domain.merge.unmerge_keys`; at their current trust), its threads,
    the live status of threads the merge resolved, and its topic pointers; the
    survivor's pointers the merge changed are restored unless they moved on since."""
    item = yield from core.get(NS_MERGE, merge_id)
    if item is None:
        raise NotFound("merge", merge_id)
    ref = _mergeref.decode(item.value)
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
        w.thread(st, new, version)
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


# --------------------------------------------------------------------------- links


def link(
    config: Config,
    customer_id: str,
    identifier: Identifier,
    trust: Trust,
    *,
    by: str = "",
    method: str = "agent",
    channel: str = "",
    detail: str = "",
) -> Op[CustomerState]:
    """Link ``identifier`` to a customer at ``trust`` (or raise its trust)."""
    if not isinstance(trust, Trust):
        raise ValidationError(f"trust must be a Trust, not {trust!r}")
    ident = config.identifiers.renormalize(identifier)
    state, version = yield from _load_live(customer_id)
    owner, item = yield from _owner(ident)
    if owner is not None and owner != customer_id and item is not None:
        owner_state, owner_version = yield from core.load_customer(owner)
        if trust >= Trust.ASSERTED and owner_state.trust_of(ident) is Trust.CLAIMED:
            taken, _events = yield from _take_over(
                config,
                state,
                version,
                owner_state,
                owner_version,
                item,
                ident,
                trust,
                Evidence(
                    channel=channel,
                    method=method,
                    by=by,
                    at=config.clock.now(),
                    detail=_taken_detail(detail, owner),
                ),
            )
            return taken
        raise PolicyViolation(
            f"{ident} belongs to customer {owner}; merge the customers or unlink it first"
            + (
                ""
                if trust >= Trust.ASSERTED
                else " (a claim cannot take it over: link it as asserted or verified)"
            )
        )
    current = state.trust_of(ident)
    if current is not None and current >= trust:
        return state
    why = config.merge_policy.link_refusal(state.identifiers, ident, trust)
    if why is not None:
        raise PolicyViolation(why)
    now = config.clock.now()
    evidence = Evidence(channel=channel, method=method, by=by, at=now, detail=detail)
    event: CustomerEvent
    if current is not None and trust is Trust.VERIFIED:
        event = IdentifierVerified(at=now, identifier=ident, previous=current, evidence=evidence)
    else:
        event = IdentifierLinked(at=now, identifier=ident, trust=trust, evidence=evidence)
    w = _Writes()
    new = w.customer(customer_id, state, version, [event])
    if owner is None:
        w.put(NS_IDENT, ident.key, IdentRef(customer_id), ABSENT)
    yield from core.commit(w.batch())
    return new


def _take_over(
    config: Config,
    state: CustomerState,
    version: int,
    claimant: CustomerState,
    claimant_version: int,
    item: Item,
    ident: Identifier,
    trust: Trust,
    evidence: Evidence,
    w: _Writes | None = None,
) -> Op[tuple[CustomerState, list[CustomerEvent]]]:
    """An agent links (or a one-time code verifies) at ``trust`` (asserted or verified)
    an identifier that another customer only claimed: as on ingest, it moves (unlinked
    from the claimant, linked here, the index entry replaced by compare-and-set) and a
    merge suggestion is recorded unless the pair has one or merging them would break a
    hard rule. Commits ``w`` (a new batch by default) with it; returns the holder's new
    state and its new events."""
    policy = config.merge_policy
    why = policy.link_refusal(state.identifiers, ident, trust)
    if why is not None:
        raise PolicyViolation(why)
    now = config.clock.now()
    w = w if w is not None else _Writes()
    holder_events: list[CustomerEvent] = [
        IdentifierLinked(at=now, identifier=ident, trust=trust, evidence=evidence)
    ]
    lost = IdentifierUnlinked(
        at=now,
        identifier=ident,
        reason=f"superseded: linked {trust.value} to {state.id} by {evidence.by or 'an agent'}",
        by=evidence.by,
    )
    after = evolve_customer(claimant, claimant.id, claimant.version + 1, lost)
    holder = evolve_customer(state, state.id, state.version + 1, holder_events[0])
    pair = yield from core.get(NS_SUGGEST_PAIR, _pair_key(state.id, claimant.id))
    if pair is None:
        decision, _note = takeover_suggestion(
            policy,
            holder,
            after,
            ident,
            trust,
            (
                "a one-time code proved it"
                if evidence.method == "otp"
                else f"{evidence.by or 'an agent'} linked it"
            ),
        )
        if decision is not None:
            holder_events.append(_suggest(config, w, state.id, claimant.id, ident, decision, now))
    w.customer(claimant.id, claimant, claimant_version, [lost])
    new = w.customer(state.id, state, version, holder_events)
    w.put(NS_IDENT, ident.key, IdentRef(state.id), item.version)
    yield from core.commit(w.batch())
    return new, holder_events


def unlink(config: Config, identifier: Identifier, *, by: str = "", reason: str = "") -> Op[str]:
    """Remove ``identifier`` from its customer; returns that customer's id."""
    ident = config.identifiers.renormalize(identifier)
    owner, item = yield from _owner(ident)
    if owner is None or item is None:
        raise NotFound("linked identifier", str(ident))
    state, version = yield from _load_live(owner)
    now = config.clock.now()
    w = _Writes()
    w.customer(
        owner,
        state,
        version,
        [IdentifierUnlinked(at=now, identifier=ident, reason=reason, by=by)],
    )
    w.delete(NS_IDENT, ident.key, item.version)
    yield from core.commit(w.batch())
    return owner


# --------------------------------------------------------------------------- explain


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


def _describe(event: CustomerEvent) -> str:
    if isinstance(event, IdentifierLinked):
        e = event.evidence
        taken = _TAKEN_FROM.search(e.detail)
        return (
            f"linked {event.identifier} as {event.trust.value} "
            f"(method {e.method}{', channel ' + e.channel if e.channel else ''}"
            f"{', by ' + e.by if e.by else ''})"
            + (f", taken over from {taken.group(1)} (it only claimed it)" if taken else "")
        )
    if isinstance(event, IdentifierVerified):
        return (
            f"verified {event.identifier} (was {event.previous.value}, method "
            f"{event.evidence.method})"
        )
    if isinstance(event, IdentifierUnlinked):
        return (
            f"unlinked {event.identifier}"
            + (f": {event.reason}" if event.reason else "")
            + (f" (by {event.by})" if event.by else "")
        )
    if isinstance(event, CustomerMerged):
        why = f": {event.decision.reason}" if event.decision else ""
        return f"merge {event.merge_id}: {event.absorbed} merged into {event.survivor}{why}"
    if isinstance(event, CustomerUnmerged):
        return f"unmerge {event.merge_id}: {event.restored} split from {event.survivor}"
    if isinstance(event, MergeSuggested):
        return f"merge with {event.other} suggested ({event.suggestion_id})"
    return type(event).__name__


# --------------------------------------------------------------------------- suggestions


def suggestions(
    customer_id: str | None = None, status: str | None = "pending"
) -> Op[list[MergeSuggestion]]:
    """Recorded merge suggestions (pending ones by default), oldest first."""
    out: list[MergeSuggestion] = []
    after = ""
    while True:
        page = yield from core.scan(NS_SUGGEST, "", after, 1000)
        for sid, it in page:
            ref = _suggestion.decode(it.value)
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
    ref = _suggestion.decode(item.value)
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
        reason=f"{by or 'an agent'} accepted merge suggestion {suggestion_id}: "
        f"{ref.decision.reason}",
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


# --------------------------------------------------------------------------- verification


def _digest(salt: bytes, code: str) -> bytes:
    return hmac.new(salt, code.encode("ascii"), hashlib.sha256).digest()


def start_verification(
    config: Config,
    identifier: Identifier,
    *,
    customer_id: str | None = None,
    session_trust: Trust = Trust.CLAIMED,
    channel: str = "",
    by: str = "",
    ttl: timedelta = timedelta(minutes=10),
    attempts: int = 5,
    digits: int = 6,
) -> Op[VerificationStarted]:
    """Start verifying ``identifier``: a one-time code (from :mod:`secrets`) that
    expires after ``ttl`` and allows ``attempts`` tries. Only its HMAC is stored.

    ``customer_id`` is the customer the requesting session belongs to (tied to it at
    ``session_trust``); when the identifier is not linked yet it is linked to that
    customer on confirmation, and when it belongs to another customer the merge policy
    decides about the two on confirmation.
    """
    if not 4 <= digits <= 10:
        raise ValidationError("a one-time code has 4 to 10 digits")
    if attempts < 1 or ttl <= timedelta(0):
        raise ValidationError("a verification needs at least one attempt and a positive ttl")
    ident = config.identifiers.renormalize(identifier)
    if config.merge_policy.is_blocked(ident):
        raise PolicyViolation(f"{ident} is blocklisted; it cannot be verified for a customer")
    owner, _item = yield from _owner(ident)
    if owner is None and customer_id is None:
        raise ValidationError(f"{ident} is not linked; pass the customer_id it is for")
    if customer_id is not None:
        yield from _load_live(customer_id)
    now = config.clock.now()
    code = f"{secrets.randbelow(10**digits):0{digits}d}"
    salt = secrets.token_bytes(16)
    vid = config.ids.new_id("vf")
    record = VerificationRecord(
        identifier=ident,
        customer_id=customer_id,
        salt=salt,
        digest=_digest(salt, code),
        expires_at=now + ttl,
        attempts_left=attempts,
        session_trust=session_trust,
        channel=channel,
        by=by,
    )
    w = _Writes()
    w.put(NS_VERIFY, vid, record, ABSENT)
    yield from core.commit(w.batch())
    return VerificationStarted(
        verification_id=vid,
        code=code,
        identifier=ident,
        customer_id=customer_id,
        expires_at=record.expires_at,
        attempts=attempts,
    )


def confirm_verification(
    config: Config, verification_id: str, code: str, *, by: str = ""
) -> Op[VerificationResult]:
    """Check ``code``. Wrong: one attempt is used up (VerificationError). Right: the
    identifier becomes verified (IdentifierVerified, or a verified link), the code is
    spent, and if the session's customer differs from the identifier's owner the merge
    policy decides: merge, or record a suggestion."""
    item = yield from core.get(NS_VERIFY, verification_id)
    if item is None:
        raise NotFound("verification", verification_id)
    record = _verification.decode(item.value)
    now = config.clock.now()
    w = _Writes()
    if now >= record.expires_at:
        w.delete(NS_VERIFY, verification_id, item.version)
        yield from core.commit(w.batch())
        raise VerificationError(f"verification {verification_id!r} expired")
    presented = code.strip() if isinstance(code, str) else ""
    if not (
        presented.isascii() and hmac.compare_digest(_digest(record.salt, presented), record.digest)
    ):
        left = record.attempts_left - 1
        if left <= 0:
            w.delete(NS_VERIFY, verification_id, item.version)
        else:
            w.put(
                NS_VERIFY,
                verification_id,
                msgspec.structs.replace(record, attempts_left=left),
                item.version,
            )
        yield from core.commit(w.batch())
        if left <= 0:
            raise VerificationError(f"wrong code; verification {verification_id!r} is used up")
        raise VerificationError(f"wrong code; {left} attempt(s) left")
    w.delete(NS_VERIFY, verification_id, item.version)
    ident = record.identifier
    policy = config.merge_policy
    owner, ident_item = yield from _owner(ident)
    target = owner or record.customer_id
    assert target is not None
    state, version = yield from _load_live(target)
    previous = state.trust_of(ident)
    evidence = Evidence(
        channel=record.channel,
        method="otp",
        by=by or record.by,
        at=now,
        detail=f"one-time code {verification_id}",
    )
    requester = record.customer_id
    if (
        previous is Trust.CLAIMED
        and requester is not None
        and requester != target
        and record.session_trust >= Trust.ASSERTED
        and ident_item is not None
    ):
        # A claim never captures a holder: the session that proved the code (tied to
        # its customer at asserted or better) takes the identifier over from the
        # customer who only claimed it, instead of verifying the claim.
        holder, holder_version = yield from _load_live(requester)
        taken = yield from _take_over(
            config,
            holder,
            holder_version,
            state,
            version,
            ident_item,
            ident,
            Trust.VERIFIED,
            msgspec.structs.replace(evidence, detail=_taken_detail(evidence.detail, target)),
            w,
        )
        suggested = next(
            (e.suggestion_id for e in reversed(taken[1]) if isinstance(e, MergeSuggested)),
            None,
        )
        return VerificationResult(
            identifier=ident,
            customer_id=requester,
            previous=None,
            decision=Decision(
                rule="verified",
                reason=f"{ident} verified by one-time code for customer {requester}; it was "
                f"only claimed by {target}, so it now belongs to {requester}"
                + (f"; merge with {target} suggested" if suggested else ""),
                evidence={"verification": verification_id, "taken_over_from": target},
            ),
            suggestion_id=suggested,
        )
    if previous is not Trust.VERIFIED:
        why = policy.link_refusal(state.identifiers, ident, Trust.VERIFIED)
        if why is not None:
            raise PolicyViolation(why)
    events: list[CustomerEvent] = []
    if previous is None:
        events.append(
            IdentifierLinked(at=now, identifier=ident, trust=Trust.VERIFIED, evidence=evidence)
        )
        w.put(NS_IDENT, ident.key, IdentRef(target), ABSENT)
    elif previous is not Trust.VERIFIED:
        events.append(
            IdentifierVerified(at=now, identifier=ident, previous=previous, evidence=evidence)
        )
    decision = Decision(
        rule="verified",
        reason=f"{ident} verified by one-time code for customer {target}",
        evidence={"verification": verification_id},
    )
    verdict = None
    if requester is not None and requester != target:
        other_state, _over = yield from _load_live(requester)
        new_target = state
        for i, ev in enumerate(events, start=state.version + 1):
            new_target = evolve_customer(new_target, target, i, ev)
        verdict = policy.evaluate(
            new_target,
            other_state,
            trust_a=Trust.VERIFIED,
            trust_b=record.session_trust,
            via=(ident,),
        )
        decision = Decision(
            rule="verified",
            reason=f"{decision.reason}; the requesting session belongs to {requester}: "
            f"{verdict.decision.reason}",
            evidence={**decision.evidence, "merge": verdict.action.value},
        )
    suggestion_id: str | None = None
    if verdict is not None and verdict.action is MergeAction.SUGGEST and requester is not None:
        pair = _pair_key(target, requester)
        exists = yield from core.get(NS_SUGGEST_PAIR, pair)
        if exists is None:
            suggestion_id = config.ids.new_id("ms")
            events.append(
                MergeSuggested(
                    at=now,
                    suggestion_id=suggestion_id,
                    other=requester,
                    identifier=ident,
                    decision=verdict.decision,
                )
            )
            ref = SuggestionRef(
                customer_id=target,
                other=requester,
                identifier=ident,
                decision=verdict.decision,
                at=now,
            )
            w.put(NS_SUGGEST, suggestion_id, ref, ABSENT)
            w.put(NS_SUGGEST_PAIR, pair, suggestion_id.encode(), ABSENT)
    if events:
        w.customer(target, state, version, events)
    yield from core.commit(w.batch())
    merged: MergeResult | None = None
    if verdict is not None and verdict.action is MergeAction.MERGE and requester is not None:
        merged = yield from merge(
            config, target, requester, by="policy:verification", decision=verdict.decision
        )
    return VerificationResult(
        identifier=ident,
        customer_id=merged.survivor if merged is not None else target,
        previous=previous,
        decision=decision,
        merge=merged,
        suggestion_id=suggestion_id,
    )


# --------------------------------------------------------------------------- disclosure


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


# --------------------------------------------------------------------------- erasure


def erasure_deletes(customer_ids: set[str], identifier_keys: set[str]) -> Op[list[Delete]]:
    """The identity records to delete when ``customer_ids`` (a customer and the customers
    merged into it) are erased: merge suggestions naming them or one of their
    identifiers (and the pair keys), verifications of their identifiers or for them, and
    the merge ledger entries that name them. For the erasure operation to add to its
    batch."""
    out: list[Delete] = []
    checks = (
        (NS_SUGGEST, _suggestion_hit),
        (NS_VERIFY, _verification_hit),
        (NS_MERGE, _merge_hit),
    )
    for ns, hit in checks:
        after = ""
        while True:
            page = yield from core.scan(ns, "", after, 1000)
            for key, item in page:
                found = hit(item.value, customer_ids, identifier_keys)
                if found is None:
                    continue
                out.append(Delete(ns, key, item.version))
                if found:
                    out.append(Delete(NS_SUGGEST_PAIR, found, ANY))
            if len(page) < 1000:
                break
            after = page[-1][0]
    return out


def _suggestion_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    ref = _suggestion.decode(data)
    if ref.customer_id in customers or ref.other in customers or ref.identifier.key in keys:
        return _pair_key(ref.customer_id, ref.other)
    return None


def _verification_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    record = _verification.decode(data)
    if record.identifier.key in keys or record.customer_id in customers:
        return ""
    return None


def _merge_hit(data: bytes, customers: set[str], keys: set[str]) -> str | None:
    ref = _mergeref.decode(data)
    return "" if ref.survivor in customers or ref.absorbed in customers else None
