"""Bad arguments at the public API: every public method of ``Conversations`` and
``AsyncConversations``, given a value outside its annotated type, a string with a lone
surrogate or a naive datetime in any one argument, raises a ``ConvthreadError`` (a
``ValidationError``) and leaves the store exactly as it was.

The methods are listed from the classes themselves (as tests/test_public_api.py does),
so a new method is covered the day it is added."""

from __future__ import annotations

import asyncio
import copy
import inspect
import types
import typing
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.model import Content, Identifier, Inbound, Party, SenderIdentifier, Trust
from convthread.errors import ConvthreadError, ValidationError
from convthread.ports import ManualClock, SequentialIds
from convthread.stores import MemoryStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SERVICES = [ct.Conversations, ct.AsyncConversations]


def public_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name != "close"
    )


def inbound(n: int = 1, text: str = "hello") -> Inbound:
    return Inbound(
        channel="sms",
        provider_message_id=f"SM{n}",
        sender=(SenderIdentifier(ct.phone("+14155550100"), Trust.ASSERTED),),
        content=Content(text=text),
        sent_at=T0 + timedelta(seconds=n),
    )


class World(msgspec.Struct):
    store: MemoryStore
    service: Any
    thread_id: str
    customer_id: str
    handoff_id: str


def make_world(cls: type) -> World:
    store = MemoryStore()
    sync = ct.Conversations(store, clock=ManualClock(T0), ids=SequentialIds())
    r = sync.ingest(inbound())
    h = sync.request_handoff(r.thread_id, to="queue:billing", reason="refund")
    service = sync if cls is ct.Conversations else ct.AsyncConversations(store)
    return World(store, service, r.thread_id, r.customer_id, h.id)


def contents(store: MemoryStore) -> Any:
    return copy.deepcopy((store._streams, store._kv))


def good_value(world: World, name: str, hint: Any) -> Any:
    """A value of the parameter's type (the other arguments of a call)."""
    members = typing.get_args(hint) if _is_union(hint) else (hint,)
    if name in ("thread_id", "session_thread"):
        return world.thread_id
    if name in ("customer_id", "a", "b"):
        return world.customer_id
    if name == "handoff_id":
        return world.handoff_id
    for member in members:
        if member is str:
            return "agent:a" if name in ("by", "to", "sender", "controller") else "x"
        if member is Party:
            return Party.parse("agent:a")
        if member is Identifier:
            return ct.phone("+14155550100")
        if member is SenderIdentifier:
            return SenderIdentifier(ct.phone("+14155550100"), Trust.ASSERTED)
        if member is Inbound:
            return inbound(2)
        if typing.get_origin(member) is Sequence:
            return [inbound(3)]
        if member is bool:
            return False
        if member is int:
            return 1
        if member is float:
            return 0.5
        if member is datetime:
            return T0
        if member is timedelta:
            return timedelta(minutes=1)
        if member is Trust:
            return Trust.CLAIMED
        if member is object:
            return "v"
    if type(None) in members:
        return None
    return inbound(4)  # ChannelResult, a union of report types: an Inbound is one


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def bad_values(hint: Any) -> list[Any]:
    """Values this parameter's annotation does not admit (decided independently of the
    library's own check: each candidate is wrong unless the annotation names its type)."""
    members = typing.get_args(hint) if _is_union(hint) else (hint,)
    if object in members or Any in members:
        return ["a\ud800b", datetime(2026, 1, 1)]  # any value, but it must be storable
    out: list[Any] = [b"bytes", object(), "a\ud800b", datetime(2026, 1, 1), {"k": "v"}]
    if type(None) not in members:
        out.append(None)
    if int not in members and float not in members:
        out.append(42)
    if float not in members:
        out.append(1.5)
    # an Iterable is read lazily: a wrong item in it is reported, not raised (an import
    # reports it as a failure, see test_import), so a list is not a bad value for one
    if not any(typing.get_origin(m) in (Sequence, Iterable) for m in members):
        out.append(["x"])
    return out


def call(service: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = getattr(service, name)(*args, **kwargs)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


def cases() -> list[tuple[type, str]]:
    return [(cls, name) for cls in SERVICES for name in public_methods(cls)]


@pytest.mark.parametrize(("cls", "name"), cases(), ids=lambda v: getattr(v, "__name__", v))
def test_a_bad_argument_is_a_typed_error_and_writes_nothing(cls: type, name: str) -> None:
    world = make_world(cls)
    fn = getattr(cls, name)
    hints = typing.get_type_hints(fn)
    params = [p for p in list(inspect.signature(fn).parameters.values())[1:] if p.name in hints]
    required = [p for p in params if p.default is inspect.Parameter.empty]
    before = contents(world.store)
    tried = 0
    for target in params:
        for bad in bad_values(hints[target.name]):
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for p in required:
                value = bad if p is target else good_value(world, p.name, hints[p.name])
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    kwargs[p.name] = value
                else:
                    args.append(value)
            if target not in required:
                kwargs[target.name] = bad
            try:
                call(world.service, name, args, kwargs)
            except ConvthreadError:
                pass
            except Exception as exc:  # the failure to report: a raw error escaped
                pytest.fail(
                    f"{cls.__name__}.{name}({target.name}={bad!r}) raised "
                    f"{type(exc).__name__}: {exc}"
                )
            else:
                pytest.fail(f"{cls.__name__}.{name}({target.name}={bad!r}) was accepted")
            assert contents(world.store) == before, f"{name}({target.name}={bad!r}) wrote"
            tried += 1
    assert tried or not params, f"{name}: no bad value tried"


def test_every_public_method_is_covered() -> None:
    covered = {name for _, name in cases()}
    for cls in SERVICES:
        assert set(public_methods(cls)) <= covered
    assert len(covered) > 40  # the listing found the methods


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-16", exclude_categories=["Cs"]), max_size=8),
    surrogate=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    where=st.sampled_from(["content", "thread_id", "reason", "attribute", "party"]),
)
def test_a_lone_surrogate_anywhere_is_refused(text: str, surrogate: str, where: str) -> None:
    world = make_world(ct.Conversations)
    convs = world.service
    bad = text + surrogate + text
    before = contents(world.store)
    calls = {
        "content": lambda: convs.send(world.thread_id, bad, sender="agent:a"),
        "thread_id": lambda: convs.send(bad, "hi", sender="agent:a"),
        "reason": lambda: convs.resolve(world.thread_id, by="agent:a", reason=bad),
        "attribute": lambda: convs.set_attribute(world.thread_id, "note", {"k": [bad]}),
        "party": lambda: convs.send(world.thread_id, "hi", sender=f"agent:{bad}"),
    }
    with pytest.raises(ValidationError, match="surrogate"):
        calls[where]()
    assert contents(world.store) == before


@pytest.mark.parametrize(
    "build",
    [
        lambda: Content(text=None),  # type: ignore[arg-type]
        lambda: Content(text="a\udc00"),
        lambda: Content(metadata={1: "one"}),  # type: ignore[dict-item]
        lambda: Content(metadata={"nested": {2: "two"}}),
        lambda: Content(attachments=["not an attachment"]),  # type: ignore[list-item]
        lambda: Identifier("phone", "+1\ud800"),
        lambda: SenderIdentifier("phone:+14155550100"),  # type: ignore[arg-type]
        lambda: SenderIdentifier(ct.phone("+14155550100"), "sure"),  # type: ignore[arg-type]
        lambda: Party.parse(None),  # type: ignore[arg-type]
        lambda: msgspec.structs.replace(inbound(), sender=inbound().sender[0]),
        lambda: msgspec.structs.replace(inbound(), provider_message_id="SM\ud800"),
        lambda: msgspec.structs.replace(inbound(), content="hello"),
    ],
)
def test_bad_values_are_refused_where_they_enter_the_model(build: Any) -> None:
    with pytest.raises(ValidationError):
        build()


def test_a_sender_trust_given_by_name_is_read() -> None:
    sender = SenderIdentifier(ct.phone("+14155550100"), "verified")  # type: ignore[arg-type]
    assert sender.trust is Trust.VERIFIED


def test_send_refuses_a_bad_channel_name_and_writes_nothing() -> None:
    world = make_world(ct.Conversations)
    before = contents(world.store)
    with pytest.raises(ValidationError, match="channel name"):
        world.service.send(world.thread_id, "hi", sender="agent:a", channel="Not A Channel")
    assert contents(world.store) == before
    sent = world.service.send(world.thread_id, "hi", sender="agent:a", channel="whatsapp")
    assert world.service.thread_state(world.thread_id).last_channel == "whatsapp"
    assert sent.seq > 0


def test_expire_handoffs_refuses_a_naive_time() -> None:
    world = make_world(ct.Conversations)
    with pytest.raises(ValidationError, match="naive"):
        world.service.expire_handoffs(now=datetime(2026, 3, 2, 9, 5))


# -- metadata objects, names and round trips


class _PydanticOrder:  # built lazily: pydantic is a test dependency
    @staticmethod
    def model() -> Any:
        import pydantic

        class Order(pydantic.BaseModel):
            number: str
            total: float

        return Order


@pytest.mark.parametrize("kind", ["pydantic", "dataclass", "attrs", "struct"])
def test_metadata_objects_are_accepted_alike_and_read_back(kind: str) -> None:
    import dataclasses

    import attrs

    from convthread.codec import read_as

    @dataclasses.dataclass
    class DOrder:
        number: str
        total: float

    @attrs.define
    class AOrder:
        number: str
        total: float

    class SOrder(msgspec.Struct):
        number: str
        total: float

    types_ = {"pydantic": _PydanticOrder.model(), "dataclass": DOrder, "attrs": AOrder}
    order_type = types_.get(kind, SOrder)
    order = order_type(number="A-1", total=9.5)
    plain = {"number": "A-1", "total": 9.5}

    content = Content(text="my order", metadata={"order": order})
    assert content.metadata == {"order": plain}  # plain JSON values from the start
    world = make_world(ct.Conversations)
    world.service.send(world.thread_id, content, sender="agent:a")
    world.service.set_attribute(world.thread_id, "order", order)
    view = world.service.thread(world.thread_id)
    sent = view.events[-2].event
    assert sent.content.metadata == {"order": plain}  # type: ignore[union-attr]
    assert view.state.attributes["order"] == plain
    assert read_as(sent.content.metadata["order"], order_type) == order  # type: ignore[union-attr]


def test_thread_state_has_thread_id_like_every_other_result() -> None:
    world = make_world(ct.Conversations)
    state = world.service.thread_state(world.thread_id)
    assert state.thread_id == state.id == world.thread_id


def test_snapshot_and_exported_views_decode_from_their_json() -> None:
    from convthread.codec import from_json, to_json
    from convthread.domain.snapshot import Snapshot
    from convthread.service import StoredEvent, ThreadView

    world = make_world(ct.Conversations)
    world.service.set_attribute(world.thread_id, "plan", {"tier": "gold", "n": [1, 2]})
    snap = world.service.snapshot(world.thread_id)
    assert Snapshot.from_json(snap.to_json()) == snap
    assert Snapshot.from_json(snap.to_json().decode()) == snap
    view = world.service.thread(world.thread_id)
    assert from_json(to_json(view), ThreadView) == view
    events = world.service.events(world.thread_id)
    assert from_json(to_json(events), list[StoredEvent]) == events
    with pytest.raises(ValidationError):
        Snapshot.from_json(b'{"thread_id": 3}')
    with pytest.raises(ValidationError):
        from_json(b"[1]", ThreadView)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, w: c.resolve(w.thread_id, by="system"),
        lambda c, w: c.erase_customer(w.customer_id, by="system"),
        lambda c, w: c.merge(w.customer_id, w.customer_id, by="dpo:1"),
        lambda c, w: c.link(w.customer_id, ct.email("a@example.com"), by="nobody"),
    ],
)
def test_one_rule_for_parties_everywhere(call: Any) -> None:
    world = make_world(ct.Conversations)
    before = contents(world.store)
    with pytest.raises(ValidationError, match="kind"):
        call(world.service, world)
    assert contents(world.store) == before


def test_an_identity_change_records_the_party_as_written() -> None:
    world = make_world(ct.Conversations)
    by = Party.parse("agent:alice")
    world.service.link(world.customer_id, ct.email("a@example.com"), by=by)
    steps = world.service.explain(ct.email("a@example.com")).steps
    assert any("agent:alice" in str(step) for step in steps)
