"""Stateful property test: after any sequence of messages, links, unlinks, merges and
unmerges, the customers partition the identifiers exactly as a simple reference model
says (an unmerge gives back only the identifiers the survivor still holds because of the
merge: none unlinked, taken over or linked again since); no customer ever crosses a
blocklisted value, a per-kind limit or two verified account ids; unmerge(merge(x)) gives
back x; a claim never discloses history; and a claim never captures a holder (no message
presented with an asserted or verified identifier lands with a customer who holds it
only as a claim: the identifier is taken over).

Runs against the memory store and SQLite.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import convthread as ct
from convthread.codec import decode_customer_state
from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.merge import MergePolicy
from convthread.domain.model import Content, Identifier, Inbound, SenderIdentifier, Trust
from convthread.domain.thread import CustomerState
from convthread.errors import InvalidTransition, NotFound, PolicyViolation
from convthread.ports import Store
from convthread.service._core import NS_CUSTOMER, NS_IDENT, decode_identref
from convthread.stores import MemoryStore, SQLiteStore
from tests.test_identity import projection

C, A, V = Trust.CLAIMED, Trust.ASSERTED, Trust.VERIFIED
POOL: list[Identifier] = [
    ct.phone("+14155552671"),
    ct.phone("+14155552672"),
    ct.phone("+14155552673"),
    ct.email("ann@example.com"),
    ct.email("bob@example.com"),
    ct.email("cat@example.com"),
    ct.account("acme", "1001"),
    ct.account("acme", "1002"),
    ct.email("noreply@shop.example"),  # blocklisted by the default patterns
]
POLICY = MergePolicy(max_per_kind={"phone": 2, "email": 2})
LIMITS = {"phone": 2, "email": 2}

idents = st.sampled_from(range(len(POOL)))
trusts = st.sampled_from([C, A, V])


def _topic(inbound: Inbound) -> str | None:
    return inbound.subject or None


class Model:
    """The reference: who owns which identifier at which trust; nothing else."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.trust: dict[str, Trust] = {}
        self.kind: dict[str, str] = {i.key: i.kind for i in POOL}
        self.live: dict[str, int] = {}  # customer -> creation order
        self.merged: dict[str, str] = {}  # absorbed -> survivor
        # active merges: survivor, absorbed, and the keys an unmerge would give back
        self.merges: dict[str, tuple[str, str, set[str]]] = {}
        self.order = itertools.count()

    def current(self) -> list[str]:
        """Customers not merged into another (at least one exists after the first step)."""
        return [c for c in self.live if c not in self.merged]

    def holdings(self, cid: str) -> dict[str, Trust]:
        return {k: self.trust[k] for k, c in self.owner.items() if c == cid}

    def fits(self, holdings: dict[str, Trust]) -> bool:
        kinds = Counter(self.kind[k] for k in holdings)
        verified_accounts = sum(
            1 for k, t in holdings.items() if self.kind[k] == "account" and t is V
        )
        return all(kinds[k] <= n for k, n in LIMITS.items()) and verified_accounts <= 1

    def can_hold(self, cid: str | None, key: str, trust: Trust) -> bool:
        current = self.holdings(cid) if cid else {}
        if key in current and current[key] > trust:
            trust = current[key]
        return self.fits({**current, key: trust})

    def survivor(self, a: str, b: str) -> tuple[str, str]:
        return (a, b) if (self.live[a], a) <= (self.live[b], b) else (b, a)

    def lose(self, key: str) -> None:
        """``key`` left its customer (unlinked, or taken over by another customer): no
        unmerge gives it back, even if it is linked to the survivor again later."""
        for _s, _x, moved in self.merges.values():
            moved.discard(key)

    def do_merge(self, merge_id: str, a: str, b: str) -> tuple[str, str]:
        s, x = self.survivor(a, b)
        moved = {k for k, c in self.owner.items() if c == x}
        for k in moved:
            self.owner[k] = s
        self.merges[merge_id] = (s, x, moved)
        self.merged[x] = s
        return s, x


class IdentityMachine(RuleBasedStateMachine):
    store_kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.tmp: str | None = None
        store: Store
        if self.store_kind == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="ct-identity-")
            store = SQLiteStore(Path(self.tmp) / "s.db", synchronous="NORMAL")
        else:
            store = MemoryStore()
        self.store = store
        self.clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
        self.convs = ct.Conversations(
            store,
            clock=self.clock,
            ids=ct.SequentialIds(),
            continuity=ContinuityPolicy(topic_extractor=_topic),
            merge_policy=POLICY,
        )
        self.model = Model()
        self.n = itertools.count(1)
        self.all_customers: list[str] = []
        self.relinkable: set[str] = set()  # unlinked after a merge had moved them

    def teardown(self) -> None:
        self.store.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers

    def _new_customer(self, cid: str) -> None:
        self.model.live[cid] = next(self.model.order)
        self.all_customers.append(cid)

    def _expect_ingest(self, sender: list[SenderIdentifier], result_cid: str, new: bool) -> None:
        """Replay the resolution rules on the model (merges, upgrades, links)."""
        m = self.model
        usable = [s for s in sender if not POLICY.is_blocked(s.identifier)]
        for _round in range(4):
            known = [s for s in usable if s.identifier.key in m.owner]
            unknown = [s for s in usable if s.identifier.key not in m.owner]

            def tie(s: SenderIdentifier) -> Trust:
                linked = m.trust[s.identifier.key]
                return s.trust if s.trust <= linked else linked

            # A claim never captures a holder: presented asserted or better, held only
            # as a claim: it ties the message to nobody (taken over, or an upgrade).
            proven = {
                s.identifier.key for s in known if s.trust >= A and m.trust[s.identifier.key] is C
            }
            deciding = [s for s in known if s.identifier.key not in proven]
            best = max(deciding, key=lambda s: (tie(s).rank, s.trust.rank), default=None)
            if best is None or (proven and tie(best) < A):
                assert new, "no identifier ties the message to a customer: a new customer"
                self._new_customer(result_cid)
                if proven:
                    event("takeover by a new customer")
                for s in usable:
                    key = s.identifier.key
                    if key in m.owner and key not in proven:
                        continue
                    if m.can_hold(result_cid, key, s.trust):
                        m.lose(key)
                        m.owner[key] = result_cid
                        m.trust[key] = s.trust
                return
            chosen = m.owner[best.identifier.key]
            others = list(
                dict.fromkeys(
                    m.owner[s.identifier.key]
                    for s in deciding
                    if m.owner[s.identifier.key] != chosen
                )
            )
            if others:
                other = others[0]
                ties = [s for s in deciding if m.owner[s.identifier.key] == other]
                strongest = max(ties, key=lambda s: tie(s).rank)
                union = {**m.holdings(chosen), **m.holdings(other)}
                weakest = min(tie(best), tie(strongest))
                if m.fits(union) and weakest >= A:
                    merge_id = self._merge_id_for(chosen, other)
                    m.do_merge(merge_id, chosen, other)
                    event("automatic merge")
                    continue
                event("no automatic merge (trust or limit)")
            assert not new and result_cid == chosen
            work = m.holdings(chosen)
            cap = tie(best)  # nothing is linked or raised above the message's own tie
            for s in known:
                key = s.identifier.key
                trust = min(s.trust, cap)
                rises = m.owner[key] == chosen and trust > m.trust[key]
                if rises and m.fits({**work, key: trust}):
                    work[key] = trust
                    m.trust[key] = trust
            for s in known:
                key = s.identifier.key
                if key not in proven or m.owner[key] == chosen:
                    continue
                trust = min(s.trust, cap)
                if m.fits({**work, key: trust}):
                    event("takeover by a known customer")
                    m.lose(key)
                    work[key] = trust
                    m.owner[key] = chosen
                    m.trust[key] = trust
            if not others:
                for s in unknown:
                    key = s.identifier.key
                    trust = min(s.trust, cap)
                    if m.fits({**work, key: trust}):
                        work[key] = trust
                        m.owner[key] = chosen
                        m.trust[key] = trust
            return
        raise AssertionError("resolution did not settle")

    def _merge_id_for(self, a: str, b: str) -> str:
        """The merge the service just made between a and b (read from the ledger)."""
        view = self.convs.customer(a)
        for _seq, ev in reversed(view.events):
            if getattr(ev, "merge_id", None) and {
                getattr(ev, "survivor", ""),
                getattr(ev, "absorbed", ""),
            } == {a, b}:
                return str(ev.merge_id)  # type: ignore[union-attr]
        raise AssertionError(f"no merge event between {a} and {b}")

    # -- rules

    @initialize(i=idents, t=trusts)
    def first_message(self, i: int, t: Trust) -> None:
        self.message([(i, t)], "")

    @rule(
        sender=st.lists(
            st.tuples(idents, trusts), min_size=1, max_size=2, unique_by=lambda p: p[0]
        ),
        topic=st.sampled_from(["", "order-1"]),
    )
    def message(self, sender: list[tuple[int, Trust]], topic: str) -> None:
        self.clock.advance(minutes=1)
        presented = [SenderIdentifier(POOL[i], t) for i, t in sender]
        claimed_before = {
            s.identifier.key
            for s in presented
            if (owner := self.convs.find_customer(s.identifier)) is not None
            and self.convs.customer(owner).state.trust_of(s.identifier) is C
        }
        result = self.convs.ingest(
            Inbound(
                channel="sms",
                provider_message_id=f"m{next(self.n)}",
                sender=tuple(presented),
                content=Content(text=f"message {self.n}"),
                sent_at=self.clock.now(),
                subject=topic,
            )
        )
        self.check_no_claim_captures_a_holder(presented, claimed_before, result.customer_id)
        self._expect_ingest(presented, result.customer_id, result.new_customer)
        # disclosure: history only through an asserted-or-better presented and linked id
        history = self.convs.history_for(result)
        shown = result.event.sender
        linked = self.model.trust.get(shown.identifier.key)
        if self.model.owner.get(shown.identifier.key) != result.customer_id:
            linked = None
        allowed = linked is not None and min(shown.trust, linked) >= A
        assert (history.scope == "history") == allowed
        if not allowed:
            assert [t.id for t in history.threads] == [result.thread_id]
            assert all(e.seq >= result.seq for e in history.threads[0].events)
        if shown.trust is C:
            assert history.scope == "current_thread"

    def check_no_claim_captures_a_holder(
        self, presented: list[SenderIdentifier], claimed_before: set[str], customer_id: str
    ) -> None:
        """No message presented with an asserted or verified identifier lands with a
        customer who holds that identifier only as a claim (a claim made before the
        message: ``claimed_before``; an unknown identifier that the message itself links,
        capped at a claim that tied it, is not a capture). Only exception: another
        identifier of the message ties it to that customer at asserted or better and the
        policy refused to raise the claim: the claim did not capture the message."""
        state = self.convs.customer(customer_id).state
        for s in presented:
            if s.trust < A or s.identifier.key not in claimed_before:
                continue
            if state.trust_of(s.identifier) is not C:
                continue
            tied_otherwise = any(
                o is not s and min(o.trust, state.trust_of(o.identifier) or C) >= A
                for o in presented
            )
            refused = POLICY.link_refusal(state.identifiers, s.identifier, s.trust)
            assert tied_otherwise and refused is not None, (
                f"a message presenting {s.identifier} ({s.trust.value}) landed with "
                f"{customer_id}, who holds it only as a claim"
            )
            event("claim kept: raising it was refused, tied by another identifier")

    @rule(data=st.data(), i=idents, t=trusts)
    def link(self, data: st.DataObject, i: int, t: Trust) -> None:
        m = self.model
        cid = data.draw(st.sampled_from(sorted(m.current())))
        ident = POOL[i]
        key = ident.key
        owner = m.owner.get(key)
        # an agent linking at asserted or better takes over another customer's claim
        takeover = owner not in (None, cid) and t >= A and m.trust.get(key) is C
        expect_ok = (
            not POLICY.is_blocked(ident)
            and (owner in (None, cid) or takeover)
            and m.can_hold(cid, key, t)
        )
        self.clock.advance(seconds=5)
        if expect_ok:
            self.convs.link(cid, ident, trust=t, by="agent:test")
            if key in self.relinkable and any(s == cid for s, _x, _k in m.merges.values()):
                event("linked again to a survivor after a merge moved and unlinked it")
            if takeover:
                event("takeover by an agent's link")
                m.lose(key)
            if owner != cid or t > m.trust[key]:
                m.owner[key] = cid
                m.trust[key] = t
        else:
            with pytest.raises(PolicyViolation):
                self.convs.link(cid, ident, trust=t)

    @rule(i=idents)
    def unlink(self, i: int) -> None:
        key = POOL[i].key
        if key in self.model.owner:
            assert self.convs.unlink(POOL[i]) == self.model.owner.pop(key)
            del self.model.trust[key]
            if any(key in moved for _s, _x, moved in self.model.merges.values()):
                event("unlinked an identifier a merge moved")
                self.relinkable.add(key)
            self.model.lose(key)
        else:
            with pytest.raises(NotFound):
                self.convs.unlink(POOL[i])

    @precondition(lambda self: any(moved for _s, _x, moved in self.model.merges.values()))
    @rule(data=st.data(), t=trusts)
    def unlink_then_link_after_a_merge(self, data: st.DataObject, t: Trust) -> None:
        """Unlink an identifier that an active merge moved, then perhaps link it again
        (to the survivor or to another customer): no unmerge gives it back after that."""
        m = self.model
        due = sorted(k for _s, _x, moved in m.merges.values() for k in moved)
        key = data.draw(st.sampled_from(due))
        ident = next(i for i in POOL if i.key == key)
        self.unlink(POOL.index(ident))
        to = data.draw(st.sampled_from([None, *sorted(m.current())]))
        if to is not None:
            self.link(_Draws([to]), POOL.index(ident), t)

    @precondition(lambda self: len(self.all_customers) >= 2)
    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        m = self.model
        a = data.draw(st.sampled_from(self.all_customers))
        b = data.draw(st.sampled_from(self.all_customers))
        self.clock.advance(seconds=5)
        if a == b or a in m.merged or b in m.merged:
            with pytest.raises(InvalidTransition):
                self.convs.merge(a, b)
            return
        union = {**m.holdings(a), **m.holdings(b)}
        if not m.fits(union):
            with pytest.raises(PolicyViolation):
                self.convs.merge(a, b)
            return
        result = self.convs.merge(a, b, by="agent:test")
        event("manual merge")
        s, x = m.do_merge(result.merge_id, a, b)
        assert (result.survivor, result.absorbed) == (s, x)

    @precondition(lambda self: bool(self.model.merges))
    @rule(data=st.data())
    def unmerge(self, data: st.DataObject) -> None:
        m = self.model
        merge_id = data.draw(st.sampled_from(sorted(m.merges)))
        s, x, moved = m.merges[merge_id]
        self.clock.advance(seconds=5)
        if s in m.merged:
            with pytest.raises(InvalidTransition):
                self.convs.unmerge(merge_id)
            return
        undone = self.convs.unmerge(merge_id)
        event("unmerge")
        for k in moved:
            assert m.owner.get(k) == s, "a key due back is still the survivor's"
            m.owner[k] = x
        assert {i.key for i, _t in undone.identifiers} == moved
        del m.merges[merge_id]
        del m.merged[x]

    @precondition(lambda self: len(self.model.current()) >= 2)
    @rule(data=st.data())
    def merge_then_unmerge_gives_back_the_state(self, data: st.DataObject) -> None:
        m = self.model
        pair = data.draw(st.permutations(sorted(m.current())))
        a, b = pair[0], pair[1]
        if not m.fits({**m.holdings(a), **m.holdings(b)}):
            return
        before = projection(self.store)
        event("merge-unmerge round trip")
        result = self.convs.merge(a, b)
        self.convs.unmerge(result.merge_id)
        assert projection(self.store) == before

    # -- invariants

    def _states(self) -> dict[str, CustomerState]:
        return {cid: decode_customer_state(it.value) for cid, it in self.store.scan(NS_CUSTOMER)}

    @invariant()
    def partition_matches_the_model(self) -> None:
        m = self.model
        owners = {k: decode_identref(it.value).customer_id for k, it in self.store.scan(NS_IDENT)}
        assert owners == m.owner
        assert self.convs.find_customer(POOL[0]) == m.owner.get(POOL[0].key)
        states = self._states()
        assert sorted(states) == sorted(self.all_customers)
        for cid, state in states.items():
            expected = m.holdings(cid) if cid not in m.merged else {}
            actual = {k: t for k, (_i, t) in state.identifiers.items()}
            assert actual == expected, cid
            assert state.merged_into == m.merged.get(cid)

    @invariant()
    def no_customer_crosses_a_hard_rule(self) -> None:
        for state in self._states().values():
            assert POLICY.violations(state.identifiers.values()) == ()
            assert not any(POLICY.is_blocked(i) for i, _t in state.identifiers.values())


class SQLiteIdentityMachine(IdentityMachine):
    store_kind = "sqlite"


TestIdentityMemory = IdentityMachine.TestCase
TestIdentityMemory.settings = settings(max_examples=250, stateful_step_count=30, deadline=None)
TestIdentitySQLite = SQLiteIdentityMachine.TestCase
TestIdentitySQLite.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_the_model_can_fail() -> None:
    """The invariants catch a service that forgets an identifier."""
    machine = IdentityMachine()
    try:
        machine.first_message(0, A)
        machine.partition_matches_the_model()
        machine.model.owner.pop(POOL[0].key)
        with pytest.raises(AssertionError):
            machine.partition_matches_the_model()
    finally:
        machine.teardown()


def test_the_takeover_invariant_fails_without_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim capturing a holder is caught: with the takeover disabled (no identifier is
    ever considered proven), the owner's message lands with the claimant and the
    invariant fails; with it, the same steps pass."""
    import convthread.domain.identity as identity_domain
    import convthread.service._identity._resolve as identity_service

    def steps(machine: IdentityMachine) -> None:
        machine.first_message(3, A)  # email:ann@example.com, asserted: customer 1
        machine.message([(3, A), (0, C)], "")  # customer 1 types phone 0 (a claim)
        machine.message([(0, A)], "")  # the phone's holder writes: asserted

    monkeypatch.setattr(sys.modules[__name__], "event", lambda *_a: None)  # outside a test
    machine = IdentityMachine()
    try:
        steps(machine)
        machine.partition_matches_the_model()
    finally:
        machine.teardown()
    monkeypatch.setattr(identity_domain, "proven_claims", lambda *_a: [])
    monkeypatch.setattr(identity_service, "proven_claims", lambda *_a: [])
    machine = IdentityMachine()
    try:
        with pytest.raises(AssertionError, match="holds it only as a claim"):
            steps(machine)
    finally:
        machine.teardown()


def test_the_unmerge_rule_fails_without_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unmerge that gave back every identifier the survivor holds (the rule before
    unlinks were respected) is caught: merge, unlink the absorbed customer's phone, link
    it to the survivor again, unmerge: the model says the phone stays."""
    import convthread.service._identity._unmerge as identity_service

    def steps(machine: IdentityMachine) -> None:
        machine.first_message(0, A)  # phone 0: customer 1 (oldest)
        machine.message([(1, A)], "")  # phone 1: customer 2
        data = _Draws([machine.all_customers[0], machine.all_customers[1]])
        machine.merge(data)  # customer 2 into customer 1
        machine.unlink(1)
        machine.link(_Draws([machine.all_customers[0]]), 1, A)
        machine.unmerge(_Draws([next(iter(machine.model.merges))]))
        machine.partition_matches_the_model()

    monkeypatch.setattr(sys.modules[__name__], "event", lambda *_a: None)  # outside a test
    machine = IdentityMachine()
    try:
        steps(machine)
        assert machine.convs.find_customer(POOL[1]) == machine.all_customers[0]
    finally:
        machine.teardown()
    monkeypatch.setattr(
        identity_service,
        "unmerge_keys",
        lambda merge, _later: frozenset(i.key for i, _t in merge.identifiers),
    )
    machine = IdentityMachine()
    try:
        with pytest.raises(AssertionError):
            steps(machine)
    finally:
        machine.teardown()


class _Draws:
    """Stands in for ``st.data()`` outside Hypothesis: hands out the given values."""

    def __init__(self, values: list[str]) -> None:
        self.values = list(values)

    def draw(self, _strategy: object) -> str:
        return self.values.pop(0)
