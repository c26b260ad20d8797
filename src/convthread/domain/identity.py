"""Identity resolution: which customer do the identifiers of a message belong to, and why.

Pure: the service loads who owns each identifier and those customers' states, calls
:func:`resolve`, and writes what the returned :class:`Resolution` says.

Rules, in order:

* blocklisted identifiers (see :class:`~convthread.domain.merge.MergePolicy`) are set
  aside: they resolve nothing and are never linked;
* no remaining identifier is known: a new customer, every identifier linked with its
  trust (up to the policy's per-kind limits);
* all known identifiers belong to one customer: that customer; unknown identifiers that
  arrived with them are linked (co-occurrence, at the trust the channel gave them), and a
  known identifier presented at a higher trust is upgraded (within the limits); both are
  capped at the tie of the message to the customer (a message tied only by a claim
  links and upgrades nothing above ``claimed``);
* known identifiers belong to several customers: the customer tied to the message most
  strongly is chosen (the tie of an identifier is the lower of its presented and its
  linked trust), and the merge policy gives a verdict for each other customer: merge
  automatically, suggest to an agent, or refuse. Nothing else is linked until the
  customers are one;
* a claim never captures a holder: an identifier presented at ``asserted`` or better
  that its owner holds only as a claim does not tie the message to that owner. When the
  message is tied to the same owner by another identifier at ``asserted`` or better, it
  is an upgrade; otherwise the identifier is *taken over*: it moves to the customer the
  message's other identifiers tie it to at ``asserted`` or better, or to a new customer
  (claims alone do not choose a customer for a message that carries such a proof), and a
  merge suggestion between the two customers is recorded (they may be the same person).

The disclosure policy (:class:`DisclosurePolicy`) says what a session that arrived with
an identifier of a given trust may see.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from convthread.domain.events import Decision
from convthread.domain.merge import MergeAction, MergePolicy, MergeVerdict
from convthread.domain.model import Identifier, SenderIdentifier, Trust
from convthread.domain.reasons import Scalar, _register_builtin, nest, nested
from convthread.domain.thread import CustomerState
from convthread.errors import ValidationError

__all__ = [
    "DisclosurePolicy",
    "Resolution",
    "Takeover",
    "proven_claims",
    "resolve",
    "takeover_suggestion",
    "tie_trust",
]

_DEFAULT_POLICY = MergePolicy()
_RANK: Final = {Trust.CLAIMED: 0, Trust.ASSERTED: 1, Trust.VERIFIED: 2}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Takeover:
    """An identifier presented at ``asserted`` or better that another customer (the
    claimant) held only as a claim: it is unlinked from the claimant and linked to the
    message's customer at ``identifier.trust``."""

    identifier: SenderIdentifier
    claimant: str
    #: the trust it was presented with
    presented: Trust
    #: the merge suggestion to record between the two customers (on the first takeover
    #: from a claimant); None: none (the same pair is suggested or decided otherwise)
    suggestion: Decision | None = None


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
    #: blocklisted identifiers that were set aside
    ignored: tuple[SenderIdentifier, ...] = ()
    #: identifiers not linked (or not upgraded) because of a per-kind limit, with why
    refused: tuple[tuple[SenderIdentifier, str], ...] = ()
    #: the merge policy's verdict for each of ``others``
    verdicts: tuple[MergeVerdict, ...] = ()
    #: identifiers the message proves that another customer only claimed: they move to
    #: the message's customer (see :func:`proven_claims`)
    takeovers: tuple[Takeover, ...] = ()

    @property
    def merges(self) -> tuple[MergeVerdict, ...]:
        """Verdicts that merge automatically."""
        if not self.verdicts:
            return ()
        return tuple(v for v in self.verdicts if v.action is MergeAction.MERGE)

    @property
    def suggestions(self) -> tuple[MergeVerdict, ...]:
        """Verdicts an agent must decide (merge suggestions)."""
        if not self.verdicts:
            return ()
        return tuple(v for v in self.verdicts if v.action is MergeAction.SUGGEST)


def tie_trust(presented: Trust, linked: Trust | None) -> Trust:
    """How strongly a presented identifier ties a message to the customer it is linked to:
    the lower of the two trusts (a claimed link presented as asserted is still a claim)."""
    if linked is None:
        return presented
    return presented if presented <= linked else linked


def _capped(s: SenderIdentifier, limit: Trust) -> SenderIdentifier:
    if s.trust <= limit:
        return s
    return SenderIdentifier(s.identifier, limit, s.method)


def _names(items: tuple[SenderIdentifier, ...] | list[SenderIdentifier]) -> str:
    return ", ".join(f"{s.identifier} ({s.trust.value})" for s in items)


def _admit(
    policy: MergePolicy,
    idents: dict[str, tuple[Identifier, Trust]],
    candidates: list[SenderIdentifier],
) -> tuple[list[SenderIdentifier], list[tuple[SenderIdentifier, str]]]:
    """Split candidate links (or upgrades) into admitted and refused (per-kind limits),
    in order, each checked with those admitted before it; ``idents`` is updated."""
    admitted: list[SenderIdentifier] = []
    refused: list[tuple[SenderIdentifier, str]] = []
    for s in candidates:
        why = policy.link_refusal(idents, s.identifier, s.trust)
        if why is None:
            admitted.append(s)
            idents[s.identifier.key] = (s.identifier, s.trust)
        else:
            refused.append((s, why))
    return admitted, refused


def proven_claims(
    sender: tuple[SenderIdentifier, ...] | list[SenderIdentifier],
    owners: Mapping[str, str],
    customers: Mapping[str, CustomerState],
) -> list[SenderIdentifier]:
    """The identifiers of ``sender`` presented at ``asserted`` or better that their owner
    holds only as a claim: they do not tie the message to that owner (a claim never
    captures a holder); they are taken over, or upgraded when the message is tied to the
    same customer by another identifier at ``asserted`` or better."""
    out: list[SenderIdentifier] = []
    for s in sender:
        trust = s.trust
        # (the identity tests spare Trust.__lt__ for the members; anything else compares)
        if trust is not Trust.ASSERTED and trust is not Trust.VERIFIED and trust < Trust.ASSERTED:
            continue
        key = s.identifier.key
        owner = owners.get(key)
        if owner is None:
            continue
        state = customers.get(owner)
        if state is not None:
            entry = state.identifiers.get(key)  # CustomerState.trust_of, inlined
            if entry is not None and entry[1] is Trust.CLAIMED:
                out.append(s)
    return out


def takeover_suggestion(
    policy: MergePolicy,
    holder: CustomerState,
    claimant: CustomerState,
    identifier: Identifier,
    trust: Trust,
    how: str = "",
) -> tuple[Decision | None, str]:
    """After ``identifier`` moved from ``claimant`` (a claim) to ``holder`` (at
    ``trust``): the merge suggestion to record between the two (they may be the same
    person), or None when merging them would break a hard rule; and a note saying which.
    ``holder`` and ``claimant`` are the states after the move; ``how`` says how the
    identifier came (default "it arrived")."""
    hard = policy.hard_violations(holder, claimant)
    if hard:
        return None, f"no merge with {claimant.id} suggested: " + "; ".join(hard)
    decision = Decision(
        rule="merge_suggested",
        code="identity.takeover_suggested",
        params={"how": how} if how else {},
        evidence={"via": str(identifier), "claimant": claimant.id, "trust": trust.value},
    )
    return decision, f"merge with {claimant.id} suggested"


def _without(state: CustomerState, keys: set[str]) -> CustomerState:
    idents = {k: v for k, v in state.identifiers.items() if k not in keys}
    return CustomerState(
        id=state.id,
        version=state.version,
        created_at=state.created_at,
        identifiers=idents,
        merged_into=state.merged_into,
        erased=state.erased,
    )


def _takeovers(
    policy: MergePolicy,
    admitted: list[SenderIdentifier],
    proven: dict[str, SenderIdentifier],
    owners: Mapping[str, str],
    customers: Mapping[str, CustomerState],
    holder: CustomerState,
    holder_id: str | None,
    skip: set[str],
    suggested: Collection[frozenset[str]],
    holder_name: str = "this customer",
) -> tuple[tuple[Takeover, ...], list[str]]:
    """Takeovers of the admitted identifiers, one suggestion per claimant, and notes."""
    by_claimant: dict[str, list[SenderIdentifier]] = {}
    for s in admitted:
        by_claimant.setdefault(owners[s.identifier.key], []).append(s)
    out: list[Takeover] = []
    notes: list[str] = []
    for claimant, moved in by_claimant.items():
        names = ", ".join(str(s.identifier) for s in moved)
        how = ", ".join(sorted({proven[s.identifier.key].trust.value for s in moved}))
        note = (
            f"{names} {'was' if len(moved) == 1 else 'were'} only claimed by {claimant}; "
            f"it arrived {how}, so it now belongs to {holder_name}"
        )
        decision: Decision | None = None
        claimant_state = customers.get(claimant)
        if claimant in skip:
            pass  # the merge policy's verdict about the pair is already in the resolution
        elif holder_id is not None and frozenset((holder_id, claimant)) in suggested:
            note += f"; a merge suggestion with {claimant} is already on record"
        elif claimant_state is not None:
            after = _without(claimant_state, {s.identifier.key for s in moved})
            decision, more = takeover_suggestion(
                policy, holder, after, moved[0].identifier, moved[0].trust
            )
            note += f"; {more}"
        notes.append(note)
        for i, s in enumerate(moved):
            out.append(
                Takeover(
                    identifier=s,
                    claimant=claimant,
                    presented=proven[s.identifier.key].trust,
                    suggestion=decision if i == 0 else None,
                )
            )
    return tuple(out), notes


def _holding(
    base: CustomerState | None, customer_id: str, work: dict[str, tuple[Identifier, Trust]]
) -> CustomerState:
    """The state a customer will have (for the merge policy's hard rules)."""
    if base is None:
        return CustomerState(id=customer_id, version=0, created_at=_EPOCH, identifiers=work)
    return CustomerState(
        id=base.id,
        version=base.version,
        created_at=base.created_at,
        identifiers=dict(work),
        merged_into=base.merged_into,
        erased=base.erased,
    )


def resolve(
    sender: tuple[SenderIdentifier, ...],
    owners: dict[str, str],
    customers: dict[str, CustomerState],
    policy: MergePolicy | None = None,
    suggested: Collection[frozenset[str]] = (),
) -> Resolution:
    """Resolve ``sender`` identifiers given ``owners`` (identifier key -> customer id).

    ``suggested``: pairs of customer ids with a merge suggestion on record (no second
    suggestion is made for them)."""
    policy = policy or _DEFAULT_POLICY
    found = _resolve_linked(sender, owners, customers, policy)
    if found is not None:
        return found
    return _resolve_general(sender, owners, customers, policy, suggested)


def _resolve_linked(
    sender: tuple[SenderIdentifier, ...],
    owners: Mapping[str, str],
    customers: Mapping[str, CustomerState],
    policy: MergePolicy,
) -> Resolution | None:
    """The common case of :func:`resolve`, cheaply; None when it does not apply.

    It applies when no identifier is blocklisted, every identifier is known and belongs
    to one customer whose state is loaded, and each is linked there at (at least) the
    trust it is presented with. Then nothing is a proven claim (a claim is linked below
    any asserted presentation), every identifier ties the message at its presented
    trust, nothing rises (links and upgrades are capped at presented trust), no other
    customer is involved and nothing is unknown: the general rules choose the first
    identifier presented at the highest trust and return exactly what this returns
    (``tests/test_fastpaths.py`` checks the two agree)."""
    if not sender:
        return None
    is_blocked = policy.is_blocked
    customer_id: str | None = None
    held: Mapping[str, tuple[Identifier, Trust]] = {}
    best: SenderIdentifier | None = None
    best_rank = -1
    for s in sender:
        ident = s.identifier
        if is_blocked(ident):
            return None
        key = ident.key
        owner = owners.get(key)
        if owner is None:
            return None
        if customer_id is None:
            state = customers.get(owner)
            if state is None:
                return None
            customer_id = owner
            held = state.identifiers
        elif owner != customer_id:
            return None
        entry = held.get(key)
        if entry is None:
            return None
        presented = s.trust
        linked = entry[1]
        if type(presented) is not Trust or type(linked) is not Trust:
            return None
        rank = _RANK[presented]
        if rank > _RANK[linked]:
            return None
        if rank > best_rank:
            best, best_rank = s, rank
    if best is None or customer_id is None:  # pragma: no cover (sender is not empty)
        return None
    name = str(best.identifier)
    trust = best.trust
    return Resolution(
        decision=Decision(
            rule="exact_match",
            code="identity.exact_match",
            params={"customer": customer_id},
            evidence={"identifier": name, "trust": trust.value},
        ),
        customer_id=customer_id,
        matched=best.identifier,
        trust=trust,
    )


def _resolve_general(
    sender: tuple[SenderIdentifier, ...],
    owners: Mapping[str, str],
    customers: Mapping[str, CustomerState],
    policy: MergePolicy,
    suggested: Collection[frozenset[str]],
) -> Resolution:
    """:func:`resolve` by its rules, in full (every case)."""
    ignored = tuple(s for s in sender if policy.is_blocked(s.identifier))
    usable = [s for s in sender if not policy.is_blocked(s.identifier)]
    known = [s for s in usable if s.identifier.key in owners]
    unknown = [s for s in usable if s.identifier.key not in owners]

    def tie(s: SenderIdentifier) -> Trust:
        state = customers.get(owners[s.identifier.key])
        linked = state.trust_of(s.identifier) if state is not None else None
        return tie_trust(s.trust, linked)

    # A claim never captures a holder: an identifier presented at asserted or better
    # that its owner only claimed does not tie the message to that owner.
    proven = {s.identifier.key: s for s in proven_claims(known, owners, customers)}
    deciding = [s for s in known if s.identifier.key not in proven]
    best = max(deciding, key=lambda s: (tie(s).rank, s.trust.rank)) if deciding else None
    if best is None or (proven and tie(best) < Trust.ASSERTED):
        # No known identifier, or only claims besides the proof: a new customer.
        candidates = [
            s for s in usable if s.identifier.key not in owners or s.identifier.key in proven
        ]
        admitted, new_refused = _admit(policy, {}, candidates)
        new_links = [s for s in admitted if s.identifier.key not in proven]
        taken = [s for s in admitted if s.identifier.key in proven]
        top = max((s.trust for s in usable), key=lambda t: t.rank, default=Trust.CLAIMED)
        takeovers: tuple[Takeover, ...] = ()
        notes: list[str] = []
        if taken:
            holder = _holding(
                None, "", {s.identifier.key: (s.identifier, s.trust) for s in admitted}
            )
            takeovers, notes = _takeovers(
                policy,
                taken,
                proven,
                owners,
                customers,
                holder,
                None,
                set(),
                suggested,
                "this customer, a new one",
            )
        params: dict[str, Scalar] = {}
        if notes:
            code = "identity.new_customer.taken_over"
            params["notes"] = "; ".join(notes)
            if deciding:
                params["claims"] = _names(deciding)
        elif proven:
            code = "identity.new_customer.claimed"
            params["proven"] = _names(list(proven.values()))
            params["claimants"] = ", ".join(dict.fromkeys(owners[k] for k in proven))
        elif usable:
            code = "identity.new_customer"
        else:
            code = "identity.new_customer.blocked"
        if takeovers and new_links:
            params["linked"] = _names(new_links)
        if new_refused:
            params["refused"] = "; ".join(why for _s, why in new_refused)
        if ignored:
            params["ignored"] = _names(ignored)
        evidence = {"identifiers": _names(usable)}
        if takeovers:
            evidence["taken_over"] = ",".join(
                f"{t.identifier.identifier}<-{t.claimant}" for t in takeovers
            )
        return Resolution(
            decision=Decision(rule="new_customer", code=code, params=params, evidence=evidence),
            customer_id=None,
            links=tuple(new_links),
            trust=top,
            ignored=ignored,
            refused=tuple(new_refused),
            takeovers=takeovers,
        )

    customer_id = owners[best.identifier.key]
    others = tuple(
        dict.fromkeys(
            owners[s.identifier.key] for s in deciding if owners[s.identifier.key] != customer_id
        )
    )
    state = customers.get(customer_id)
    work: dict[str, tuple[Identifier, Trust]] = dict(state.identifiers) if state else {}
    # What arrives with the message is tied to the customer no more strongly than the
    # message itself is: links and upgrades are capped at the chosen customer's tie (a
    # claimed e-mail address cannot attach an asserted phone number to its customer).
    chosen_tie = tie(best)
    rising = [
        _capped(s, chosen_tie)
        for s in known
        if owners[s.identifier.key] == customer_id
        and state is not None
        and (current := state.trust_of(s.identifier)) is not None
        and _capped(s, chosen_tie).trust > current
    ]
    upgrades, refused = _admit(policy, work, rising)
    verdicts: list[MergeVerdict] = []
    for other in others:
        other_state = customers.get(other)
        if state is None or other_state is None:
            continue
        ties = [s for s in deciding if owners[s.identifier.key] == other]
        strongest = max(ties, key=lambda s: tie(s).rank)
        verdicts.append(
            policy.evaluate(
                state,
                other_state,
                trust_a=chosen_tie,
                trust_b=tie(strongest),
                via=(best.identifier, strongest.identifier),
            )
        )
    # Identifiers the message proves that another customer only claimed move to this
    # customer (at no more than the message's tie, which is asserted or better here).
    taken, more = _admit(
        policy,
        work,
        [
            _capped(s, chosen_tie)
            for s in proven.values()
            if owners[s.identifier.key] != customer_id
        ],
    )
    refused.extend(more)
    # Unknown identifiers are linked to the chosen customer only when no other customer
    # is involved; otherwise it is not clear whose they are.
    links: list[SenderIdentifier] = []
    if not others:
        links, more = _admit(policy, work, [_capped(s, chosen_tie) for s in unknown])
        refused.extend(more)
    takeovers = ()
    notes = []
    if taken:
        takeovers, notes = _takeovers(
            policy,
            taken,
            proven,
            owners,
            customers,
            _holding(state, customer_id, work),
            customer_id,
            set(others),
            suggested,
        )
    params = {"customer": customer_id}
    if links:
        params["linked"] = _names(links)
    if notes:
        params["notes"] = "; ".join(notes)
    if refused:
        params["refused"] = "; ".join(why for _s, why in refused)
    for i, v in enumerate(verdicts):
        params.update(nest(f"v{i}", v.decision))
    evidence = {"identifier": str(best.identifier), "trust": best.trust.value}
    if others:
        evidence["others"] = ",".join(others)
    if takeovers:
        evidence["taken_over"] = ",".join(
            f"{t.identifier.identifier}<-{t.claimant}" for t in takeovers
        )
    if ignored:
        evidence["ignored"] = _names(ignored)
    return Resolution(
        decision=Decision(
            rule="exact_match", code="identity.exact_match", params=params, evidence=evidence
        ),
        customer_id=customer_id,
        links=tuple(links),
        upgrades=tuple(upgrades),
        others=others,
        matched=best.identifier,
        trust=chosen_tie,
        ignored=ignored,
        refused=tuple(refused),
        verdicts=tuple(verdicts),
        takeovers=takeovers,
    )


@dataclass(frozen=True)
class DisclosurePolicy:
    """What a session may see, by the trust of the identifier it arrived with.

    A session tied to a customer through an identifier presented **and** linked at
    ``min_trust`` or better (default ``asserted``) sees the customer's earlier history
    (all their threads). Anything weaker (a claim) sees only the current thread, from
    the session's own first message on. ``min_trust`` cannot be ``claimed``.
    """

    min_trust: Trust = Trust.ASSERTED

    def __post_init__(self) -> None:
        if not isinstance(self.min_trust, Trust) or self.min_trust < Trust.ASSERTED:
            raise ValidationError("the disclosure minimum trust must be asserted or verified")

    def decide(
        self, identifier: Identifier | None, presented: Trust, linked: Trust | None
    ) -> Decision:
        """``rule`` is ``"history"`` (earlier history visible) or ``"current_thread"``."""
        name = str(identifier) if identifier is not None else "no identifier"
        effective = tie_trust(presented, linked) if linked is not None else None
        evidence = {
            "identifier": name,
            "presented": presented.value,
            "linked": linked.value if linked is not None else "not linked",
            "minimum": self.min_trust.value,
        }
        if effective is not None and effective >= self.min_trust:
            return Decision(
                rule="history",
                code="disclosure.history",
                params={"effective": effective.value},
                evidence=evidence,
            )
        if linked is None:
            return Decision(rule="current_thread", code="disclosure.not_linked", evidence=evidence)
        return Decision(
            rule="current_thread",
            code="disclosure.too_weak",
            params={"effective": effective.value if effective else presented.value},
            evidence=evidence,
        )


# --------------------------------------------------------------------------- reasons
# How the codes above read. ``m`` is a decision's params laid over its evidence.


def _tail(m: Mapping[str, Any]) -> str:
    """What a resolution adds after its first clause: links made, takeovers, links
    refused, the merge verdicts about other customers, blocklisted values set aside."""
    out = ""
    if "linked" in m:
        out += f"; linked {m['linked']}"
    if "notes" in m:
        out += f"; {m['notes']}"
    if "refused" in m:
        out += f"; not linked: {m['refused']}"
    i = 0
    while f"v{i}" in m:
        out += f"; {nested(m, f'v{i}')}"
        i += 1
    if "ignored" in m:
        out += f"; set aside blocklisted {m['ignored']}"
    return out


def _new_customer_tail(m: Mapping[str, Any]) -> str:
    out = f"; linked {m['linked']}" if "linked" in m else ""
    if "refused" in m:
        out += f"; not linked: {m['refused']}"
    if "ignored" in m:
        out += f"; set aside blocklisted {m['ignored']}"
    return out


def _taken_over(m: Mapping[str, Any]) -> str:
    claims = m.get("claims")
    text = str(m["notes"])
    if claims:
        text += f"; the claims presented with it ({claims}) do not choose a customer"
    return text + _new_customer_tail(m)


_READS: Final = {
    "identity.exact_match": lambda m: (
        f"{m['identifier']} ({m['trust']}) belongs to customer {m['customer']}" + _tail(m)
    ),
    "identity.new_customer": lambda m: (
        f"no known identifier among {m['identifiers']}; a new customer" + _new_customer_tail(m)
    ),
    "identity.new_customer.taken_over": _taken_over,
    "identity.new_customer.claimed": lambda m: (
        f"{m['proven']} only claimed by {m['claimants']}: a claim does not capture the "
        "holder; a new customer" + _new_customer_tail(m)
    ),
    "identity.new_customer.blocked": lambda m: (
        "only blocklisted identifiers; a new customer with no identifiers" + _new_customer_tail(m)
    ),
    "identity.takeover_suggested": lambda m: (
        f"{m['via']} was only claimed by {m['claimant']}; {m.get('how') or 'it arrived'} "
        f"{m['trust']}, so it moved to the customer who holds it: the two may be the same "
        "person; a claim never merges, an agent decides"
    ),
    "disclosure.history": lambda m: (
        f"{m['identifier']} is {m['effective']} (presented {m['presented']}, linked "
        f"{m['linked']}); earlier history is disclosed"
    ),
    "disclosure.not_linked": lambda m: (
        f"{m['identifier']} is not linked to the customer; history needs {m['minimum']}: "
        "only the current thread"
    ),
    "disclosure.too_weak": lambda m: (
        f"{m['identifier']} is only {m['effective']} (presented {m['presented']}, linked "
        f"{m['linked']}); history needs {m['minimum']}: only the current thread"
    ),
    "identity.verified": lambda m: (
        f"{m['identifier']} verified by one-time code for customer {m['customer']}"
    ),
    "identity.verified.taken_over": lambda m: (
        f"{m['identifier']} verified by one-time code for customer {m['customer']}; it was "
        f"only claimed by {m['taken_over_from']}, so it now belongs to {m['customer']}"
        + (f"; merge with {m['taken_over_from']} suggested" if m.get("suggested") else "")
    ),
    # follow-up clauses
    "identity.then.merged": lambda m: (
        "; "
        + "; ".join(
            f"merged {pair.split('>')[0]} into {pair.split('>')[1]} ({merge_id})"
            for pair, merge_id in zip(
                str(m["merges"]).split(), str(m["merged"]).split(","), strict=True
            )
        )
        + f": {nested(m, 'm')}"
    ),
    "identity.then.session": lambda m: (
        f"; the requesting session belongs to {m['requester']}: {nested(m, 'v')}"
    ),
}
for _code, _read in _READS.items():
    _register_builtin(_code, _read)
