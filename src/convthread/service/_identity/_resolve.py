"""The identity steps of ingest: :func:`resolve_sender` reads the sender's identifiers
and their owners, lets the domain resolve them, and commits the automatic merges the
policy allows into the message's batch; :func:`resolution_writes` turns the resolution
into the writes of that batch.

Resolution is pure (:func:`~convthread.domain.identity.resolve`); this module only reads
and writes. Each automatic merge commits into the batch the message is written with (one
commit for both), after which resolution runs again on what it wrote (at most
``MAX_IDENTIFIERS + 1`` rounds, reading from the store none of what the merge wrote).
A claim never captures a holder: an identifier its owner only claimed is taken over by
compare-and-set on its index entry, with the claimant's ``IdentifierUnlinked`` in the
same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace as dc_replace
from datetime import datetime

from convthread.domain.events import (
    CustomerCreated,
    CustomerEvent,
    Evidence,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    MergeSuggested,
)
from convthread.domain.identity import Resolution, Takeover, proven_claims, resolve
from convthread.domain.merge import MergeAction
from convthread.domain.model import MAX_IDENTIFIERS, Identifier, Inbound, SenderIdentifier, Trust
from convthread.domain.reasons import nest
from convthread.domain.thread import CustomerState
from convthread.ports import ABSENT, Append, Item, Put
from convthread.service import _core as core
from convthread.service import _load
from convthread.service._core import (
    NS_CUSTOMER,
    NS_IDENT,
    NS_SUGGEST,
    NS_SUGGEST_PAIR,
    Config,
    IdentRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._identity._merge import merge
from convthread.service._identity._records import SuggestionRef, _pair_key, _taken_detail
from convthread.service._identity._results import MergeResult
from convthread.service._identity._suggest import _suggest
from convthread.service._write import Overlay


def sender_first(inbound: Inbound) -> Identifier:
    return inbound.sender[0].identifier


def _ident_slot(key: str) -> str:
    """Where resolve_sender passes the index entry of an identifier that may be taken
    over, among the customers' items (customer ids never contain ``|``)."""
    return f"{NS_IDENT}|{key}"


def resolve_sender(
    config: Config, sender: tuple[SenderIdentifier, ...], view: Overlay
) -> Op[tuple[Resolution, dict[str, CustomerState], dict[str, Item]]]:
    """Step 2 of ingest: resolve, make the automatic merges the policy allows (each
    commits into the batch ``view`` collects, then resolution runs again on what it
    wrote), and drop suggestions already on record. Reads ask ``view`` first."""
    policy = config.merge_policy
    merged: list[MergeResult] = []
    keys = [s.identifier.key for s in sender]
    for _round in range(MAX_IDENTIFIERS + 1):
        owned = yield from _load.entries(view, NS_IDENT, keys)
        owners = {k: core.decode_identref(it.value).customer_id for k, it in owned.items()}
        owner_ids = list(dict.fromkeys(owners.values()))
        items = yield from _load.entries(view, NS_CUSTOMER, owner_ids)
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
            on_record = yield from _load.entries(view, NS_SUGGEST_PAIR, pairs)
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
        known = yield from _load.entries(view, NS_SUGGEST_PAIR, pairs)
        keep = tuple(
            v
            for v in resolution.verdicts
            if v.action is not MergeAction.SUGGEST or _pair_key(v.survivor, v.absorbed) not in known
        )
        resolution = dc_replace(resolution, verdicts=keep)
    if merged:
        params = {
            "merges": " ".join(f"{m.absorbed}>{m.survivor}" for m in merged),
            **nest("m", merged[0].decision),
        }
        resolution = dc_replace(
            resolution,
            decision=resolution.decision.followed_by(
                "identity.then.merged", params, merged=",".join(m.merge_id for m in merged)
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
