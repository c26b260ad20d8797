"""Identity resolution through the service: automatic merges and suggestions under the
merge policy, blocklist and limits, the merge ledger (explain, dry run, exact unmerge),
verification by one-time code, and disclosure by trust. Memory and SQLite."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import convthread as ct
from convthread._heads import state_of
from convthread.codec import decode_customer_state
from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.events import (
    CustomerMerged,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    MergeSuggested,
    MessageReceived,
    ThreadStatus,
)
from convthread.domain.identity import DisclosurePolicy
from convthread.domain.merge import MergePolicy
from convthread.domain.model import Content, Identifier, Inbound, SenderIdentifier, Trust
from convthread.errors import (
    InvalidTransition,
    NotFound,
    PolicyViolation,
    ValidationError,
    VerificationError,
)
from convthread.ports import Store
from convthread.service._core import (
    NS_CUSTOMER,
    NS_IDENT,
    NS_LATEST,
    NS_OPEN,
    NS_VERIFY,
)
from tests._thread_util import all_heads
from tests.conftest import StoreFactory

A, V, C = Trust.ASSERTED, Trust.VERIFIED, Trust.CLAIMED
PHONE = ct.phone("+14155552671")
PHONE2 = ct.phone("+14155552672")
MAIL = ct.email("ann@example.com")
MAIL2 = ct.email("ann@work.example")


def _topic(inbound: Inbound) -> str | None:
    return inbound.subject or None


class Desk:
    """A service with a manual clock, sequential ids and a subject-as-topic extractor."""

    def __init__(self, store: Store, **kwargs: Any) -> None:
        self.store = store
        self.clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
        self.convs = ct.Conversations(
            store,
            clock=self.clock,
            ids=ct.SequentialIds(),
            continuity=ContinuityPolicy(topic_extractor=_topic),
            **kwargs,
        )
        self._n = itertools.count(1)

    def msg(
        self, channel: str, *sender: tuple[Identifier, Trust], subject: str = "", text: str = "hi"
    ) -> ct.IngestResult:
        self.clock.advance(minutes=1)
        return self.convs.ingest(
            Inbound(
                channel=channel,
                provider_message_id=f"m{next(self._n)}",
                sender=tuple(SenderIdentifier(i, t) for i, t in sender),
                content=Content(text=text),
                sent_at=self.clock.now(),
                subject=subject,
            )
        )


def scan_all(store: Store, ns: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    after = ""
    while True:
        page = store.scan(ns, "", after, 1000)
        out.update((k, it.value) for k, it in page)
        if len(page) < 1000:
            return out
        after = page[-1][0]


def projection(store: Store) -> dict[str, Any]:
    """Who owns what, at which trust; which threads belong to whom, in which status; and
    every pointer and thread index: what unmerge must give back exactly."""
    customers = {}
    for cid, raw in scan_all(store, NS_CUSTOMER).items():
        state = decode_customer_state(raw)
        customers[cid] = (
            sorted((k, t.value) for k, (_i, t) in state.identifiers.items()),
            state.merged_into,
        )
    threads = {}
    heads = all_heads(store)
    for head in heads:
        th = state_of(head)
        threads[th.id] = (th.customer_id, th.status, th.snoozed_until, th.topic)
    return {
        "customers": customers,
        "threads": threads,
        NS_IDENT: scan_all(store, NS_IDENT),
        NS_OPEN: scan_all(store, NS_OPEN),
        NS_LATEST: scan_all(store, NS_LATEST),
        "by customer": sorted((h.customer_id, h.thread_id) for h in heads),
        "by activity": sorted((h.status, h.last_activity, h.thread_id) for h in heads),
    }


@pytest.fixture
def desk(store_factory: StoreFactory) -> Desk:
    return Desk(store_factory())


# --------------------------------------------------------------------------- merges


def test_asserted_on_both_sides_merges_automatically(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))
    assert r1.customer_id != r2.customer_id
    r3 = desk.msg("whatsapp", (PHONE, A), (MAIL, A))
    assert r3.customer_id == r1.customer_id  # the oldest survives
    assert "merged" in r3.resolution.evidence
    convs = desk.convs
    assert convs.find_customer(MAIL) == r1.customer_id
    view = convs.customer(r1.customer_id)
    assert set(view.thread_ids) == {r1.thread_id, r2.thread_id}
    assert view.state.trust_of(MAIL) is A
    absorbed = convs.customer(r2.customer_id)
    assert absorbed.state.merged_into == r1.customer_id
    assert absorbed.state.identifiers == {}
    # both sides recorded the merge
    assert any(isinstance(e, CustomerMerged) for _s, e in absorbed.events)
    assert convs.thread_state(r2.thread_id).customer_id == r1.customer_id


def test_claim_never_merges_it_becomes_a_suggestion(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))
    r3 = desk.msg("webchat", (PHONE, C), (MAIL, A))
    convs = desk.convs
    assert r3.customer_id == r2.customer_id  # the stronger tie decides
    assert convs.find_customer(PHONE) == r1.customer_id
    pending = convs.merge_suggestions()
    assert len(pending) == 1
    s = pending[0]
    assert {s.customer_id, s.other} == {r1.customer_id, r2.customer_id}
    assert "claimed" in s.decision.reason
    assert any(isinstance(e, MergeSuggested) for _q, e in convs.customer(s.customer_id).events)
    # the same evidence again records no second suggestion
    desk.msg("webchat", (PHONE, C), (MAIL, A))
    assert len(convs.merge_suggestions()) == 1
    preview = convs.accept_suggestion(s.id, by="agent:alice", dry_run=True)
    assert preview.dry_run and convs.merge_suggestions() == pending
    result = convs.accept_suggestion(s.id, by="agent:alice")
    assert result.survivor == r1.customer_id
    assert convs.find_customer(MAIL) == r1.customer_id
    assert convs.merge_suggestions() == []
    assert convs.merge_suggestions(status="accepted")[0].by == "agent:alice"
    with pytest.raises(InvalidTransition):
        convs.accept_suggestion(s.id)


def test_rejected_suggestion_is_not_made_again(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))
    desk.msg("webchat", (PHONE, C), (MAIL, C))
    (s,) = desk.convs.merge_suggestions()
    rejected = desk.convs.reject_suggestion(s.id, by="agent:bo")
    assert rejected.status == "rejected"
    desk.msg("webchat", (PHONE, C), (MAIL, C))
    assert desk.convs.merge_suggestions() == []
    assert desk.convs.find_customer(PHONE) == r1.customer_id
    assert desk.convs.find_customer(MAIL) == r2.customer_id


def test_blocklisted_values_are_never_linked_nor_merged_on(store_factory: StoreFactory) -> None:
    shop = ct.phone("+14155550100")
    desk = Desk(store_factory(), merge_policy=MergePolicy(blocked=frozenset({shop})))
    noreply = ct.email("no-reply@shop.example")
    r1 = desk.msg("sms", (PHONE, A), (shop, A))
    r2 = desk.msg("sms", (PHONE2, A), (shop, A))
    r3 = desk.msg("email", (MAIL, A), (noreply, A))
    r4 = desk.msg("email", (noreply, A))
    r5 = desk.msg("email", (noreply, A))
    ids = {r.customer_id for r in (r1, r2, r3, r4, r5)}
    assert len(ids) == 5  # nobody merged, nobody resolved through a shared value
    assert desk.convs.find_customer(shop) is None
    assert desk.convs.find_customer(noreply) is None
    assert "blocklisted" in r2.resolution.reason
    with pytest.raises(PolicyViolation, match="blocklisted"):
        desk.convs.link(r1.customer_id, shop, trust=V)
    with pytest.raises(PolicyViolation):
        desk.convs.start_verification(noreply, customer_id=r3.customer_id)
    all_zero = Identifier("phone", "+12000000000")
    assert MergePolicy().is_blocked(all_zero)


def test_per_kind_limits_refuse_links_and_merges(store_factory: StoreFactory) -> None:
    desk = Desk(store_factory(), merge_policy=MergePolicy(max_per_kind={"phone": 1}))
    r1 = desk.msg("sms", (PHONE, A), (PHONE2, A))
    assert desk.convs.find_customer(PHONE2) is None
    assert "limit 1" in r1.resolution.reason
    r2 = desk.msg("sms", (PHONE2, A))
    assert r2.customer_id != r1.customer_id
    with pytest.raises(PolicyViolation, match="phone identifiers"):
        desk.convs.merge(r1.customer_id, r2.customer_id)
    before = projection(desk.store)
    r3 = desk.msg("sms", (PHONE, A), (PHONE2, A))  # asserted both sides, but the limit
    after = projection(desk.store)
    assert after["customers"] == before["customers"]
    assert r3.customer_id == r1.customer_id
    assert desk.convs.merge_suggestions() == []  # refused: nothing for an agent to accept
    assert "cannot be merged" in r3.resolution.reason


def test_two_verified_account_ids_never_merge(desk: Desk) -> None:
    acc1, acc2 = ct.account("acme", "1001"), ct.account("acme", "1002")
    r1 = desk.msg("app", (acc1, V), (PHONE, V))
    r2 = desk.msg("app", (acc2, V))
    r3 = desk.msg("app", (acc2, V), (PHONE, V))  # verified on both sides
    assert r3.customer_id in (r1.customer_id, r2.customer_id)
    assert desk.convs.find_customer(acc1) != desk.convs.find_customer(acc2)
    with pytest.raises(PolicyViolation, match="verified account"):
        desk.convs.merge(r1.customer_id, r2.customer_id)
    # a second verified account cannot be linked either
    with pytest.raises(PolicyViolation, match="verified account"):
        desk.convs.link(r1.customer_id, ct.account("acme", "1003"), trust=V)
    desk.convs.link(r1.customer_id, ct.account("acme", "1003"), trust=A)


def test_topic_collision_and_exact_unmerge(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A), subject="order-1")
    r2 = desk.msg("email", (MAIL, C), subject="order-1")
    r2b = desk.msg("email", (MAIL, C), subject="order-2")
    desk.convs.snooze(r2.thread_id, desk.clock.now() + timedelta(hours=2))
    before = projection(desk.store)
    preview = desk.convs.merge(r1.customer_id, r2.customer_id, by="agent:alice", dry_run=True)
    assert projection(desk.store) == before  # the dry run wrote nothing
    assert preview.dry_run and preview.suspended[0].thread_id == r2.thread_id
    result = desk.convs.merge(r1.customer_id, r2.customer_id, by="agent:alice")
    assert result.survivor == r1.customer_id
    assert result.threads == preview.threads and result.pointers == preview.pointers
    # one live thread per customer and topic
    live = [
        t for t in desk.convs.customer_threads(r1.customer_id) if t.is_open and t.topic == "order-1"
    ]
    assert [t.id for t in live] == [r1.thread_id]
    merged_thread = desk.convs.thread_state(r2.thread_id)
    assert merged_thread.status is ThreadStatus.RESOLVED
    assert desk.convs.thread_state(r2b.thread_id).customer_id == r1.customer_id
    # a message on the topic continues the survivor's thread
    r4 = desk.msg("sms", (PHONE, A), subject="order-2")
    assert r4.thread_id == r2b.thread_id
    undone = desk.convs.unmerge(result.merge_id, by="agent:alice", reason="not the same person")
    assert undone.restored == r2.customer_id
    after = projection(desk.store)
    assert after["customers"] == before["customers"]
    assert after[NS_IDENT] == before[NS_IDENT]
    assert after[NS_OPEN] == before[NS_OPEN]
    assert after["by customer"] == before["by customer"]
    assert after["threads"] == before["threads"]
    restored = desk.convs.thread_state(r2.thread_id)
    assert restored.status is ThreadStatus.SNOOZED
    assert restored.snoozed_until == before["threads"][r2.thread_id][2]
    with pytest.raises(InvalidTransition):
        desk.convs.unmerge(result.merge_id)


def test_unmerge_restores_exact_state_immediately(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A), subject="a")
    desk.msg("sms", (PHONE, A), subject="b")
    r2 = desk.msg("email", (MAIL, V), (MAIL2, C), subject="a")
    desk.msg("email", (MAIL, V), subject="c")
    before = projection(desk.store)
    m = desk.convs.merge(r2.customer_id, r1.customer_id)
    assert projection(desk.store) != before
    desk.convs.unmerge(m.merge_id)
    assert projection(desk.store) == before


def test_unmerge_refused_while_survivor_is_merged_further(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("sms", (PHONE2, A))
    r3 = desk.msg("email", (MAIL, A))
    m1 = desk.convs.merge(r1.customer_id, r2.customer_id)
    m2 = desk.convs.merge(r1.customer_id, r3.customer_id)
    assert m1.survivor == m2.survivor == r1.customer_id
    m3_source = desk.msg("email", (MAIL2, A))
    m3 = desk.convs.merge(m3_source.customer_id, r1.customer_id)
    assert m3.survivor == r1.customer_id  # oldest survives
    with pytest.raises(InvalidTransition):
        desk.convs.merge(r2.customer_id, r3.customer_id)  # r2 was merged
    with pytest.raises(NotFound):
        desk.convs.unmerge("mg_9999")
    desk.convs.unmerge(m2.merge_id)
    assert desk.convs.find_customer(MAIL) == r3.customer_id
    assert desk.convs.find_customer(PHONE2) == r1.customer_id


def test_unmerge_with_survivor_merged_since_is_refused(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("sms", (PHONE2, A))
    r3 = desk.msg("email", (MAIL, A))
    inner = desk.convs.merge(r2.customer_id, r3.customer_id)  # r2 survives, absorbs r3
    outer = desk.convs.merge(r1.customer_id, r2.customer_id)  # r1 absorbs r2
    with pytest.raises(InvalidTransition, match="undo that merge first"):
        desk.convs.unmerge(inner.merge_id)
    desk.convs.unmerge(outer.merge_id)
    desk.convs.unmerge(inner.merge_id)
    assert desk.convs.find_customer(MAIL) == r3.customer_id


def _ann_and_bob(desk: Desk) -> tuple[str, str, ct.MergeResult]:
    """Ann (phone, e-mail) absorbs Bob (second phone, second e-mail); Ann is older."""
    ann = desk.msg("sms", (PHONE, A), (MAIL, A)).customer_id
    bob = desk.msg("sms", (PHONE2, A), (MAIL2, A)).customer_id
    merged = desk.convs.merge(ann, bob, by="agent:alice")
    assert (merged.survivor, merged.absorbed) == (ann, bob)
    return ann, bob, merged


def test_unmerge_keeps_an_identifier_unlinked_and_linked_again_after_the_merge(
    desk: Desk,
) -> None:
    ann, bob, merged = _ann_and_bob(desk)
    assert desk.convs.unlink(PHONE2, by="agent:alice") == ann
    desk.convs.link(ann, PHONE2, trust=A, by="agent:alice")
    undone = desk.convs.unmerge(merged.merge_id)
    assert desk.convs.find_customer(PHONE2) == ann
    assert desk.convs.find_customer(MAIL2) == bob
    assert [i for i, _t in undone.identifiers] == [MAIL2]
    assert PHONE2.key in desk.convs.customer(ann).state.identifiers
    assert desk.convs.customer(bob).state.identifiers.keys() == {MAIL2.key}


def test_unmerge_does_not_bring_back_an_identifier_unlinked_after_the_merge(
    desk: Desk,
) -> None:
    ann, bob, merged = _ann_and_bob(desk)
    desk.convs.unlink(PHONE2, by="agent:alice")
    desk.convs.unmerge(merged.merge_id)
    assert desk.convs.find_customer(PHONE2) is None
    assert PHONE2.key not in desk.convs.customer(ann).state.identifiers
    assert PHONE2.key not in desk.convs.customer(bob).state.identifiers
    assert desk.convs.find_customer(MAIL2) == bob


def test_unmerge_keeps_an_identifier_that_came_back_with_another_customer(
    desk: Desk,
) -> None:
    ann, _bob, merged = _ann_and_bob(desk)
    desk.convs.unlink(PHONE2)
    cat = desk.msg("sms", (PHONE2, A)).customer_id  # a new customer holds it
    later = desk.convs.merge(ann, cat)  # and is merged into Ann: a link after the merge
    desk.convs.unmerge(merged.merge_id)
    assert desk.convs.find_customer(PHONE2) == ann
    desk.convs.unmerge(later.merge_id)
    assert desk.convs.find_customer(PHONE2) == cat


@pytest.mark.parametrize("relinked_while_away", [False, True])
def test_unmerge_after_the_survivor_was_merged_away_and_back(
    desk: Desk, relinked_while_away: bool
) -> None:
    old = desk.msg("email", (ct.email("old@example.com"), A)).customer_id  # oldest
    ann, bob, merged = _ann_and_bob(desk)
    desk.convs.link(ann, PHONE2, trust=V, by="agent:alice")  # a raise, not a new link
    away = desk.convs.merge(old, ann)
    assert away.survivor == old
    if relinked_while_away:
        desk.convs.unlink(PHONE2)
        desk.convs.link(old, PHONE2, trust=A)
    desk.convs.unmerge(away.merge_id)
    undone = desk.convs.unmerge(merged.merge_id)
    if relinked_while_away:
        assert desk.convs.find_customer(PHONE2) == old
        assert PHONE2 not in dict(undone.identifiers)
    else:
        assert dict(undone.identifiers)[PHONE2] is V
        assert desk.convs.find_customer(PHONE2) == bob
    assert desk.convs.find_customer(MAIL2) == bob


def test_explain_gives_the_chain(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, C))
    v = desk.convs.start_verification(MAIL, by="agent:alice")
    desk.convs.confirm_verification(v.verification_id, v.code)
    m = desk.convs.merge(r1.customer_id, r2.customer_id, by="agent:alice", reason="same order")
    ex = desk.convs.explain(ct.email("ANN@example.com"))
    assert ex.customer_id == r1.customer_id and ex.trust is V
    kinds = [type(s.event).__name__ for s in ex.steps]
    assert kinds == ["IdentifierLinked", "IdentifierVerified", "CustomerMerged"]
    assert [s.customer_id for s in ex.steps] == [r2.customer_id, r2.customer_id, r1.customer_id]
    linked = ex.steps[0].event
    assert isinstance(linked, IdentifierLinked) and linked.evidence.channel == "email"
    assert "same order" in ex.render()
    desk.convs.unmerge(m.merge_id)
    ex2 = desk.convs.explain(MAIL)
    assert ex2.customer_id == r2.customer_id
    assert [type(s.event).__name__ for s in ex2.steps][-1] == "CustomerUnmerged"
    nobody = desk.convs.explain(ct.email("nobody@example.com"))
    assert nobody.customer_id is None and nobody.steps == ()


def test_link_and_unlink(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))
    state = desk.convs.link(r1.customer_id, MAIL2, trust=C, by="agent:alice")
    assert state.trust_of(MAIL2) is C
    state = desk.convs.link(r1.customer_id, MAIL2, trust=V, by="agent:alice")
    assert state.trust_of(MAIL2) is V
    assert isinstance(desk.convs.customer(r1.customer_id).events[-1][1], IdentifierVerified)
    with pytest.raises(PolicyViolation, match="belongs to customer"):
        desk.convs.link(r1.customer_id, MAIL, trust=A)
    assert desk.convs.unlink(MAIL, by="agent:alice") == r2.customer_id
    assert desk.convs.find_customer(MAIL) is None
    with pytest.raises(NotFound):
        desk.convs.unlink(MAIL)


# --------------------------------------------------------------------------- verification


def test_verification_wrong_code_attempts_expiry_and_single_use(desk: Desk) -> None:
    r1 = desk.msg("webchat", (MAIL, C))
    convs = desk.convs
    v = convs.start_verification(MAIL, attempts=2)
    assert len(v.code) == 6 and v.code.isdigit()
    stored = b"".join(scan_all(desk.store, NS_VERIFY).values())
    assert v.code.encode() not in stored  # only the HMAC is kept
    wrong = "000000" if v.code != "000000" else "111111"
    with pytest.raises(VerificationError, match="1 attempt"):
        convs.confirm_verification(v.verification_id, wrong)
    with pytest.raises(VerificationError, match="used up"):
        convs.confirm_verification(v.verification_id, wrong)
    with pytest.raises(NotFound):
        convs.confirm_verification(v.verification_id, v.code)
    assert convs.customer(r1.customer_id).state.trust_of(MAIL) is C
    v2 = convs.start_verification(MAIL, ttl=timedelta(minutes=5))
    desk.clock.advance(minutes=6)
    with pytest.raises(VerificationError, match="expired"):
        convs.confirm_verification(v2.verification_id, v2.code)
    v3 = convs.start_verification(MAIL)
    done = convs.confirm_verification(v3.verification_id, v3.code)
    assert done.previous is C and done.customer_id == r1.customer_id
    assert convs.customer(r1.customer_id).state.trust_of(MAIL) is V
    with pytest.raises(NotFound):
        convs.confirm_verification(v3.verification_id, v3.code)  # single use
    with pytest.raises(ValidationError):
        convs.start_verification(ct.email("unknown@example.com"))


def test_verification_can_trigger_a_merge_or_a_suggestion(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))  # the address, asserted (a passing DKIM verdict)
    # the SMS session (asserted) proves it controls the e-mail address another customer
    # holds asserted: both sides are proven, so the policy merges them
    v = desk.convs.start_verification(MAIL, customer_id=r1.customer_id, session_trust=A)
    done = desk.convs.confirm_verification(v.verification_id, v.code)
    assert done.merge is not None
    assert {done.merge.survivor, done.merge.absorbed} == {r1.customer_id, r2.customer_id}
    survivor = done.merge.survivor
    assert desk.convs.find_customer(MAIL) == survivor
    assert desk.convs.find_customer(PHONE) == survivor
    assert desk.convs.customer(survivor).state.trust_of(MAIL) is V
    # a claimed session proving control of a verified address: only a suggestion
    r3 = desk.msg("webchat", (MAIL2, C))
    v2 = desk.convs.start_verification(PHONE, customer_id=r3.customer_id, session_trust=C)
    done2 = desk.convs.confirm_verification(v2.verification_id, v2.code)
    assert done2.merge is None and done2.suggestion_id is not None
    assert desk.convs.find_customer(MAIL2) == r3.customer_id
    assert survivor != r3.customer_id


# --------------------------------------------------------------------------- disclosure


def test_a_claim_sees_only_its_own_thread_from_its_message_on(desk: Desk) -> None:
    r1 = desk.msg("sms", (PHONE, A), (MAIL, A), text="my card number is 4111")
    r2 = desk.msg("email", (MAIL, A), subject="refund", text="refund please")
    spy = desk.msg("webchat", (MAIL, C), text="what did I say before?")
    assert spy.customer_id == r1.customer_id
    h = desk.convs.history_for(spy)
    assert h.scope == "current_thread"
    d = desk.convs.disclosure(spy)
    assert (d.scope, d.since, d.thread_id) == ("current_thread", spy.seq, spy.thread_id)
    assert [t.id for t in h.threads] == [spy.thread_id]
    assert all(e.seq >= spy.seq for e in h.threads[0].events)
    texts = [getattr(e.event, "content", Content()).text for t in h.threads for e in t.events]
    assert "my card number is 4111" not in texts
    # asserted: the history
    h2 = desk.convs.history_for(r2)
    assert h2.scope == "history"
    assert {t.id for t in h2.threads} == {r1.thread_id, r2.thread_id}
    # identifier + trust form
    h3 = desk.convs.history_for(MAIL, trust=C)
    assert h3.scope == "current_thread" and h3.threads == ()
    h4 = desk.convs.history_for(PHONE, trust=V)
    assert h4.scope == "history"


def test_presented_asserted_but_linked_claimed_is_still_a_claim(desk: Desk) -> None:
    desk.msg("webchat", (MAIL, C), (PHONE, C), text="typed by someone")
    r2 = desk.msg("email", (MAIL2, A), (PHONE, C))
    h = desk.convs.history_for(PHONE, trust=A)
    assert h.scope == "current_thread"
    assert r2.customer_id
    strict = Desk(desk.store, disclosure=DisclosurePolicy(min_trust=V))
    assert strict.convs.history_for(MAIL2, trust=A).scope == "current_thread"
    with pytest.raises(ValidationError):
        DisclosurePolicy(min_trust=C)
    with pytest.raises(ValidationError):
        MergePolicy(min_auto_trust=C)


# --------------------------------------------------------------------------- async


def test_async_service_has_the_identity_operations() -> None:
    async def main() -> None:
        clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
        convs = ct.AsyncConversations("memory://", clock=clock, ids=ct.SequentialIds())

        def inbound(pid: str, *sender: tuple[Identifier, Trust]) -> Inbound:
            return Inbound(
                channel="sms",
                provider_message_id=pid,
                sender=tuple(SenderIdentifier(i, t) for i, t in sender),
                sent_at=clock.now(),
            )

        r1 = await convs.ingest(inbound("1", (PHONE, A)))
        r2 = await convs.ingest(inbound("2", (MAIL, C)))
        m = await convs.merge(r1.customer_id, r2.customer_id, by="agent:a")
        assert (await convs.explain(MAIL)).customer_id == r1.customer_id
        await convs.unmerge(m.merge_id)
        assert await convs.find_customer(MAIL) == r2.customer_id
        v = await convs.start_verification(MAIL)
        assert (await convs.confirm_verification(v.verification_id, v.code)).previous is C
        assert (await convs.history_for(r1)).scope == "history"
        assert (await convs.disclosure(r1)).scope == "history"
        assert await convs.merge_suggestions() == []
        await convs.link(r1.customer_id, MAIL2, trust=A)
        assert await convs.unlink(MAIL2) == r1.customer_id
        await convs.close()

    asyncio.run(main())


def test_identity_guide_code_runs() -> None:
    """Every ```python block of docs/identity.md, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "identity.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    namespace: dict[str, Any] = {"__name__": "docs_identity"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/identity.md[{i}]", "exec"), namespace)


def test_erasure_finds_every_identity_record_naming_the_customer(desk: Desk) -> None:
    from convthread.service._drivers import run_sync
    from convthread.service._identity import erasure_deletes

    r1 = desk.msg("sms", (PHONE, A))
    r2 = desk.msg("email", (MAIL, A))
    desk.msg("webchat", (PHONE, C), (MAIL, A))  # a suggestion between r1 and r2
    (s,) = desk.convs.merge_suggestions()
    assert s.identifier == MAIL  # the recording customer's own identifier
    desk.convs.start_verification(MAIL)
    other = desk.msg("sms", (PHONE2, A))
    desk.convs.start_verification(PHONE2)
    found = run_sync(desk.store, lambda: erasure_deletes({r2.customer_id}, {MAIL.key}), 0)
    namespaces = sorted(d.ns for d in found)
    assert namespaces == ["suggest", "suggestpair", "verify"]
    found_other = run_sync(
        desk.store, lambda: erasure_deletes({other.customer_id}, {PHONE2.key}), 0
    )
    assert [d.ns for d in found_other] == ["verify"]
    assert r1.customer_id != r2.customer_id


def test_automatic_merge_inside_ingest_many(desk: Desk) -> None:
    def inbound(pid: str, *sender: tuple[Identifier, Trust]) -> Inbound:
        return Inbound(
            channel="sms",
            provider_message_id=pid,
            sender=tuple(SenderIdentifier(i, t) for i, t in sender),
            sent_at=desk.clock.now(),
        )

    results = desk.convs.ingest_many(
        [
            inbound("b1", (PHONE, A)),
            inbound("b2", (MAIL, A)),
            inbound("b3", (PHONE, A), (MAIL, A)),
        ]
    )
    first, second, both = results
    assert first.customer_id != second.customer_id
    assert both.customer_id == first.customer_id
    assert desk.convs.find_customer(MAIL) == first.customer_id
    assert desk.convs.customer(second.customer_id).state.merged_into == first.customer_id


def test_a_claim_cannot_attach_a_stronger_identifier_to_its_customer(desk: Desk) -> None:
    victim = desk.msg("sms", (PHONE, A), (MAIL, A), text="my address is 1 Main St")
    attacker_phone = ct.phone("+14155552679")
    spoof = desk.msg("webchat", (MAIL, C), (attacker_phone, A))
    assert spoof.customer_id == victim.customer_id
    state = desk.convs.customer(victim.customer_id).state
    assert state.trust_of(attacker_phone) is C  # capped at the claim that tied it
    later = desk.msg("sms", (attacker_phone, A))
    # the claim on the victim's record does not capture the phone's holder: it is taken
    # over by a customer of its own, who sees none of the victim's history
    assert later.customer_id != victim.customer_id and later.new_customer
    assert desk.convs.customer(victim.customer_id).state.trust_of(attacker_phone) is None
    seen = desk.convs.history_for(later)
    assert [t.state.id for t in seen.threads] == [later.thread_id]
    assert all(
        "1 Main St" not in (getattr(e.event, "content", None) or Content()).text
        for t in seen.threads
        for e in t.events
    )
    # presented more strongly again: the holder's customer (a known identifier is not
    # raised by itself), and nothing goes back to the victim
    again = desk.msg("sms", (attacker_phone, V))
    assert again.customer_id == later.customer_id
    assert desk.convs.customer(later.customer_id).state.trust_of(attacker_phone) is A
    assert desk.convs.customer(victim.customer_id).state.trust_of(attacker_phone) is None


# --------------------------------------------------------------------------- takeover

OWNER_PHONE = ct.phone("+447911123456")
ATTACKER = ct.handle("twitter", "attacker")


def _texts(views: Any) -> list[str]:
    return [
        e.event.content.text
        for v in views
        for e in v.events
        if isinstance(e.event, MessageReceived)
    ]


def test_a_claim_never_captures_the_holder_of_an_identifier(desk: Desk) -> None:
    convs = desk.convs
    a = desk.msg("twitter", (ATTACKER, A), (OWNER_PHONE, C), text="my number is +447911123456")
    assert convs.customer(a.customer_id).state.trust_of(OWNER_PHONE) is C
    v = desk.msg("whatsapp", (OWNER_PHONE, A), text="hi, this is the real owner")
    # the owner gets a customer and a thread of their own
    assert v.new_customer and v.new_thread
    assert v.customer_id != a.customer_id and v.thread_id != a.thread_id
    assert v.resolution.rule == "new_customer"
    assert v.resolution.reason.startswith(
        f"{OWNER_PHONE} was only claimed by {a.customer_id}; it arrived asserted, so it now "
        "belongs to this customer, a new one; merge with "
    )
    assert v.resolution.evidence["taken_over"] == f"{OWNER_PHONE}<-{a.customer_id}"
    # the phone moved, at the trust it arrived with; A keeps its thread, without the phone
    assert convs.find_customer(OWNER_PHONE) == v.customer_id
    assert convs.customer(v.customer_id).state.trust_of(OWNER_PHONE) is A
    claimant = convs.customer(a.customer_id)
    assert claimant.state.trust_of(OWNER_PHONE) is None
    assert claimant.state.trust_of(ATTACKER) is A
    assert claimant.thread_ids == (a.thread_id,)
    unlinked = [e for _s, e in claimant.events if isinstance(e, IdentifierUnlinked)]
    assert [(e.identifier, e.reason) for e in unlinked] == [
        (
            OWNER_PHONE,
            f"superseded: arrived asserted via whatsapp, message {v.event.provider_message_id}",
        )
    ]
    # a merge suggestion between the two (they may be the same person)
    (suggestion,) = convs.merge_suggestions()
    assert {suggestion.customer_id, suggestion.other} == {a.customer_id, v.customer_id}
    assert suggestion.identifier == OWNER_PHONE
    assert suggestion.decision.rule == "merge_suggested"
    # A's history does not contain the owner's message, neither for A's session nor A's
    # agents; the owner's does not contain A's
    assert "hi, this is the real owner" not in _texts(convs.history_for(a).threads)
    assert "hi, this is the real owner" not in _texts(
        [convs.thread(t) for t in convs.customer(a.customer_id).thread_ids]
    )
    assert _texts(convs.history_for(v).threads) == ["hi, this is the real owner"]
    # a second WhatsApp message continues the owner's thread
    again = desk.msg("whatsapp", (OWNER_PHONE, A), text="are you there?")
    assert (again.customer_id, again.thread_id) == (v.customer_id, v.thread_id)
    assert not again.new_customer and not again.new_thread
    assert len(convs.merge_suggestions()) == 1
    # explain shows the takeover chain: the claim, its supersession, the new link
    why = convs.explain(OWNER_PHONE)
    assert [(s.customer_id, type(s.event).__name__) for s in why.steps] == [
        (a.customer_id, "IdentifierLinked"),
        (a.customer_id, "IdentifierUnlinked"),
        (v.customer_id, "IdentifierLinked"),
        (v.customer_id, "MergeSuggested"),
    ]
    assert f"taken over from {a.customer_id}" in why.render()
    # the same person after all: accepting the suggestion merges them, unmerge splits
    # them again with the phone on the owner's side
    merged = convs.accept_suggestion(suggestion.id, by="agent:alice")
    assert convs.find_customer(OWNER_PHONE) == merged.survivor
    convs.unmerge(merged.merge_id)
    assert convs.find_customer(OWNER_PHONE) == v.customer_id
    assert convs.find_customer(ATTACKER) == a.customer_id


def test_takeover_by_a_known_customer_and_claims_that_keep_matching(desk: Desk) -> None:
    convs = desk.convs
    a = desk.msg("webchat", (MAIL, C), (PHONE, C))  # both typed: claims
    # claimed presented to a claimed link: matches as before (and sees only its thread)
    typed = desk.msg("webchat", (MAIL, C))
    assert typed.customer_id == a.customer_id
    assert convs.history_for(typed).scope == "current_thread"
    # the phone's holder writes from a known asserted identifier of their own
    b = desk.msg("sms", (PHONE2, A))
    both = desk.msg("sms", (PHONE2, A), (PHONE, A))
    assert both.customer_id == b.customer_id and not both.new_customer
    assert "only claimed by" in both.resolution.reason
    assert convs.find_customer(PHONE) == b.customer_id
    assert convs.customer(b.customer_id).state.trust_of(PHONE) is A
    assert convs.customer(a.customer_id).state.trust_of(PHONE) is None
    assert len(convs.merge_suggestions()) == 1
    # the claims presented alongside a proof do not choose a customer: the proven phone
    # of the claimant goes to a new customer, the claimed e-mail stays where it is
    c = desk.msg("webchat", (MAIL2, C))
    proof = desk.msg("sms", (MAIL2, C), (PHONE2, V))
    assert proof.customer_id == b.customer_id  # asserted link: not a claim, matches
    desk.msg("webchat", (ct.email("x@example.com"), C), (ct.phone("+14155552673"), C))
    mixed = desk.msg("sms", (ct.email("x@example.com"), C), (ct.phone("+14155552673"), A))
    assert mixed.new_customer
    assert convs.find_customer(ct.email("x@example.com")) != mixed.customer_id
    assert convs.find_customer(ct.phone("+14155552673")) == mixed.customer_id
    assert c.customer_id != mixed.customer_id
    # claimed presented to an asserted link: matches as before
    assert desk.msg("webchat", (PHONE, C)).customer_id == b.customer_id


def test_an_agents_link_takes_over_a_claim(desk: Desk) -> None:
    convs = desk.convs
    a = desk.msg("webchat", (MAIL, C))
    b = desk.msg("sms", (PHONE, A))
    with pytest.raises(PolicyViolation, match="a claim cannot take it over"):
        convs.link(b.customer_id, MAIL, trust=C)
    convs.link(b.customer_id, MAIL, trust=V, by="agent:alice", detail="checked the ID")
    assert convs.find_customer(MAIL) == b.customer_id
    assert convs.customer(b.customer_id).state.trust_of(MAIL) is V
    assert convs.customer(a.customer_id).state.trust_of(MAIL) is None
    (suggestion,) = convs.merge_suggestions()
    assert {suggestion.customer_id, suggestion.other} == {a.customer_id, b.customer_id}
    steps = convs.explain(MAIL).steps
    assert [s.customer_id for s in steps] == [
        a.customer_id,
        a.customer_id,
        b.customer_id,
        b.customer_id,
    ]
    # an asserted link is not a claim: it cannot be taken over
    with pytest.raises(PolicyViolation, match="belongs to customer"):
        convs.link(a.customer_id, MAIL, trust=V)


def test_a_one_time_code_takes_a_claim_over_instead_of_verifying_it(desk: Desk) -> None:
    convs = desk.convs
    claimant = desk.msg("webchat", (MAIL, C))  # typed someone else's address
    holder = desk.msg("sms", (PHONE, A))
    start = convs.start_verification(
        MAIL, customer_id=holder.customer_id, session_trust=A, channel="email"
    )
    done = convs.confirm_verification(start.verification_id, start.code)
    # the address's holder proved it: it is theirs, verified; the claimant loses it and
    # nobody is merged (before, the claim was verified and the two merged automatically)
    assert done.customer_id == holder.customer_id and done.merge is None
    assert convs.find_customer(MAIL) == holder.customer_id
    assert convs.customer(holder.customer_id).state.trust_of(MAIL) is V
    assert convs.customer(claimant.customer_id).state.trust_of(MAIL) is None
    assert convs.customer(claimant.customer_id).state.merged_into is None
    assert done.suggestion_id is not None
    assert "only claimed by" in done.decision.reason
    assert len(convs.explain(MAIL).steps) == 4


def test_merge_policy_rules_in_isolation() -> None:
    from convthread.domain.merge import MergeAction, SurvivorRule
    from convthread.domain.thread import CustomerState

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def customer(cid: str, minutes: int, *idents: tuple[Identifier, Trust]) -> CustomerState:
        return CustomerState(
            id=cid,
            version=1,
            created_at=t0 + timedelta(minutes=minutes),
            identifiers={i.key: (i, t) for i, t in idents},
        )

    old = customer("cu_b", 0, (PHONE, A))
    new = customer("cu_a", 5, (MAIL, V), (MAIL2, V))
    policy = MergePolicy()
    assert policy.choose_survivor(new, old) == ("cu_b", "cu_a")
    most = MergePolicy(survivor=SurvivorRule.MOST_IDENTIFIERS)
    assert most.choose_survivor(old, new) == ("cu_a", "cu_b")
    assert MergePolicy(survivor="most_trusted").choose_survivor(old, new)[0] == "cu_a"
    assert MergePolicy(survivor=lambda a, b: b).choose_survivor(old, new)[0] == "cu_a"
    with pytest.raises(ValidationError):
        MergePolicy(survivor="tallest")
    assert policy.evaluate(old, new, trust_a=A, trust_b=V).action is MergeAction.MERGE
    assert policy.evaluate(old, new, trust_a=C, trust_b=V).action is MergeAction.SUGGEST
    strict = MergePolicy(min_auto_trust=V)
    assert strict.evaluate(old, new, trust_a=A, trust_b=V).action is MergeAction.SUGGEST
    tight = MergePolicy(max_per_kind={"email": 1})
    verdict = tight.evaluate(old, new, trust_a=V, trust_b=V)
    assert verdict.action is MergeAction.REFUSE and "email identifiers" in verdict.violations[0]
    patterns = MergePolicy(blocked_patterns=(r"email:(info|sales)@.*", r".*:0+"))
    assert patterns.is_blocked(ct.email("INFO@shop.example"))
    assert patterns.is_blocked(ct.device("0000"))
    assert not patterns.is_blocked(ct.email("ann@shop.example"))
    assert not patterns.is_blocked(ct.handle("twitter", "info"))
    assert policy.is_blocked(ct.email("noreply@shop.example"))
    assert policy.is_blocked(ct.email("do-not-reply+x@shop.example"))
    assert policy.is_blocked(Identifier("phone", "+14444444444"))
    assert not policy.is_blocked(PHONE)
