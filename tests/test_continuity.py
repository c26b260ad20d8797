"""Continuity: which thread a message continues, and why, on memory and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.continuity import (
    ContinuityContext,
    ContinuityPolicy,
    find_reference_tokens,
    reference_token,
)
from tests._thread_util import T0, check_store_invariants, msg


def make(store_factory, clock, ids, **policy: object) -> ct.Conversations:
    return ct.Conversations(
        store_factory(), clock=clock, ids=ids, continuity=ContinuityPolicy(**policy)
    )


# ----------------------------------------------------------------- explicit references


def test_reply_to_a_known_message_continues_its_thread_across_the_window(
    store_factory, clock, ids
) -> None:
    convs = make(store_factory, clock, ids)
    first = convs.ingest(msg("m1", channel="whatsapp"))
    out = convs.send(first.thread_id, "order?", sender="agent:ann", provider_message_id="w-out-1")
    # A second topic-less thread exists after the window; the reply still finds the first.
    late = T0 + timedelta(days=2)
    other = convs.ingest(msg("m2", channel="whatsapp", at=late))
    assert other.thread_id != first.thread_id
    assert other.decision.rule == "recency"
    reply = convs.ingest(msg("m3", channel="whatsapp", at=late, reply_to="w-out-1"))
    # thread 1 was superseded (resolved) two days ago, within the 7-day reopen window,
    # but thread 2 is live for the same topic: the reply continues the live one.
    assert reply.decision.rule == "explicit_reference"
    assert reply.thread_id == other.thread_id
    assert "w-out-1" in reply.decision.reason
    assert reply.decision.evidence["live"] == other.thread_id
    assert out.seq == 3
    check_store_invariants(convs.store)


def test_email_references_pick_the_referenced_thread(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids, topic_extractor=lambda m: m.subject or None)
    a = convs.ingest(msg("<a@x>", channel="email", subject="Order 1"))
    b = convs.ingest(msg("<b@x>", channel="email", subject="Order 2"))
    assert a.thread_id != b.thread_id
    # In-Reply-To is unknown; References names a message of thread a.
    r = convs.ingest(
        msg(
            "<c@x>",
            channel="email",
            subject="Re: something else",
            reply_to="<unknown@x>",
            references=("<zzz@x>", "<a@x>"),
        )
    )
    assert r.thread_id == a.thread_id
    assert r.decision.rule == "explicit_reference"
    assert r.decision.evidence == {"reference": "<a@x>", "via": "references", "thread": a.thread_id}


def test_reference_to_another_customers_message_is_ignored(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids)
    a = convs.ingest(msg("m1", customer=1))
    b = convs.ingest(msg("m2", customer=2, reply_to="m1"))
    assert b.thread_id != a.thread_id
    assert b.decision.rule == "new_thread"


def test_reference_token_embedded_by_send_continues_on_another_channel(
    store_factory, clock, ids
) -> None:
    convs = make(
        store_factory,
        clock,
        ids,
        topic_extractor=lambda m: "billing" if "bill" in m.content.text else None,
    )
    first = convs.ingest(msg("m1", channel="sms", text="my bill is wrong"))
    sent = convs.send(first.thread_id, "We are on it.", sender="agent:ann", embed_reference=True)
    token = reference_token(first.thread_id)
    assert sent.event.content.text.endswith(token)
    assert sent.event.reference_token == token
    # A week later (beyond the window and with no topic), an e-mail quoting the token.
    clock.advance(days=3)
    r = convs.ingest(
        msg(
            "<e1@x>",
            channel="email",
            subject=f"Re: your case {token}",
            text="still wrong",
            at=T0 + timedelta(days=3),
        )
    )
    assert r.thread_id == first.thread_id
    assert r.decision.rule == "thread_reference"
    assert r.decision.evidence["in"] == "subject"
    state = convs.thread_state(first.thread_id)
    assert state.channels == ("sms", "email")


def test_a_token_of_someone_elses_thread_is_ignored(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids)
    a = convs.ingest(msg("m1", customer=1))
    r = convs.ingest(msg("m2", customer=2, text=f"see {reference_token(a.thread_id)}"))
    assert r.thread_id != a.thread_id
    assert r.decision.rule == "new_thread"


def test_find_reference_tokens_subject_first_and_bounded() -> None:
    m = msg("x", subject="[#th_b] re", text="[#th_a] [#th_b] [#th_c] [#nope] [#th_d][#th_e][#th_f]")
    assert find_reference_tokens(m) == ["th_b", "th_a", "th_c", "th_d", "th_e"]
    with pytest.raises(ValueError):
        reference_token("not a thread]")


# ----------------------------------------------------------------- topic key


def test_topic_key_keeps_one_thread_per_topic(store_factory, clock, ids) -> None:
    def order(m: ct.Inbound) -> str | None:
        for word in m.content.text.split():
            if word.startswith("#"):
                return word[1:]
        return None

    convs = make(store_factory, clock, ids, topic_extractor=order)
    a = convs.ingest(msg("m1", text="where is #A1"))
    b = convs.ingest(msg("m2", channel="whatsapp", text="and #B2 is late"))
    c = convs.ingest(msg("m3", channel="voice", text="about #A1 again", at=T0 + timedelta(days=3)))
    assert len({a.thread_id, b.thread_id}) == 2
    assert c.thread_id == a.thread_id
    assert c.decision.rule == "topic_key"
    assert c.decision.evidence["topic"] == "A1"
    assert convs.thread_state(b.thread_id).topic == "B2"
    check_store_invariants(convs.store)


# ----------------------------------------------------------------- recency


def test_recency_window_per_channel_pair(store_factory, clock, ids) -> None:
    convs = make(
        store_factory,
        clock,
        ids,
        window=timedelta(hours=24),
        channel_windows={("webchat", "voice"): timedelta(minutes=30)},
    )
    a = convs.ingest(msg("m1", channel="webchat"))
    b = convs.ingest(msg("m2", channel="voice", at=T0 + timedelta(minutes=20)))
    assert b.thread_id == a.thread_id
    assert b.decision.rule == "recency"
    assert "on voice after webchat" in b.decision.reason
    c = convs.ingest(msg("m3", channel="webchat", at=T0 + timedelta(hours=2)))
    assert c.thread_id == a.thread_id  # voice -> webchat uses the 24h default
    d = convs.ingest(msg("m4", channel="voice", at=T0 + timedelta(hours=3)))
    assert d.thread_id != a.thread_id  # webchat -> voice after 1h > 30 min
    assert d.new_thread
    assert d.decision.evidence["window_seconds"] == "1800"
    old = convs.thread_state(a.thread_id)
    assert old.status is ct.ThreadStatus.RESOLVED
    assert convs.thread_state(d.thread_id).predecessor == a.thread_id
    check_store_invariants(convs.store)


def test_pending_thread_continues_however_late_the_customer_replies(
    store_factory, clock, ids
) -> None:
    convs = make(store_factory, clock, ids)
    a = convs.ingest(msg("m1"))
    convs.set_status(a.thread_id, "pending", reason="asked for the order number")
    r = convs.ingest(msg("m2", at=T0 + timedelta(days=5)))
    assert r.thread_id == a.thread_id
    assert r.decision.rule == "recency"
    state = convs.thread_state(a.thread_id)
    assert state.status is ct.ThreadStatus.OPEN  # the reply woke it
    kinds = [type(e.event).__name__ for e in convs.events(a.thread_id)]
    assert kinds[-2:] == ["LifecycleChanged", "MessageReceived"]


# ----------------------------------------------------------------- reopen / predecessor


def test_resolved_thread_reopens_within_reopen_window(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids, reopen_window=timedelta(days=2))
    a = convs.ingest(msg("m1"))
    convs.resolve(a.thread_id)
    clock.advance(hours=30)
    r = convs.ingest(msg("m2", at=clock.now()))
    assert r.thread_id == a.thread_id
    assert "reopen" in r.decision.reason
    assert convs.thread_state(a.thread_id).status is ct.ThreadStatus.OPEN
    ev = [e.event for e in convs.events(a.thread_id)]
    assert isinstance(ev[-2], ct.LifecycleChanged) and ev[-2].reopened
    check_store_invariants(convs.store)


def test_beyond_reopen_window_a_successor_records_its_predecessor(
    store_factory, clock, ids
) -> None:
    convs = make(store_factory, clock, ids, reopen_window=timedelta(days=2))
    a = convs.ingest(msg("m1"))
    convs.resolve(a.thread_id)
    clock.advance(days=3)
    r = convs.ingest(msg("m2", at=clock.now()))
    assert r.new_thread and r.thread_id != a.thread_id
    assert r.decision.rule == "new_thread"
    assert r.decision.evidence == {"previous": a.thread_id}
    beyond = f"{a.thread_id}, which was resolved 3d ago, beyond the 2d reopen window"
    assert r.decision.reason.endswith(f"new thread after {beyond}")
    assert convs.thread_state(r.thread_id).predecessor == a.thread_id
    # A reply to the old thread's message, beyond the window, continues the live successor.
    r2 = convs.ingest(msg("m3", at=clock.now(), reply_to="m1"))
    assert r2.thread_id == r.thread_id
    # Once the successor is closed too, the reply starts a third thread, and says why.
    convs.close_thread(r.thread_id)
    r3 = convs.ingest(msg("m4", at=clock.now(), reply_to="m1"))
    assert r3.new_thread and convs.thread_state(r3.thread_id).predecessor == a.thread_id
    assert r3.decision.reason.endswith(
        "that thread was resolved 3d ago, beyond the 2d reopen window, so a new thread follows it"
    )
    check_store_invariants(convs.store)


def test_closed_thread_never_reopens(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids)
    a = convs.ingest(msg("m1"))
    convs.close_thread(a.thread_id)
    clock.advance(days=1)  # well within the 7-day reopen window: closed is final anyway
    r = convs.ingest(msg("m2", at=clock.now(), reply_to="m1"))
    assert r.thread_id != a.thread_id
    assert r.decision.rule == "explicit_reference"
    assert "that thread was closed, and a closed thread never reopens" in r.decision.reason
    assert "reopen window" not in r.decision.reason
    assert convs.thread_state(r.thread_id).predecessor == a.thread_id
    assert convs.thread_state(a.thread_id).status is ct.ThreadStatus.CLOSED
    # Without a reference, the successor's reason says the same of the closed thread.
    convs.close_thread(r.thread_id)
    n = convs.ingest(msg("m3", at=clock.now()))
    assert n.decision.rule == "new_thread"
    assert n.decision.reason.endswith(
        f"new thread after {r.thread_id}, which was closed, and a closed thread never reopens"
    )


# ----------------------------------------------------------------- reopen and topics


def _order(m: ct.Inbound) -> str | None:
    """Topic extractor of these tests: the first word like A-1001."""
    words = m.content.text.replace("?", " ").split()
    return next((w for w in words if w.startswith("A-") and w[2:].isdigit()), None)


@pytest.mark.parametrize("via", ["reply_to", "token"])
def test_a_message_naming_a_new_topic_does_not_reopen_the_resolved_thread(
    store_factory, clock, ids, via: str
) -> None:
    convs = make(store_factory, clock, ids, topic_extractor=_order)
    a = convs.ingest(msg("m1", text="A-1001 arrived broken"))
    convs.send(a.thread_id, "Refunded.", sender="agent:ann", provider_message_id="out-1")
    convs.resolve(a.thread_id)
    clock.advance(hours=2)

    def about(pid: str, text: str) -> ct.IngestResult:
        if via == "reply_to":
            return convs.ingest(msg(pid, text=text, at=clock.now(), reply_to="out-1"))
        return convs.ingest(msg(pid, text=f"{text} {reference_token(a.thread_id)}", at=clock.now()))

    new = about("m2", "and now A-2002 is late")
    assert new.new_thread and new.thread_id != a.thread_id
    state = convs.thread_state(new.thread_id)
    assert state.topic == "A-2002" and state.predecessor == a.thread_id
    assert "resolved about 'A-1001', and the message is about 'A-2002', a new topic" in (
        new.decision.reason
    )
    assert convs.thread_state(a.thread_id).status is ct.ThreadStatus.RESOLVED
    # A second message about A-2002 on the old thread continues the new, live one.
    again = about("m3", "A-2002 still late")
    assert again.thread_id == new.thread_id and again.decision.evidence["live"] == new.thread_id
    # The resolved thread's own topic, or no topic at all, reopens it (within the window).
    same = about("m4", "A-1001 broke again")
    assert same.thread_id == a.thread_id and "reopens" in same.decision.reason
    check_store_invariants(convs.store)


def test_a_message_without_a_topic_reopens_the_resolved_thread(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids, topic_extractor=_order)
    a = convs.ingest(msg("m1", text="A-1001 arrived broken"))
    convs.resolve(a.thread_id)
    clock.advance(hours=2)
    r = convs.ingest(msg("m2", text="it broke again", at=clock.now(), reply_to="m1"))
    assert r.thread_id == a.thread_id and "reopens" in r.decision.reason
    check_store_invariants(convs.store)


_TEXTS = ("hello", "about A-1001", "about A-2002")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("ingest", "resolve", "close")),
            st.sampled_from(_TEXTS),
            st.integers(0, 2),  # which earlier message to reply to (none when too large)
            st.integers(0, 30),  # hours to wait first
        ),
        max_size=12,
    )
)
def test_a_resolved_thread_reopens_only_for_its_own_topic_or_none(steps) -> None:
    S = ct.ThreadStatus
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(
        "memory://",
        clock=clock,
        ids=ct.SequentialIds(),
        continuity=ContinuityPolicy(topic_extractor=_order),
    )
    pids: list[str] = []
    thread_of: dict[str, str] = {}
    for n, (what, text, reply, hours) in enumerate(steps):
        clock.advance(hours=hours)
        if what != "ingest":
            if pids:
                state = convs.thread_state(thread_of[pids[reply % len(pids)]])
                if state.is_open or (what == "close" and state.status is S.RESOLVED):
                    (convs.resolve if what == "resolve" else convs.close_thread)(state.id)
            continue
        pid = f"m{n}"
        ref = pids[reply] if reply < len(pids) else None
        r = convs.ingest(msg(pid, text=text, at=clock.now(), reply_to=ref))
        pids.append(pid)
        thread_of[pid] = r.thread_id
        events = [e.event for e in convs.events(r.thread_id)]
        if len(events) >= 2 and isinstance(events[-2], ct.LifecycleChanged) and events[-2].reopened:
            assert _order(r.event) in (None, convs.thread_state(r.thread_id).topic)
        check_store_invariants(convs.store)


# ----------------------------------------------------------------- pure policy


def test_every_decision_has_a_rule_and_a_reason(store_factory, clock, ids) -> None:
    convs = make(store_factory, clock, ids)
    results = [convs.ingest(msg(f"m{i}", at=T0 + timedelta(hours=13 * i))) for i in range(6)]
    for r in results:
        assert r.decision.rule in {"new_thread", "recency"}
        assert len(r.decision.reason) > 10


def test_custom_rule_cannot_break_one_live_thread_per_topic(store_factory, clock, ids) -> None:
    """A rule that always starts a new thread: decide() supersedes the live one."""

    def always_new(ctx: ContinuityContext, policy: ContinuityPolicy) -> ct.Choice:
        return ct.Choice(decision=ct.Decision.text("always_new", "testing"))

    convs = make(store_factory, clock, ids, rules=(always_new,))
    a = convs.ingest(msg("m1"))
    b = convs.ingest(msg("m2"))
    assert a.thread_id != b.thread_id
    assert b.decision.evidence["superseded"] == a.thread_id
    assert convs.thread_state(a.thread_id).status is ct.ThreadStatus.RESOLVED
    check_store_invariants(convs.store)


def test_negative_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        ContinuityPolicy(window=timedelta(seconds=-1))


def test_a_late_arrival_is_explained_as_late_not_as_a_negative_gap() -> None:
    from datetime import datetime, timedelta, timezone

    import convthread as ct

    clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    convs = ct.Conversations("memory://", clock=clock, ids=ct.SequentialIds())
    sender = (ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),)

    def sms(pid: str, sent: datetime) -> ct.Inbound:
        return ct.Inbound(
            channel="sms",
            provider_message_id=pid,
            sender=sender,
            content=ct.Content(text=pid),
            sent_at=sent,
        )

    t0 = clock.now()
    first = convs.ingest(sms("SM-2", t0 + timedelta(minutes=10)))
    late = convs.ingest(sms("SM-1", t0))  # sent earlier, delivered later
    assert late.thread_id == first.thread_id
    assert "-" not in late.decision.reason.split("active", 1)[1].split("after", 1)[0]
    assert "10m after this message was sent (a late arrival)" in late.decision.reason
