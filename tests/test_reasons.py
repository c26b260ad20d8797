"""Reason codes: decisions store a code and params; the sentence is rendered when read."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

import convthread as ct
from convthread import codec
from convthread.domain.continuity import ContinuityContext, ContinuityPolicy
from convthread.errors import ValidationError
from convthread.stores import SQLiteStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
MIGRATION = Path(__file__).parent / "migration"


def sms(convs: ct.Conversations, pid: str, *, minutes: float = 0) -> ct.IngestResult:
    return convs.ingest(
        ct.Inbound(
            channel="sms",
            provider_message_id=pid,
            sender=(ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),),
            content=ct.Content(text=pid),
            sent_at=T0 + timedelta(minutes=minutes),
        )
    )


def fresh(**policy: object) -> ct.Conversations:
    continuity = ContinuityPolicy(**policy) if policy else None  # type: ignore[arg-type]
    kwargs = {"continuity": continuity} if continuity is not None else {}
    return ct.Conversations("memory://", clock=ct.ManualClock(T0), ids=ct.SequentialIds(), **kwargs)


# --------------------------------------------------------------------------- registry


def test_a_custom_code_reads_through_its_format_string_or_callable() -> None:
    ct.register_reason("acme_test.vip", "tier {tier} customer, thread {thread}")
    ct.register_reason("acme_test.score", lambda p: f"score {p['score']:.2f} over the bar")
    vip = ct.Decision(
        rule="vip", code="acme_test.vip", params={"tier": "gold"}, evidence={"thread": "th_9"}
    )
    assert vip.reason == "tier gold customer, thread th_9"
    score = ct.Decision(rule="score", code="acme_test.score", params={"score": 0.875})
    assert score.reason == "score 0.88 over the bar"


@pytest.mark.parametrize(
    "code",
    [
        "identity.exact_match",  # a built-in code
        "continuity.my_rule",  # a built-in namespace
        "vip",  # no namespace
        "acme vip.x",  # a space
        "acme.",  # nothing after the dot
    ],
)
def test_built_in_and_unnamespaced_codes_cannot_be_registered(code: str) -> None:
    with pytest.raises(ValidationError):
        ct.register_reason(code, "anything")
    assert ct.Decision(rule="exact_match", code="identity.exact_match", params={
        "customer": "cu_1"}, evidence={"identifier": "phone:+1", "trust": "asserted"}
    ).reason == "phone:+1 (asserted) belongs to customer cu_1"  # fmt: skip


def test_an_unknown_code_or_an_unreadable_record_renders_a_fallback() -> None:
    gone = ct.Decision(rule="x", code="gone_policy.rule", params={"n": 3})
    assert gone.reason == "gone_policy.rule {'n': 3}"
    assert ct.Decision(rule="x", code="gone_policy.bare").reason == "gone_policy.bare"
    # a built-in code stored without what its renderer needs (data outlives code)
    broken = ct.Decision(rule="recency", code="continuity.recency.within_window")
    assert broken.reason == "continuity.recency.within_window"


# --------------------------------------------------------------------------- stored form


def test_a_built_in_decision_stores_its_code_not_its_sentence() -> None:
    convs = fresh()
    sms(convs, "m1")
    second = sms(convs, "m2", minutes=5)
    decision = second.decision
    assert decision.code == "continuity.recency.within_window"
    assert decision.reason == (
        "open thread th_0001 was last active 5m ago, within the 24h00m window; continuing on sms"
    )
    assert second.resolution.reason == "phone:+447911123456 (asserted) belongs to customer cu_0001"
    stored = codec.encode(second.event)
    assert b"last active" not in stored and b"belongs to" not in stored
    assert codec.decode_event(stored) == second.event


def test_a_custom_rule_returns_its_own_code_and_a_follow_up_reads_after_it() -> None:
    ct.register_reason("acme_test.always_new", "the {team} team wants a new thread each time")

    def always_new(ctx: ContinuityContext, policy: ContinuityPolicy) -> ct.Choice:
        return ct.Choice(
            decision=ct.Decision(
                rule="always_new", code="acme_test.always_new", params={"team": "returns"}
            )
        )

    convs = fresh(rules=(always_new,))
    a = sms(convs, "m1")
    b = sms(convs, "m2", minutes=1)
    assert b.decision.reason == (
        "the returns team wants a new thread each time; open thread "
        f"{a.thread_id} for this customer and topic is resolved, since the new thread replaces it"
    )
    (event,) = [e.event for e in convs.events(b.thread_id) if e.seq == 2]
    assert isinstance(event, ct.MessageReceived) and event.decision == b.decision


def test_a_custom_rule_may_still_give_a_sentence() -> None:
    def always_new(ctx: ContinuityContext, policy: ContinuityPolicy) -> ct.Choice:
        return ct.Choice(decision=ct.Decision.text("always_new", "testing"))

    convs = fresh(rules=(always_new,))
    a = sms(convs, "m1")
    b = sms(convs, "m2", minutes=1)
    assert a.decision.reason == "testing"
    assert b.decision.reason == (
        f"testing; open thread {a.thread_id} for this customer and topic is resolved, "
        "since the new thread replaces it"
    )
    assert b.decision.code == ""  # a sentence stays a sentence


# --------------------------------------------------------------------------- export


def test_export_carries_the_rendered_reason_and_the_schema_says_so() -> None:
    convs = fresh()
    sms(convs, "m1")
    second = sms(convs, "m2", minutes=5)
    plain = codec.to_builtins(second.event)
    assert plain["decision"]["reason"] == second.decision.reason
    assert plain["decision"]["code"] == "continuity.recency.within_window"
    view = convs.thread(second.thread_id)
    back = codec.from_json(codec.to_json(view), ct.ThreadView)
    assert [
        getattr(e.event, "decision", None) and e.event.decision.reason for e in back.events
    ] == [getattr(e.event, "decision", None) and e.event.decision.reason for e in view.events]
    for schema in (ct.event_schema(), codec.json_schema(ct.ThreadEvent)):
        decision = schema["$defs"]["Decision"]
        assert {"reason", "code", "params", "rule", "evidence"} <= set(decision["required"])
        msgspec.json.decode(codec.to_json(second.event))  # valid JSON
    # exported data validates against the schema's shape for decisions
    assert set(plain["decision"]) == set(schema["$defs"]["Decision"]["properties"])


# --------------------------------------------------------------------------- 0.1.0 records


def test_decisions_written_by_release_0_1_0_show_their_stored_sentences(tmp_path: Path) -> None:
    source = MIGRATION / "release-0.1.0.db"
    if not source.exists():
        pytest.skip("tests/migration/release-0.1.0.db is not in this checkout")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", tmp_path / f"old.db{suffix}")
    expected = msgspec.json.decode((MIGRATION / "release-0.1.0.json").read_bytes())
    convs = ct.Conversations(SQLiteStore(str(tmp_path / "old.db")))
    seen = 0
    for tid, thread in expected["threads"].items():
        events = convs.events(tid)
        assert len(events) == len(thread["events"])
        for got, want in zip(events, thread["events"], strict=True):
            for field in ("decision", "resolution"):
                if field in want["event"]:
                    decision = getattr(got.event, field)
                    assert decision.reason == want["event"][field]["reason"]
                    assert decision.rule == want["event"][field]["rule"]
                    seen += 1
    assert seen > 10
