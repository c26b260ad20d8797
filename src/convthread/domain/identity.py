"""Identity resolution: which customer do the identifiers of a message belong to, and why.

Pure: the service loads who owns each identifier and those customers' states, calls
:func:`resolve`, and writes what the returned :class:`Resolution` says.

The first rule is an exact match on normalized identifiers:

* no identifier is known: a new customer, every identifier linked with its trust;
* all known identifiers belong to one customer: that customer; unknown identifiers that
  arrived with them are linked (co-occurrence, at the trust the channel gave them), and a
  known identifier presented at a higher trust is upgraded;
* known identifiers belong to several customers: the customer owning the most trusted
  identifier is chosen, nothing is merged, and the others are reported in
  ``Resolution.others`` for the merge policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convthread.domain.events import Decision
from convthread.domain.model import Identifier, SenderIdentifier, Trust
from convthread.domain.thread import CustomerState

__all__ = ["Resolution", "resolve"]


@dataclass(frozen=True)
class Resolution:
    """The outcome of resolving a message's identifiers."""

    decision: Decision
    customer_id: str | None  # None: a new customer
    #: identifiers to link to the customer (new links), with their trust
    links: tuple[SenderIdentifier, ...] = ()
    #: identifiers already linked whose trust rises (claimed -> asserted, ...)
    upgrades: tuple[SenderIdentifier, ...] = ()
    #: other customers the message's identifiers point at (not merged)
    others: tuple[str, ...] = ()
    #: the identifier that decided (the strongest known one)
    matched: Identifier | None = None
    #: the highest trust among the identifiers that tie the message to the customer
    trust: Trust = Trust.CLAIMED
    extra: dict[str, str] = field(default_factory=dict)


def resolve(
    sender: tuple[SenderIdentifier, ...],
    owners: dict[str, str],
    customers: dict[str, CustomerState],
) -> Resolution:
    """Resolve ``sender`` identifiers given ``owners`` (identifier key -> customer id)."""
    known = [s for s in sender if s.identifier.key in owners]
    unknown = [s for s in sender if s.identifier.key not in owners]
    if not known:
        names = ", ".join(f"{s.identifier} ({s.trust.value})" for s in sender)
        return Resolution(
            decision=Decision(
                rule="new_customer",
                reason=f"no known identifier among {names}; a new customer",
                evidence={"identifiers": names},
            ),
            customer_id=None,
            links=tuple(unknown),
            trust=max((s.trust for s in sender), key=lambda t: t.rank),
        )
    # The strongest presented known identifier decides the customer.
    best = max(known, key=lambda s: s.trust.rank)
    customer_id = owners[best.identifier.key]
    others = tuple(
        dict.fromkeys(owners[s.identifier.key] for s in known if owners[s.identifier.key] != customer_id)
    )
    state = customers.get(customer_id)
    upgrades: list[SenderIdentifier] = []
    for s in known:
        if owners[s.identifier.key] != customer_id or state is None:
            continue
        current = state.trust_of(s.identifier)
        if current is not None and s.trust > current:
            upgrades.append(s)
    # Unknown identifiers are linked to the chosen customer only when no other customer
    # is involved; otherwise it is not clear whose they are.
    links = tuple(unknown) if not others else ()
    reason = f"{best.identifier} ({best.trust.value}) belongs to customer {customer_id}"
    if links:
        reason += "; linked " + ", ".join(f"{s.identifier} ({s.trust.value})" for s in links)
    if others:
        reason += "; other identifiers point at " + ", ".join(others) + " (not merged)"
    evidence = {"identifier": str(best.identifier), "trust": best.trust.value}
    if others:
        evidence["others"] = ",".join(others)
    return Resolution(
        decision=Decision(rule="exact_match", reason=reason, evidence=evidence),
        customer_id=customer_id,
        links=links,
        upgrades=tuple(upgrades),
        others=others,
        matched=best.identifier,
        trust=best.trust,
    )
