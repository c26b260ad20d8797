"""Context snapshots: determinism across stores, incremental == full replay,
no full replay per snapshot, content (journey, attributes, waiting times, budgets), and
the JSON Schema validating real snapshots and events."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread import codec
from convthread.domain.redaction import DEFAULT_POLICIES
from convthread.domain.snapshot import (
    SCHEMA_VERSION,
    Snapshot,
    fold_snapshot,
    project,
    snapshot_schema,
)
from convthread.errors import NotFound, ValidationError
from convthread.service import _snapshots
from convthread.stores import MemoryStore, SQLiteStore
from tests._thread_util import msg

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
AUDIENCES = ("agent", "bot_vendor", "customer")


#: thread id -> the IngestResult of the customer's first message (the session that a
#: customer-audience snapshot is read for)
SESSIONS: dict[str, ct.IngestResult] = {}


def _snap(convs: ct.Conversations, tid: str, audience: str, **kwargs: object) -> Snapshot:
    """A snapshot for ``audience``; customer snapshots are read for the first session."""
    if audience == "customer":
        kwargs["session"] = SESSIONS[tid]
    return convs.snapshot(tid, audience=audience, **kwargs)  # type: ignore[arg-type]


def _scenario(store: ct.Store) -> tuple[ct.Conversations, str]:
    """The same story, told to any store."""
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
    first = convs.ingest(msg("m1", channel="webchat", text="Hi, I'm Dana Reyes, order 4471"))
    tid = first.thread_id
    SESSIONS[tid] = first
    convs.transfer_control(tid, to="bot:helper", fencing_token=0)
    clock.advance(seconds=20)
    convs.send(tid, "Hello Dana, how can I help?", sender="bot:helper", fencing_token=1)
    convs.set_attribute(tid, "name", "Dana Reyes", by="bot:helper", fencing_token=1)
    convs.set_attribute(tid, "order", "4471", by="bot:helper", fencing_token=1)
    convs.record_intent(tid, "refund", confidence=0.75, by="bot:helper", fencing_token=1)
    clock.advance(minutes=3)
    convs.ingest(
        msg(
            "m2",
            channel="sms",
            text="It arrived broken. Call me on +1 415 555 0199",
            at=clock.now(),
        )
    )
    convs.set_attribute(tid, "order", "4472", by="bot:helper", fencing_token=1)
    h = convs.request_handoff(
        tid, to="queue:refunds", reason="refund over limit", by="bot:helper", fencing_token=1
    )
    clock.advance(minutes=2)
    convs.offer_handoff(h.id, to="agent:ann")
    convs.accept_handoff(h.id, by="agent:ann")
    clock.advance(minutes=1)
    convs.send(tid, "Ann here, sorry about that!", sender="agent:ann", fencing_token=2)
    return convs, tid


def test_same_events_give_byte_identical_json_on_every_store(tmp_path: Path) -> None:
    outputs = []
    for store in (MemoryStore(), SQLiteStore(tmp_path / "a.db")):
        convs, tid = _scenario(store)
        version = convs.thread_state(tid).version
        out = []
        for audience in AUDIENCES:
            for seq in (3, version - 2, version):
                out.append(_snap(convs, tid, audience, at_seq=seq).to_json())
            out.append(_snap(convs, tid, audience).to_json())
        h = next(e.event for e in convs.events(tid) if isinstance(e.event, ct.HandoffAccepted))
        out.append(convs.handed_over_snapshot(tid, h.handoff_id).to_json())
        outputs.append(out)
        store.close()
    assert outputs[0] == outputs[1]
    assert len(set(outputs[0])) > 5  # the snapshots differ by audience and seq
    # and the JSON is canonical: re-encoding the decoded value gives the same bytes
    snap = msgspec.json.decode(outputs[0][-2], type=Snapshot)
    assert snap.to_json() == outputs[0][-2] == codec.to_json(snap)


def test_snapshot_content(store_factory) -> None:
    convs, tid = _scenario(store_factory())
    snap = convs.snapshot(tid, audience="agent")
    assert snap.schema_version == SCHEMA_VERSION == 1
    assert [(j.channel, j.at) for j in snap.journey] == [
        ("webchat", T0),
        ("sms", T0 + timedelta(seconds=200)),
    ]
    attrs = {a.name: a for a in snap.attributes}
    assert attrs["order"].value == "4472"  # last write by sequence wins
    assert attrs["name"].value == "Dana Reyes" and snap.customer.name == "Dana Reyes"
    assert [(i.name, i.confidence) for i in snap.intents] == [("refund", 0.75)]
    assert [h.step for h in snap.handoffs] == ["transferred", "requested", "offered", "accepted"]
    assert snap.handoffs[1].reason == "refund over limit"
    assert snap.controller == "agent:ann" and snap.fencing_token == 2
    assert snap.first_response_seconds == 20
    assert snap.waiting_seconds is None  # ann answered last
    assert snap.message_count == 4 and snap.last_channel == "sms"
    # at the moment of the offer, the customer had waited since the sms, the queue 2 minutes
    offer_seq = next(e.seq for e in convs.events(tid) if isinstance(e.event, ct.HandoffOffered))
    past = convs.snapshot(tid, at_seq=offer_seq)
    assert past.waiting_seconds == 120 and past.queue_wait_seconds == 120
    assert past.controller == "bot:helper" and past.pending_handoff is not None


def test_message_budget_newest_first(store_factory) -> None:
    convs, tid = _scenario(store_factory())
    snap = convs.snapshot(tid, max_messages=2)
    assert [m.text for m in snap.messages] == [
        "It arrived broken. Call me on +1 415 555 0199",
        "Ann here, sorry about that!",
    ]
    assert snap.messages_omitted == 2
    budget = len("Ann here, sorry about that!")
    small = convs.snapshot(tid, max_chars=budget)
    assert [m.text for m in small.messages] == ["Ann here, sorry about that!"]
    assert convs.snapshot(tid, max_chars=budget - 1).messages == ()
    with pytest.raises(ValidationError):
        convs.snapshot(tid, max_messages=51)
    with pytest.raises(ValidationError):
        convs.snapshot(tid, audience="martians")
    with pytest.raises(NotFound):
        convs.snapshot("th_missing")
    with pytest.raises(NotFound):
        convs.snapshot(tid, at_seq=10_000)


class _CountingStore:
    """A store wrapper that counts the events read."""

    def __init__(self, inner: ct.Store) -> None:
        self.inner = inner
        self.events_read = 0

    def read(self, stream: str, after: int = 0, limit: int | None = None):  # type: ignore[no-untyped-def]
        records = self.inner.read(stream, after, limit)
        self.events_read += len(records)
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_long_thread_is_not_replayed_for_each_snapshot(store_factory) -> None:
    counting = _CountingStore(store_factory())
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(counting, clock=clock, ids=ct.SequentialIds())  # type: ignore[arg-type]
    tid = convs.ingest(msg("m0", text="start")).thread_id
    for i in range(1, 700):
        clock.advance(seconds=1)
        if i % 3:
            convs.ingest(msg(f"m{i}", text=f"message {i}", at=clock.now()))
        else:
            convs.send(tid, f"reply {i}", sender="agent:ann")  # appended outside ingest
    version = convs.thread_state(tid).version
    counting.events_read = 0
    snap = convs.snapshot(tid)
    first = counting.events_read
    assert first < 2 * _snapshots.CHECKPOINT_EVERY, first
    counting.events_read = 0
    again = convs.snapshot(tid)
    assert counting.events_read < 2 * _snapshots.CHECKPOINT_EVERY
    assert again == snap and snap.seq == version
    # and it is the same as a fold from scratch
    events = [(e.seq, e.event) for e in convs.events(tid)]
    policy = DEFAULT_POLICIES["agent"]
    customer = convs.customer(snap.customer.id).state
    full = project(fold_snapshot(tid, events), audience="agent", policy=policy, customer=customer)
    assert full.to_json() == snap.to_json()


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("in"), st.sampled_from(["sms", "webchat", "voice"]), st.text(max_size=30)
        ),
        st.tuples(
            st.just("out"),
            st.sampled_from(["agent:ann", "bot:b", "system:x"]),
            st.text(max_size=30),
        ),
        st.tuples(st.just("attr"), st.sampled_from(["a", "b", "name"]), st.integers(-5, 5)),
        st.tuples(st.just("intent"), st.sampled_from(["fallback", "refund"]), st.floats(0, 1)),
        st.tuples(st.just("handoff"), st.sampled_from(["agent:ann", "queue:q"]), st.just("")),
        st.tuples(st.just("tick"), st.integers(1, 600), st.just("")),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25)
@given(ops=ops, every=st.integers(1, 6), data=st.data())
def test_checkpoint_plus_tail_equals_full_replay(ops, every: int, data) -> None:  # type: ignore[no-untyped-def]
    old = _snapshots.CHECKPOINT_EVERY
    _snapshots.CHECKPOINT_EVERY = every  # checkpoints everywhere, written by every path
    try:
        clock = ct.ManualClock(T0)
        convs = ct.Conversations(MemoryStore(), clock=clock, ids=ct.SequentialIds())
        first = convs.ingest(msg("m0"))
        tid = first.thread_id
        SESSIONS[tid] = first
        for n, (kind, a, b) in enumerate(ops):
            if kind == "in":
                convs.ingest(msg(f"p{n}", channel=a, text=b, at=clock.now()))
            elif kind == "out":
                controller = convs.thread_state(tid).controller
                convs.send(tid, b, sender=controller or a)
            elif kind == "attr":
                convs.set_attribute(tid, a, b)
            elif kind == "intent":
                convs.record_intent(tid, a, confidence=b)
            elif kind == "handoff":
                state = convs.thread_state(tid)
                if state.pending is not None:
                    target = state.pending.target
                    by = str(target) if target.kind is ct.PartyKind.AGENT else "agent:zed"
                    convs.accept_handoff(state.pending.handoff_id, by=by)
                elif state.controller is None:
                    convs.request_handoff(tid, to=a)
                else:
                    convs.release_control(
                        tid, by=str(state.controller), fencing_token=state.fencing_token
                    )
            else:
                clock.advance(seconds=a)
            if data.draw(st.booleans()):
                convs.snapshot(tid)  # may write a checkpoint
        events = [(e.seq, e.event) for e in convs.events(tid)]
        seq = data.draw(st.integers(1, len(events)))
        customer = convs.customer(convs.thread_state(tid).customer_id).state
        for audience in AUDIENCES:
            policy = DEFAULT_POLICIES[audience]
            for at in (seq, None):
                got = _snap(convs, tid, audience, at_seq=at)
                upto = events if at is None else events[:at]
                want = project(
                    fold_snapshot(tid, upto), audience=audience, policy=policy, customer=customer
                )
                assert got.to_json() == want.to_json()
    finally:
        _snapshots.CHECKPOINT_EVERY = old


# ----------------------------------------------------------------- schema


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root["$defs"][name]
    return schema


_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
    "array": list,
    "object": dict,
}


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> None:
    """A validator for the JSON Schema subset msgspec generates (type, $ref, anyOf,
    enum, properties, required, additionalProperties, items)."""
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, root, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: matches no option of anyOf: {errors}")
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind is not None:
        expected = _TYPES[kind]
        ok = isinstance(value, expected) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        assert ok, f"{path}: {value!r} is not {kind}"
    if kind == "object":
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{path}: missing required {name!r}"
        for name, item in value.items():
            if name in props:
                validate(item, props[name], root, f"{path}.{name}")
            else:
                extra = schema.get("additionalProperties", True)
                assert extra is not False, f"{path}: unexpected property {name!r}"
                if isinstance(extra, dict):
                    validate(item, extra, root, f"{path}.{name}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], root, f"{path}[{i}]")


def test_snapshot_schema_validates_real_snapshots(store_factory) -> None:
    schema = snapshot_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["x-schema-version"] == SCHEMA_VERSION
    snap_def = schema["$defs"]["Snapshot"]
    assert set(snap_def["properties"]) == set(Snapshot.__struct_fields__)
    assert {"thread_id", "seq", "as_of", "audience", "customer"} <= set(snap_def["required"])
    json.dumps(schema)  # serializable
    convs, tid = _scenario(store_factory())
    for audience in AUDIENCES:
        raw = _snap(convs, tid, audience).to_json()
        validate(json.loads(raw), schema, schema)
        msgspec.json.decode(raw, type=Snapshot, strict=True)
    # the validator does reject what does not conform
    bad = json.loads(convs.snapshot(tid).to_json())
    bad["messages"][0]["seq"] = "one"
    with pytest.raises(AssertionError, match="seq"):
        validate(bad, schema, schema)
    del bad["thread_id"]
    with pytest.raises(AssertionError, match="thread_id"):
        validate(bad, schema, schema)


def test_event_schema_validates_real_events(store_factory) -> None:
    schema = codec.event_schema()
    convs, tid = _scenario(store_factory())
    tags = set()
    for stored in convs.events(tid):
        raw = json.loads(codec.to_json(stored.event))
        validate(raw, schema, schema)
        tags.add(raw["type"])
    assert {"handoff_requested", "handoff_accepted", "attribute_set", "control_transferred"} <= tags
    names = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower() for k in schema["$defs"]}
    assert "continuation_redeemed" in names and "handoff_offered" in names


def test_batched_ingest_moves_the_checkpoint_and_applies_rules(store_factory) -> None:
    from convthread.domain.handoff import AsksForHuman

    clock = ct.ManualClock(T0)
    convs = ct.Conversations(
        store_factory(), clock=clock, ids=ct.SequentialIds(), handoff_rules=[AsksForHuman()]
    )
    texts = ["talk to a human" if i == 150 else f"m {i}" for i in range(300)]
    msgs = [msg(f"x{i}", text=t, at=T0 + timedelta(seconds=i)) for i, t in enumerate(texts)]
    results = convs.ingest_many(msgs[:200]) + convs.ingest_many(msgs[200:])
    assert [r.seq for r in results if r.handoff is not None] == [152]  # message 150
    tid = results[0].thread_id
    item = convs.store.get("hsnap", _snapshots.checkpoint_key(tid))
    assert item is not None
    assert _snapshots.decode_snapshot_state(item.value).seq > 300 - _snapshots.CHECKPOINT_EVERY
    events = [(e.seq, e.event) for e in convs.events(tid)]
    customer = convs.customer(convs.thread_state(tid).customer_id).state
    policy = DEFAULT_POLICIES["agent"]
    full = project(fold_snapshot(tid, events), audience="agent", policy=policy, customer=customer)
    assert convs.snapshot(tid).to_json() == full.to_json()


def test_a_checkpoint_of_rewritten_events_is_not_used(store_factory) -> None:
    """Erasure rewrites events in place; a checkpoint folded before that is discarded."""
    from convthread.ports import Batch, Rewrite

    convs, tid = _scenario(store_factory())
    for i in range(3, 3 + _snapshots.CHECKPOINT_EVERY):
        convs.ingest(msg(f"z{i}", channel="sms", text=f"secret {i}"))
    key = _snapshots.checkpoint_key(tid)
    assert convs.store.get("hsnap", key) is not None
    assert "secret" in convs.snapshot(tid).to_json().decode()
    # rewrite every message event as erased, the first event without its decision
    rewrites = []
    for stored in convs.events(tid):
        ev = stored.event
        if isinstance(ev, ct.MessageReceived | ct.MessageSent):
            new: Any = ct.MessageErased(at=ev.at, original_type="message_received")
        elif isinstance(ev, ct.ThreadStarted):
            new = msgspec.structs.replace(ev, decision=None)
        else:
            continue
        rewrites.append(Rewrite(tid, stored.seq, codec.encode(new)))
    convs.store.commit(Batch(rewrites=tuple(rewrites)))
    snap = convs.snapshot(tid)
    assert "secret" not in snap.to_json().decode()
    assert all(m.erased for m in snap.messages)


def test_customer_snapshot_applies_the_disclosure_policy() -> None:
    """A session that arrived with only a claim sees its own messages, nothing earlier."""
    from datetime import datetime, timezone

    import convthread as ct
    from convthread.errors import ValidationError

    clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    convs = ct.Conversations("memory://", clock=clock, ids=ct.SequentialIds())
    phone = ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED)
    mail = ct.email("dana@example.com")

    def msg(pid: str, text: str, *sender: ct.SenderIdentifier) -> ct.Inbound:
        clock.advance(minutes=1)
        return ct.Inbound(
            channel="sms" if pid.startswith("SM") else "email",
            provider_message_id=pid,
            sender=sender,
            content=ct.Content(text=text),
            sent_at=clock.now(),
        )

    first = convs.ingest(
        msg(
            "SM1",
            "my card ends 4242, order AC-1",
            phone,
            ct.SenderIdentifier(mail, ct.Trust.CLAIMED),
        )
    )
    claimed = convs.ingest(msg("<m1@x>", "any news?", ct.SenderIdentifier(mail, ct.Trust.CLAIMED)))
    assert claimed.thread_id == first.thread_id

    with pytest.raises(ValidationError, match="session"):
        convs.snapshot(first.thread_id, audience="customer")
    seen = convs.snapshot(first.thread_id, audience="customer", session=claimed)
    assert [m.seq for m in seen.messages] == [claimed.seq]
    assert "4242" not in seen.to_json().decode()
    trusted = convs.snapshot(first.thread_id, audience="customer", session=first)
    assert [m.seq for m in trusted.messages] == [first.seq, claimed.seq]
