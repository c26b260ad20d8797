"""An agent linking and unlinking identifiers: :func:`link` (or raising an identifier's
trust), :func:`unlink`, and :func:`_take_over`, shared with verification.

An identifier belongs to at most one customer (its ``ident`` entry is written with
``ABSENT`` or replaced by compare-and-set); linking one that another customer holds is
refused, except that an asserted or verified link takes over an identifier the other
customer only claimed, exactly as ingest does. The merge policy's per-kind limits apply
to every link.
"""

from __future__ import annotations

from convthread.domain.events import (
    CustomerEvent,
    Evidence,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
)
from convthread.domain.identity import takeover_suggestion
from convthread.domain.model import Identifier, Trust
from convthread.domain.thread import CustomerState, evolve_customer
from convthread.errors import NotFound, PolicyViolation, ValidationError
from convthread.ports import ABSENT, Item
from convthread.service import _core as core
from convthread.service._core import NS_IDENT, NS_SUGGEST_PAIR, Config, IdentRef, Op
from convthread.service._core import Writes as _Writes
from convthread.service._identity._records import _load_live, _owner, _pair_key, _taken_detail
from convthread.service._identity._suggest import _suggest


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
