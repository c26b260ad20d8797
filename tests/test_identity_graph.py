"""IdentityGraph: the whole identity graph in arrays, under the merge policy.

Unit tests for each operation and its errors, a check that the graph refuses exactly the
merges ``MergePolicy.hard_violations`` refuses, and a Hypothesis state machine against a
plain reference model (dicts and sets) after every step.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

import convthread as ct
from convthread import Identifier, IdentityGraph, MergePolicy, Trust
from convthread.domain.thread import CustomerState
from convthread.errors import NotFound, PolicyViolation, ValidationError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def phone(n: int) -> Identifier:
    return Identifier("phone", f"+44790011{n:04d}")


def mail(n: int) -> Identifier:
    return Identifier("email", f"p{n}@example.com")


def account(n: int, tenant: str = "shop") -> Identifier:
    return Identifier("account", f"a{n}", tenant)


def member(n: int) -> Identifier:
    return Identifier("member", f"m{n}")


# --------------------------------------------------------------------------- units


def test_add_customers_links_one_new_customer_per_identifier() -> None:
    graph = IdentityGraph()
    made = graph.add_customers([phone(1), mail(1), member(1)])
    assert made == range(0, 3)
    assert graph.customers == 3
    assert len(graph) == 3
    assert [graph.customer_of(i) for i in (phone(1), mail(1), member(1))] == [0, 1, 2]
    assert graph.trust_of(mail(1)) is Trust.ASSERTED
    assert graph.customer_of(phone(2)) is None
    assert graph.trust_of(phone(2)) is None
    assert graph.identifiers_of(1) == [(mail(1), Trust.ASSERTED)]


def test_kind_and_scope_separate_equal_values() -> None:
    graph = IdentityGraph()
    graph.add_customers(
        [Identifier("handle", "acme", "twitter"), Identifier("handle", "acme", "messenger")]
    )
    graph.add_customers([Identifier("member", "acme")])
    assert graph.customer_of(Identifier("handle", "acme", "twitter")) == 0
    assert graph.customer_of(Identifier("handle", "acme", "messenger")) == 1
    assert graph.customer_of(Identifier("member", "acme")) == 2
    assert graph.customer_of(Identifier("handle", "acme", "instagram")) is None


def test_add_customers_takes_a_stream_larger_than_its_chunks() -> None:
    graph = IdentityGraph()
    made = graph.add_customers(member(i) for i in range(70_000))
    assert len(made) == 70_000
    assert graph.customer_of(member(69_999)) == 69_999
    assert graph.customer_of(member(123)) == 123


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        ([member(1), member(2), member(1)], "appears twice"),
        ([member(1), member(0)], "belongs to customer 0"),
        ([member(1), Identifier("email", "noreply@shop.example"), member(3)], "blocklisted"),
        ([member(1), Identifier("phone", "+12000000000"), member(3)], "blocklisted"),
    ],
)
def test_add_customers_is_all_or_nothing(batch: list[Identifier], why: str) -> None:
    graph = IdentityGraph()
    graph.add_customers([member(0)])
    with pytest.raises(PolicyViolation, match=why):
        graph.add_customers(batch)
    assert graph.customers == 1
    assert len(graph) == 1
    assert graph.customer_of(member(1)) is None
    assert graph.customer_of(member(0)) == 0
    # The table still works after the rollback: the refused values can be added.
    assert graph.add_customers([member(1), member(2)]) == range(1, 3)
    assert graph.customer_of(member(2)) == 2


def test_add_customers_is_all_or_nothing_across_chunks() -> None:
    graph = IdentityGraph()
    (c,) = graph.add_customers([member(-1)])
    graph.link(c, member(-2))
    graph.unlink(member(-2))
    # 70,000 identifiers (more than one chunk), one relinked, the last one a repeat.
    batch = [member(-2), *(member(i) for i in range(70_000)), member(5)]
    with pytest.raises(PolicyViolation, match="appears twice"):
        graph.add_customers(iter(batch))
    assert (len(graph), graph.customers) == (1, 1)
    assert graph.customer_of(member(-2)) is None
    assert graph.customer_of(member(69_999)) is None
    assert graph.add_customers([member(-2), member(7)]) == range(1, 3)
    assert (len(graph), graph.customer_of(member(-2))) == (3, 1)


def test_add_customers_refuses_what_a_zero_limit_forbids() -> None:
    graph = IdentityGraph(MergePolicy(max_per_kind={"phone": 0}, max_verified_accounts=0))
    with pytest.raises(PolicyViolation, match=r"1 phone identifiers \(limit 0\)"):
        graph.add_customers([member(1), phone(1)])
    with pytest.raises(PolicyViolation, match="verified account ids"):
        graph.add_customers([account(1)], trust=Trust.VERIFIED)
    assert graph.customers == 0
    assert graph.add_customers([account(1)]) == range(0, 1)  # asserted: no limit


def test_link_checks_ownership_blocklist_and_limits() -> None:
    graph = IdentityGraph(MergePolicy(max_per_kind={"phone": 2}))
    a, b = graph.add_customers([member(1), member(2)])
    graph.link(a, phone(1))
    graph.link(a, phone(2))
    with pytest.raises(PolicyViolation, match=r"3 phone identifiers \(limit 2\)"):
        graph.link(a, phone(3))
    with pytest.raises(PolicyViolation, match="belongs to customer 0"):
        graph.link(b, phone(1))
    with pytest.raises(PolicyViolation, match="blocklisted"):
        graph.link(b, Identifier("email", "no-reply+x@shop.example"))
    assert graph.customer_of(phone(3)) is None
    assert graph.identifiers_of(b) == [(member(2), Trust.ASSERTED)]
    assert len(graph) == 4


def test_link_again_keeps_the_higher_trust() -> None:
    graph = IdentityGraph()
    (c,) = graph.add_customers([mail(1)], trust=Trust.CLAIMED)
    graph.link(c, mail(1), trust=Trust.VERIFIED)
    assert graph.trust_of(mail(1)) is Trust.VERIFIED
    graph.link(c, mail(1), trust=Trust.CLAIMED)
    assert graph.trust_of(mail(1)) is Trust.VERIFIED
    assert len(graph) == 1


def test_at_most_one_verified_account_id() -> None:
    graph = IdentityGraph()
    (c,) = graph.add_customers([account(1)], trust=Trust.VERIFIED)
    graph.link(c, account(2, "other"))  # asserted: not counted
    with pytest.raises(PolicyViolation, match=r"2 verified account ids \(limit 1\)"):
        graph.link(c, account(2, "other"), trust=Trust.VERIFIED)
    assert graph.trust_of(account(2, "other")) is Trust.ASSERTED
    (d,) = graph.add_customers([account(3)], trust=Trust.VERIFIED)
    assert graph.merge_violations(c, d) == ("2 verified account ids (limit 1)",)
    with pytest.raises(PolicyViolation, match="cannot be merged"):
        graph.merge(c, d)
    assert graph.survivor_of(d) == d


def test_merge_oldest_survives_and_unmerge_gives_back_exactly() -> None:
    graph = IdentityGraph()
    a, b, c = graph.add_customers([member(1), member(2), member(3)])
    assert graph.merge(c, b) == b
    graph.link(c, phone(7))  # linked to c's survivor, b
    assert graph.merge(b, a) == a
    assert graph.customer_of(member(3)) == a
    assert graph.merged_into(c) == b
    assert graph.merged_into(b) == a
    assert graph.merged_into(a) is None
    assert [i for i, _t in graph.identifiers_of(c)] == sorted(
        [member(1), member(2), member(3), phone(7)]
    )
    assert graph.merge_violations(a, c) == ("customers 0 and 2 are already one customer (0)",)
    assert graph.unmerge(c) == b
    assert graph.customer_of(member(3)) == c
    assert graph.customer_of(phone(7)) == a  # it was linked to b, after the merge
    assert graph.identifiers_of(c) == [(member(3), Trust.ASSERTED)]
    assert graph.unmerge(b) == a
    assert graph.customer_of(phone(7)) == b
    assert graph.identifiers_of(a) == [(member(1), Trust.ASSERTED)]
    with pytest.raises(NotFound):
        graph.unmerge(b)


def test_unmerge_respects_unlinks_and_links_made_after_the_merge() -> None:
    """The service's rule (see ``unmerge_keys``): an identifier unlinked since the merge
    is not given back, even when it was linked to the survivor again."""
    graph = IdentityGraph()
    ann, bob = graph.add_customers([member(1), member(2)])
    graph.link(bob, phone(2))
    graph.link(bob, mail(2))
    assert graph.merge(ann, bob) == ann
    graph.unlink(phone(2))
    graph.link(ann, phone(2))  # linked again, to the survivor
    graph.unlink(mail(2))  # and not linked again
    graph.link(ann, member(2), trust=Trust.VERIFIED)  # a raise of trust: not a new link
    assert graph.unmerge(bob) == ann
    assert graph.customer_of(phone(2)) == ann
    assert graph.customer_of(mail(2)) is None
    assert graph.identifiers_of(bob) == [(member(2), Trust.VERIFIED)]


def test_survivors_are_the_plan_one_customer_per_person() -> None:
    graph = IdentityGraph()
    a, b, c, d = graph.add_customers([member(1), member(2), member(3), member(4)])
    graph.merge(b, c)
    graph.merge(d, a)
    assert list(graph.survivors()) == [a, b]
    assert repr(graph) == "<IdentityGraph: 4 identifiers, 4 customers (2 after merges)>"
    graph.unmerge(c)
    assert list(graph.survivors()) == [a, b, c]


def test_unmerge_gives_back_the_limits_room() -> None:
    graph = IdentityGraph(MergePolicy(max_per_kind={"phone": 2}))
    a, b = graph.add_customers([phone(1), phone(2)])
    graph.merge(a, b)
    with pytest.raises(PolicyViolation):
        graph.link(a, phone(3))
    graph.unmerge(b)
    graph.link(a, phone(3))
    assert graph.customer_of(phone(3)) == a


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("oldest", 0), ("most_identifiers", 1), ("most_trusted", 1)],
)
def test_survivor_rules(rule: str, expected: int) -> None:
    graph = IdentityGraph(MergePolicy(survivor=rule))
    a, b = graph.add_customers([member(1), member(2)])
    graph.link(b, member(3), trust=Trust.VERIFIED)
    assert graph.merge(a, b) == expected


def test_unlink() -> None:
    graph = IdentityGraph(MergePolicy(max_per_kind={"phone": 1}))
    (c,) = graph.add_customers([phone(1)])
    graph.link(c, member(1))
    graph.link(c, member(2))
    assert graph.unlink(member(1)) == c
    assert graph.unlink(phone(1)) == c
    assert graph.identifiers_of(c) == [(member(2), Trust.ASSERTED)]
    assert len(graph) == 1
    graph.link(c, phone(2))  # the phone's place is free again
    (d,) = graph.add_customers([member(9)])
    graph.link(d, member(1))  # an unlinked identifier can go elsewhere
    assert graph.customer_of(member(1)) == d
    with pytest.raises(NotFound):
        graph.unlink(phone(1))
    with pytest.raises(NotFound):
        graph.unlink(member(404))


def test_bulk_calls_report_refusals_and_go_on() -> None:
    graph = IdentityGraph(MergePolicy(max_per_kind={"phone": 1}))
    graph.add_customers([member(1), member(2), phone(1), phone(2)])
    links = graph.link_all(
        [
            (member(1), mail(1)),
            (member(404), mail(2)),
            (member(1), mail(1)),
            (member(2), Identifier("email", "postmaster@shop.example")),
            (member(2), mail(3)),
        ]
    )
    assert links.applied == 2
    assert links.unchanged == 1
    assert [i for i, _why in links.refused] == [1, 3]
    assert "not linked to any customer" in links.refused[0][1]
    merges = graph.merge_all(
        [(member(1), member(2)), (mail(1), mail(3)), (phone(1), phone(2)), (mail(9), phone(1))]
    )
    assert merges.applied == 1
    assert merges.unchanged == 1
    assert [i for i, _why in merges.refused] == [2, 3]
    assert "limit 1" in merges.refused[0][1]


def test_errors_are_typed() -> None:
    def chooser(a: CustomerState, b: CustomerState) -> CustomerState:
        return a

    with pytest.raises(ValidationError, match="named survivor rules"):
        IdentityGraph(MergePolicy(survivor=chooser))
    graph = IdentityGraph()
    with pytest.raises(NotFound):
        graph.link(0, member(1))
    with pytest.raises(NotFound):
        graph.survivor_of(-1)
    with pytest.raises(ValidationError):
        graph.merged_into("0")  # type: ignore[arg-type]
    c = graph.new_customer()
    with pytest.raises(ValidationError, match="trust must be a Trust"):
        graph.link(c, member(1), trust="verified")  # type: ignore[arg-type]
    assert graph.identifiers_of(c) == []
    assert isinstance(ct.BulkReport(applied=0, unchanged=0), ct.BulkReport)


# ------------------------------------------------- the graph applies the same policy

_POLICY = MergePolicy(max_per_kind={"phone": 2, "email": 2}, max_verified_accounts=1)
_idents = st.one_of(
    st.integers(0, 3).map(phone),
    st.integers(0, 3).map(mail),
    st.integers(0, 2).map(account),
    st.integers(0, 3).map(member),
)
_linked = st.lists(st.tuples(_idents, st.sampled_from(list(Trust))), max_size=5)


def _state(cid: str, links: dict[str, tuple[Identifier, Trust]]) -> CustomerState:
    return CustomerState(id=cid, version=1, created_at=T0, identifiers=links)


@settings(max_examples=300, deadline=None)
@given(_linked, _linked)
def test_merge_refused_exactly_when_the_policy_says(
    left: list[tuple[Identifier, Trust]], right: list[tuple[Identifier, Trust]]
) -> None:
    graph = IdentityGraph(_POLICY)
    sides = []
    for cid, links in (("a", left), ("b", right)):
        customer = graph.new_customer()
        held: dict[str, tuple[Identifier, Trust]] = {}
        for identifier, trust in links:
            if graph.customer_of(identifier) not in (None, customer):
                continue  # the other side has it: a customer holds its own values
            if _POLICY.link_refusal(held, identifier, trust) is None:
                graph.link(customer, identifier, trust=trust)
                previous = held.get(identifier.key, (identifier, trust))[1]
                held[identifier.key] = (identifier, max(trust, previous))
            else:
                with pytest.raises(PolicyViolation):
                    graph.link(customer, identifier, trust=trust)
        assert sorted(graph.identifiers_of(customer)) == sorted(held.values())
        sides.append(_state(cid, held))
    expected = _POLICY.hard_violations(sides[0], sides[1])
    assert bool(graph.merge_violations(0, 1)) == bool(expected)


# --------------------------------------------------------------------- state machine


class GraphMachine(RuleBasedStateMachine):
    """The graph against a model: direct links per customer, and merge pointers."""

    customers = Bundle("customers")
    survivor_rule = "oldest"

    def __init__(self) -> None:
        super().__init__()
        self.graph = IdentityGraph(dataclasses.replace(_POLICY, survivor=self.survivor_rule))
        self.links: list[dict[Identifier, Trust]] = []  # direct links per customer
        self.into: list[int] = []

    # -- the model
    def root(self, c: int) -> int:
        while self.into[c] != c:
            c = self.into[c]
        return c

    def members(self, root: int) -> list[int]:
        return [c for c in range(len(self.into)) if self.root(c) == root]

    def held(self, root: int) -> dict[Identifier, Trust]:
        out: dict[Identifier, Trust] = {}
        for c in self.members(root):
            out.update(self.links[c])
        return out

    def owner(self, identifier: Identifier) -> int | None:
        for c, links in enumerate(self.links):
            if identifier in links:
                return c
        return None

    def survivor_key(self, root: int) -> tuple[int, int]:
        held = self.held(root)
        if self.survivor_rule == "most_identifiers":
            return (-len(held), root)
        if self.survivor_rule == "most_trusted":
            return (-sum(t.rank for t in held.values()), root)
        return (0, root)

    def violations(self, held: dict[Identifier, Trust]) -> tuple[str, ...]:
        return _POLICY.violations(held.items())

    # -- rules
    @rule(target=customers, identifiers=st.lists(_idents, max_size=3))
    def add(self, identifiers: list[Identifier]) -> object:
        fresh = (
            len(set(identifiers)) == len(identifiers)
            and all(self.owner(i) is None for i in identifiers)
            and not any(_POLICY.is_blocked(i) for i in identifiers)
        )
        if not fresh:
            with pytest.raises(PolicyViolation):
                self.graph.add_customers(identifiers)
        elif identifiers:
            made = self.graph.add_customers(identifiers)
            assert made == range(len(self.into), len(self.into) + len(identifiers))
            for identifier in identifiers:
                self.links.append({identifier: Trust.ASSERTED})
                self.into.append(len(self.into))
            return multiple(*made)
        assert self.graph.new_customer() == len(self.into)
        self.links.append({})
        self.into.append(len(self.into))
        return len(self.into) - 1

    @rule(customer=customers, identifier=_idents, trust=st.sampled_from(list(Trust)))
    def link(self, customer: int, identifier: Identifier, trust: Trust) -> None:
        root = self.root(customer)
        held = self.held(root)
        owner = self.owner(identifier)
        if owner is not None and self.root(owner) != root:
            with pytest.raises(PolicyViolation, match="belongs to"):
                self.graph.link(customer, identifier, trust=trust)
            return
        after = dict(held)
        after[identifier] = max(trust, held.get(identifier, trust))
        if _POLICY.is_blocked(identifier) or self.violations(after):
            with pytest.raises(PolicyViolation):
                self.graph.link(customer, identifier, trust=trust)
            return
        self.graph.link(customer, identifier, trust=trust)
        if owner is None:
            self.links[root][identifier] = trust
        else:
            self.links[owner][identifier] = max(trust, self.links[owner][identifier])

    @rule(identifier=_idents)
    def unlink(self, identifier: Identifier) -> None:
        owner = self.owner(identifier)
        if owner is None:
            with pytest.raises(NotFound):
                self.graph.unlink(identifier)
            return
        assert self.graph.unlink(identifier) == owner
        del self.links[owner][identifier]

    @rule(a=customers, b=customers)
    def merge(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        union = {**self.held(ra), **self.held(rb)}
        if ra == rb or self.violations(union):
            with pytest.raises(PolicyViolation):
                self.graph.merge(a, b)
            return
        survivor = self.graph.merge(a, b)
        assert survivor == min((ra, rb), key=self.survivor_key)
        self.into[ra if survivor == rb else rb] = survivor

    @rule(a=customers, b=customers)
    def merge_then_unmerge(self, a: int, b: int) -> None:
        """unmerge(merge(x)) gives back x."""
        before = self.partition()
        if self.graph.merge_violations(a, b):
            return
        survivor = self.graph.merge(a, b)
        absorbed = self.root(b) if survivor == self.root(a) else self.root(a)
        assert self.graph.unmerge(absorbed) == survivor
        assert self.partition() == before

    @precondition(lambda self: any(self.into[c] != c for c in range(len(self.into))))
    @rule(data=st.data())
    def unmerge(self, data: st.DataObject) -> None:
        merged = [c for c in range(len(self.into)) if self.into[c] != c]
        c = data.draw(st.sampled_from(merged))
        assert self.graph.unmerge(c) == self.into[c]
        self.into[c] = c

    # -- what must hold after every step
    def partition(self) -> dict[Identifier, tuple[int | None, Trust | None]]:
        return {
            i: (self.graph.customer_of(i), self.graph.trust_of(i))
            for links in self.links
            for i in links
        }

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.graph.customers == len(self.into)
        assert list(self.graph.survivors()) == [
            c for c in range(len(self.into)) if self.root(c) == c
        ]
        assert len(self.graph) == sum(len(links) for links in self.links)
        for c in range(len(self.into)):
            root = self.root(c)
            assert self.graph.survivor_of(c) == root
            assert self.graph.merged_into(c) == (None if self.into[c] == c else self.into[c])
            if root == c:
                held = self.held(root)
                assert self.graph.identifiers_of(c) == sorted(held.items())
                assert not self.violations(held)
                assert not any(_POLICY.is_blocked(i) for i in held)
                for identifier, trust in held.items():
                    assert self.graph.customer_of(identifier) == root
                    assert self.graph.trust_of(identifier) is trust


class MostIdentifiersMachine(GraphMachine):
    survivor_rule = "most_identifiers"


class MostTrustedMachine(GraphMachine):
    survivor_rule = "most_trusted"


_MACHINE_SETTINGS = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestGraphMachine = GraphMachine.TestCase
TestGraphMachine.settings = _MACHINE_SETTINGS
TestMostIdentifiersMachine = MostIdentifiersMachine.TestCase
TestMostIdentifiersMachine.settings = _MACHINE_SETTINGS
TestMostTrustedMachine = MostTrustedMachine.TestCase
TestMostTrustedMachine.settings = _MACHINE_SETTINGS


def test_capacity_sizes_the_table_once_and_is_checked() -> None:
    graph = IdentityGraph(capacity=10_000)
    table = graph._table  # the point of capacity: no rehash, so this table stays
    graph.add_customers(member(i) for i in range(5_000))
    assert graph._table is table
    graph.add_customers(member(i) for i in range(5_000, 12_000))  # grows past it
    assert graph.customer_of(member(11_999)) == 11_999
    assert graph.customer_of(member(0)) == 0
    with pytest.raises(ValidationError, match="capacity"):
        IdentityGraph(capacity=-1)
