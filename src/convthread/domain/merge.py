"""The merge policy: when two customers may become one, and which one survives.

Pure: the service loads both customers' states and asks the policy. Four rules:

1. **Blocklist.** Shared or junk values (a shop's phone, ``noreply@`` addresses, numbers
   whose digits are all the same or all zeros after the area code) are never linked to
   any customer, never used to resolve a message, and so never cause or carry a merge:
   a message is resolved by its other identifiers (or makes a new customer, when it has
   none), and :meth:`Conversations.link` refuses them. Exact entries are
   :class:`~convthread.Identifier` values; patterns are regular expressions matched
   (``re.fullmatch``) against ``str(identifier)`` (``"email:noreply@shop.example"``,
   ``"handle[twitter]:acme"``).
2. **Per-kind limits.** A customer holds at most ``max_per_kind[kind]`` identifiers of a
   kind (default 3 phones, 3 e-mail addresses) and at most ``max_verified_accounts``
   verified account ids (default 1). A link or a merge that would exceed a limit is
   refused: these are hard limits, for automatic merges and agents alike.
3. **Minimum trust for automatic merges.** A message whose identifiers point at two
   customers merges them automatically only when the identifier tying it to *each*
   customer is at least ``min_auto_trust`` (default ``asserted``) both as presented and
   as linked. A claim never merges anything by itself: ``min_auto_trust`` cannot be set
   below ``asserted``. What is not merged automatically (and passes the hard limits)
   becomes a recorded merge suggestion that an agent accepts or rejects.
4. **Survivor.** ``survivor="oldest"`` (default): the customer created first survives
   (ties: the smaller id). ``"most_identifiers"``, ``"most_trusted"``, or a callable
   ``(a, b) -> survivor`` choose otherwise.

What an unmerge gives back (:func:`unmerge_keys`): the identifiers the absorbed customer
had at the merge that the survivor still holds *because of* the merge. One that was
unlinked from the survivor since (by an agent, or taken over by another customer) is
not given back, even when it was linked to the survivor again afterwards: a link made
after the merge stays with the survivor. A raise of trust (a link at a higher trust, a
verification) is not a new link: the identifier goes back at its current trust.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Union

import msgspec
import phonenumbers

from convthread.domain.events import (
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    Decision,
    IdentifierUnlinked,
)
from convthread.domain.model import Identifier, IdentifierKind, Trust
from convthread.domain.reasons import Scalar, _register_builtin, nested
from convthread.domain.thread import CustomerState
from convthread.errors import ValidationError

__all__ = [
    "DEFAULT_BLOCKED_PATTERNS",
    "MergeAction",
    "MergePolicy",
    "MergeVerdict",
    "SurvivorRule",
    "repeated_digit_phone",
    "unmerge_keys",
]

#: Default patterns of shared or junk values (matched against ``str(identifier)``).
DEFAULT_BLOCKED_PATTERNS: Final = (
    r"email:(no-?reply|do-?not-?reply|mailer-daemon|postmaster|bounces?)([+.-][^@]*)?@.*",
)


def repeated_digit_phone(identifier: Identifier) -> bool:
    """True for a junk phone number: its national digits are all the same
    (``+1 111 111 1111``), or all zeros after the first three (``+1 200 000 0000``)."""
    if identifier.kind != IdentifierKind.PHONE:
        return False
    return _junk_number(identifier.value)


@lru_cache(maxsize=65536)
def _junk_number(value: str) -> bool:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return False
    digits = phonenumbers.national_significant_number(number)
    subscriber = digits[3:]
    return len(set(digits)) == 1 or (len(subscriber) >= 6 and set(subscriber) == {"0"})


#: Built-in predicates and the only kinds they can refuse (a user's predicate is asked
#: about every kind).
_PREDICATE_KINDS: Final[dict[Callable[[Identifier], bool], frozenset[str]]] = {
    repeated_digit_phone: frozenset({IdentifierKind.PHONE}),
}

_CACHE_LIMIT: Final = 65536
_KIND_PREFIX: Final = re.compile(r"^([a-z][a-z0-9_-]{0,31})(?=[:\[])")


class SurvivorRule(str, enum.Enum):
    """Which customer survives a merge."""

    OLDEST = "oldest"
    MOST_IDENTIFIERS = "most_identifiers"
    MOST_TRUSTED = "most_trusted"


SurvivorChooser = Callable[[CustomerState, CustomerState], CustomerState]


class MergeAction(str, enum.Enum):
    """What the policy says about a pair of customers."""

    MERGE = "merge"  # merge now, automatically
    SUGGEST = "suggest"  # allowed, but only an agent may decide (record a suggestion)
    REFUSE = "refuse"  # would break a hard rule (a limit, a blocklisted value)


class MergeVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """The policy's answer for two customers, with the reason."""

    action: MergeAction
    survivor: str
    absorbed: str
    decision: Decision
    violations: tuple[str, ...] = ()
    #: the identifiers that tie the message (or session) to each customer
    via: tuple[Identifier, ...] = ()


def _trust_rank(trusts: Iterable[Trust]) -> int:
    return sum(t.rank for t in trusts)


@dataclass(frozen=True)
class MergePolicy:
    """Per-kind limits, blocklist, minimum trust for automatic merges, survivor rule."""

    max_per_kind: Mapping[str, int] = field(
        default_factory=lambda: {IdentifierKind.PHONE: 3, IdentifierKind.EMAIL: 3}
    )
    max_verified_accounts: int = 1
    blocked: frozenset[Identifier] = frozenset()
    blocked_patterns: tuple[str, ...] = DEFAULT_BLOCKED_PATTERNS
    blocked_if: tuple[Callable[[Identifier], bool], ...] = (repeated_digit_phone,)
    min_auto_trust: Trust = Trust.ASSERTED
    survivor: Union[SurvivorRule, str, SurvivorChooser] = SurvivorRule.OLDEST
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False
    )
    _blocked_cache: dict[Identifier, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.min_auto_trust, Trust):
            raise ValidationError("min_auto_trust must be a Trust")
        if self.min_auto_trust < Trust.ASSERTED:
            raise ValidationError(
                "min_auto_trust cannot be 'claimed': a claim never merges customers"
            )
        if self.max_verified_accounts < 0 or any(
            not isinstance(v, int) or v < 0 for v in self.max_per_kind.values()
        ):
            raise ValidationError("identifier limits must be non-negative integers")
        if not callable(self.survivor):
            try:
                object.__setattr__(self, "survivor", SurvivorRule(self.survivor))
            except ValueError:
                raise ValidationError(
                    f"unknown survivor rule {self.survivor!r}; expected one of "
                    + ", ".join(r.value for r in SurvivorRule)
                    + " or a callable"
                ) from None
        object.__setattr__(self, "blocked", frozenset(self.blocked))
        try:
            # A pattern that starts with a literal kind ("email:...") is only tried on
            # identifiers of that kind.
            compiled = tuple(
                (m.group(1) if (m := _KIND_PREFIX.match(p)) else "", re.compile(p))
                for p in self.blocked_patterns
            )
        except re.error as exc:
            raise ValidationError(f"invalid blocklist pattern: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_blocked_cache", {})

    # -- blocklist

    def is_blocked(self, identifier: Identifier) -> bool:
        """True when ``identifier`` is a shared or junk value (never linked or merged on).

        Answers are cached per policy (bounded), so a hot identifier is checked once."""
        cache = self._blocked_cache
        found = cache.get(identifier)
        if found is not None:
            return found
        kind = identifier.kind
        answer = (
            identifier in self.blocked
            or any(p.fullmatch(str(identifier)) for k, p in self._compiled if not k or k == kind)
            or any(pred(identifier) for pred in self.blocked_if)
        )
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[identifier] = answer
        return answer

    def may_block(self, kind: str) -> bool:
        """False when no exact entry, pattern or predicate of the blocklist can refuse an
        identifier of ``kind`` (so a caller may skip :meth:`is_blocked` for it)."""
        return (
            any(i.kind == kind for i in self.blocked)
            or any(not k or k == kind for k, _p in self._compiled)
            or any(kind in _PREDICATE_KINDS.get(pred, (kind,)) for pred in self.blocked_if)
        )

    # -- limits

    def violations(self, identifiers: Iterable[tuple[Identifier, Trust]]) -> tuple[str, ...]:
        """What a customer holding ``identifiers`` would break (empty: nothing)."""
        kinds: dict[str, int] = {}
        verified_accounts = 0
        for ident, trust in identifiers:
            kind = ident.kind
            kinds[kind] = kinds.get(kind, 0) + 1
            if trust is Trust.VERIFIED and kind == IdentifierKind.ACCOUNT:
                verified_accounts += 1
        out = [
            f"{kinds[kind]} {kind} identifiers (limit {limit})"
            for kind, limit in sorted(self.max_per_kind.items())
            if kinds.get(kind, 0) > limit
        ]
        if verified_accounts > self.max_verified_accounts:
            out.append(
                f"{verified_accounts} verified account ids (limit {self.max_verified_accounts})"
            )
        return tuple(out)

    def link_refusal(
        self,
        identifiers: Mapping[str, tuple[Identifier, Trust]],
        identifier: Identifier,
        trust: Trust,
    ) -> str | None:
        """Why ``identifier`` at ``trust`` may not join a customer holding ``identifiers``
        (identifier key -> (identifier, trust)); None: it may."""
        if self.is_blocked(identifier):
            return f"{identifier} is blocklisted (a shared or junk value)"
        current = dict(identifiers)
        previous = current.get(identifier.key)
        if previous is not None and previous[1] > trust:
            trust = previous[1]
        current[identifier.key] = (identifier, trust)
        found = self.violations(current.values())
        if found:
            return f"linking {identifier} ({trust.value}) would give " + "; ".join(found)
        return None

    # -- merges

    def choose_survivor(self, a: CustomerState, b: CustomerState) -> tuple[str, str]:
        """``(survivor id, absorbed id)`` under the survivor rule."""
        rule = self.survivor
        if callable(rule) and not isinstance(rule, SurvivorRule):
            chosen = rule(a, b)
            if chosen.id not in (a.id, b.id):
                raise ValidationError("the survivor callable must return one of its arguments")
            return (a.id, b.id) if chosen.id == a.id else (b.id, a.id)

        def oldest(s: CustomerState) -> tuple[object, ...]:
            return (s.created_at, s.id)

        if rule is SurvivorRule.MOST_IDENTIFIERS:
            key_a: tuple[object, ...] = (-len(a.identifiers), *oldest(a))
            key_b: tuple[object, ...] = (-len(b.identifiers), *oldest(b))
        elif rule is SurvivorRule.MOST_TRUSTED:
            key_a = (-_trust_rank(t for _i, t in a.identifiers.values()), *oldest(a))
            key_b = (-_trust_rank(t for _i, t in b.identifiers.values()), *oldest(b))
        else:
            key_a, key_b = oldest(a), oldest(b)
        return (a.id, b.id) if key_a <= key_b else (b.id, a.id)

    def hard_violations(self, a: CustomerState, b: CustomerState) -> tuple[str, ...]:
        """What merging ``a`` and ``b`` would break, whoever decides (empty: nothing)."""
        out: list[str] = []
        if a.id == b.id:
            out.append("a customer cannot be merged with itself")
        for s in (a, b):
            if s.erased:
                out.append(f"customer {s.id} was erased")
            if s.merged_into is not None:
                out.append(f"customer {s.id} was merged into {s.merged_into}")
        union = {**a.identifiers, **b.identifiers}
        out.extend(self.violations(union.values()))
        for ident, _trust in union.values():
            if self.is_blocked(ident):
                out.append(f"{ident} is blocklisted")
        return tuple(out)

    def evaluate(
        self,
        a: CustomerState,
        b: CustomerState,
        *,
        trust_a: Trust,
        trust_b: Trust,
        via: tuple[Identifier, ...] = (),
    ) -> MergeVerdict:
        """Decide about ``a`` and ``b``, tied to one message (or session) at ``trust_a`` and
        ``trust_b``: the lower of the presented and the linked trust of the identifier
        that ties each of them to it. ``via`` are those identifiers."""
        survivor, absorbed = self.choose_survivor(a, b)
        via_text = " and ".join(str(i) for i in via)
        evidence = {
            "survivor": survivor,
            "absorbed": absorbed,
            "trust": f"{a.id}={trust_a.value},{b.id}={trust_b.value}",
        }
        if via:
            evidence["via"] = via_text
        hard = self.hard_violations(a, b)
        if hard:
            return MergeVerdict(
                action=MergeAction.REFUSE,
                survivor=survivor,
                absorbed=absorbed,
                decision=Decision(
                    rule="merge_refused",
                    code="merge.refused",
                    params={"a": a.id, "b": b.id, "hard": "; ".join(hard)},
                    evidence=evidence,
                ),
                violations=hard,
                via=via,
            )
        weakest = min(trust_a, trust_b)
        if weakest >= self.min_auto_trust:
            return MergeVerdict(
                action=MergeAction.MERGE,
                survivor=survivor,
                absorbed=absorbed,
                decision=Decision(
                    rule="auto_merge",
                    code="merge.auto",
                    params=self._rule_params(weakest),
                    evidence=evidence,
                ),
                via=via,
            )
        return MergeVerdict(
            action=MergeAction.SUGGEST,
            survivor=survivor,
            absorbed=absorbed,
            decision=Decision(
                rule="merge_suggested",
                code="merge.suggested",
                params={"a": a.id, "b": b.id, **self._rule_params(weakest, rule=False)},
                evidence=evidence,
            ),
            via=via,
        )

    def _rule_params(self, weakest: Trust, *, rule: bool = True) -> dict[str, Scalar]:
        """The params of a verdict: the weakest tie, the policy minimum and (``rule``)
        the survivor rule (absent: a custom one)."""
        out: dict[str, Scalar] = {"weakest": weakest.value, "min": self.min_auto_trust.value}
        if rule and isinstance(self.survivor, SurvivorRule):
            out["rule"] = self.survivor.value
        return out


def unmerge_keys(merge: CustomerMerged, later: Iterable[CustomerEvent]) -> frozenset[str]:
    """The keys of the identifiers that undoing ``merge`` gives back to the absorbed
    customer, given ``later``: the survivor's events recorded after ``merge``, in order.

    An identifier of ``merge.identifiers`` is given back unless, since the merge, it was
    unlinked from the survivor (whatever happened to it afterwards) or the survivor lost
    it otherwise: given away by the undoing of a later merge into the survivor, or not
    given back when the survivor, merged into a third customer since, was restored.
    """
    survivor = merge.survivor
    due = {ident.key for ident, _trust in merge.identifiers}
    for event in later:
        if isinstance(event, IdentifierUnlinked):
            due.discard(event.identifier.key)
        elif isinstance(event, CustomerUnmerged):
            keys = {ident.key for ident, _trust in event.identifiers}
            if event.restored == survivor:
                due &= keys  # back from the third customer: only what that undo returned
            elif event.survivor == survivor:
                due -= keys  # given back to a customer merged into the survivor since
        # A later CustomerMerged that absorbs the survivor takes everything along; the
        # CustomerUnmerged that undoes it says what came back (until then, ``merge``
        # cannot be undone).
    return frozenset(due)


# --------------------------------------------------------------------------- reasons
# How the codes above read. ``m`` is a verdict's params laid over its evidence.


def _via(m: Mapping[str, Any]) -> str:
    return f" via {m['via']}" if "via" in m else ""


def _survivor_rule(m: Mapping[str, Any]) -> str:
    return f"survivor rule {m['rule']}" if "rule" in m else "custom survivor rule"


_READS: Final = {
    "merge.refused": lambda m: f"{m['a']} and {m['b']} cannot be merged: {m['hard']}",
    "merge.auto": lambda m: (
        f"both customers are tied to the same person at {m['weakest']} trust or better "
        f"(policy minimum {m['min']}){_via(m)}; {m['survivor']} survives ({_survivor_rule(m)})"
    ),
    "merge.suggested": lambda m: (
        f"{m['a']} and {m['b']} may be the same person{_via(m)}, but one side is only "
        f"{m['weakest']} (automatic merges need {m['min']} on both sides); an agent decides"
    ),
    "merge.manual": lambda m: (
        f"{m['by'] or 'an agent'} merged {m['absorbed']} into {m['survivor']}"
        + (f": {m['note']}" if m.get("note") else "")
    ),
    "merge.suggestion_accepted": lambda m: (
        f"{m['by'] or 'an agent'} accepted merge suggestion {m['suggestion']}: {nested(m, 's')}"
    ),
}
for _code, _read in _READS.items():
    _register_builtin(_code, _read)
