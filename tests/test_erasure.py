"""Erasing a customer: nothing personal readable through the API or left in the files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import convthread as ct
from convthread._heads import head_of, state_of
from convthread.errors import NotFound
from convthread.ports import HeadWrite, Store
from convthread.service._core import (
    NS_CUSTOMER,
    NS_HSNAP,
    NS_IDEM,
    NS_IDENT,
    NS_LATEST,
    NS_MARK,
    NS_MSG,
    NS_OPEN,
    TENANT,
)
from convthread.service._erasure import erased_thread_event
from convthread.stores import MemoryStore, SQLiteStore

from ._thread_util import all_heads
from .conftest import POSTGRES_URL, require_postgres

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
MARK = "zq7marker"  # appears in the text, the e-mail address, the Message-ID
PHONE = "+447911123461"  # the phone marker (E.164, as stored)
OTHER_PHONE = "+447911123999"
ALL_NS = (NS_MSG, NS_IDEM, NS_IDENT, NS_CUSTOMER, NS_OPEN, NS_LATEST)


def sms(pid: str, text: str, phone: str = PHONE, minutes: int = 0) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=pid,
        sender=(ct.SenderIdentifier(ct.phone(phone), ct.Trust.ASSERTED),),
        content=ct.Content(text=text, metadata={"note": f"{MARK} meta"} if phone == PHONE else {}),
        sent_at=T0 + timedelta(minutes=minutes),
    )


def mail(pid: str, text: str, minutes: int = 0) -> ct.Inbound:
    return ct.Inbound(
        channel="email",
        provider_message_id=pid,
        sender=(
            ct.SenderIdentifier(ct.email(f"Jo.{MARK}@Example.com"), ct.Trust.CLAIMED),
            ct.SenderIdentifier(ct.phone(PHONE), ct.Trust.CLAIMED),
        ),
        content=ct.Content(text=text),
        subject=f"Order {MARK}",
        sent_at=T0 + timedelta(minutes=minutes),
        idempotency_key=f"idem-{MARK}-{pid}",
    )


def populate(convs: ct.Conversations) -> tuple[str, str]:
    """A customer with the markers everywhere, and an unrelated customer."""
    r1 = convs.ingest(sms("SM1", f"hello {MARK} my order is 12345"))
    convs.ingest(mail(f"<a1.{MARK}@mail.example.com>", f"Re: {MARK} by mail", 5))
    convs.send(
        r1.thread_id,
        f"Thanks {MARK}, we are on it",
        sender="agent:alice",
        provider_message_id=f"out-{MARK}",
        idempotency_key=f"send-{MARK}",
    )
    other = convs.ingest(sms("SM9", "unrelated customer", phone=OTHER_PHONE))
    assert other.customer_id != r1.customer_id
    return r1.customer_id, other.customer_id


def personal_strings(store: Store) -> list[str]:
    """Every index entry and event a reader could reach, as text."""
    out: list[str] = []
    for ns in (*ALL_NS, NS_MARK, NS_HSNAP):
        for key, item in store.scan(ns, limit=100_000):
            out.append(f"{ns}/{key}={item.value!r}")
    heads = all_heads(store)
    out.extend(repr(h) for h in heads)  # the columns, and the state bytes as they are
    out.extend(repr(state_of(h)) for h in heads)
    streams = {h.thread_id for h in heads}
    streams |= {key for key, _ in store.scan(NS_CUSTOMER, limit=100_000)}
    for stream in streams:
        out.extend(repr(rec.data) for rec in store.read(stream))
    return out


@pytest.fixture
def clock() -> ct.ManualClock:
    return ct.ManualClock(T0)


def _convs(store: Store, clock: ct.ManualClock) -> ct.Conversations:
    return ct.Conversations(store, clock=clock, ids=ct.SequentialIds())


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        store: Store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "erase.db")
    else:
        require_postgres()
        from convthread.stores.postgres import PostgresStore

        store = PostgresStore(POSTGRES_URL, schema=f"t_erase_{abs(hash(tmp_path)) % 10**9}")
        store.drop_schema()
        store.close()
        store = PostgresStore(POSTGRES_URL, schema=f"t_erase_{abs(hash(tmp_path)) % 10**9}")
    yield store
    if request.param == "postgres":
        store.drop_schema()  # type: ignore[attr-defined]
    store.close()


def test_erase_removes_everything_personal(any_store: Store, clock: ct.ManualClock) -> None:
    convs = _convs(any_store, clock)
    customer_id, other_id = populate(convs)
    threads_before = convs.customer(customer_id).thread_ids
    assert any(MARK in s or PHONE in s for s in personal_strings(any_store))

    report = convs.erase_customer(customer_id, by="agent:dpo")

    assert report.customer_ids == (customer_id,)
    assert set(report.thread_ids) == set(threads_before)
    assert report.events_rewritten > 0 and report.entries_deleted > 0
    leaks = [s for s in personal_strings(any_store) if MARK in s.lower() or PHONE in s]
    assert leaks == []
    # Through the API: nothing personal, identifiers resolve to no one.
    assert convs.find_customer(ct.phone(PHONE)) is None
    assert convs.find_customer(ct.email(f"jo.{MARK}@example.com")) is None
    view = convs.customer(customer_id)
    assert view.state.erased and view.state.identifiers == {}
    for tid in threads_before:
        thread = convs.thread(tid)
        assert MARK not in repr(thread) and PHONE not in repr(thread)
        kinds = {type(e.event).__name__ for e in thread.events}
        assert "MessageReceived" not in kinds and "MessageSent" not in kinds
        assert thread.state.attributes == {} and thread.state.topic is None
    # The other customer is untouched.
    assert convs.find_customer(ct.phone(OTHER_PHONE)) == other_id
    assert convs.customer(other_id).state.erased is False


def test_erase_is_idempotent(any_store: Store, clock: ct.ManualClock) -> None:
    convs = _convs(any_store, clock)
    customer_id, _ = populate(convs)
    convs.erase_customer(customer_id)
    snapshot = personal_strings(any_store)
    again = convs.erase_customer(customer_id)
    assert (again.events_rewritten, again.entries_deleted) == (0, 0)
    assert personal_strings(any_store) == snapshot
    assert convs.customer(customer_id).state.erased


def test_erase_unknown_customer_is_not_found(clock: ct.ManualClock) -> None:
    convs = _convs(MemoryStore(), clock)
    with pytest.raises(NotFound):
        convs.erase_customer("cu_missing")


def test_the_same_person_writing_again_is_a_new_customer(clock: ct.ManualClock) -> None:
    convs = _convs(MemoryStore(), clock)
    customer_id, _ = populate(convs)
    convs.erase_customer(customer_id)
    again = convs.ingest(sms("SM-new", "hello again"))
    assert again.new_customer and again.customer_id != customer_id


def test_sqlite_file_bytes_hold_no_marker(tmp_path: Path, clock: ct.ManualClock) -> None:
    path = tmp_path / "support.db"
    convs = _convs(SQLiteStore(path), clock)
    customer_id, _ = populate(convs)
    # Plenty of other traffic around, so pages are shared with other rows.
    for i in range(50):
        convs.ingest(sms(f"X{i}", f"filler message {i} " + "x" * 150, phone=OTHER_PHONE))
    markers = [MARK.encode(), PHONE.encode(), b"my order is 12345", b"we are on it"]

    def file_bytes() -> bytes:
        return b"".join(
            p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
        )

    assert all(m in file_bytes() for m in markers)  # the test can fail
    convs.erase_customer(customer_id)
    data = file_bytes()
    assert [m for m in markers if m in data] == []
    assert MARK.upper().encode() not in data
    # A reopened store still works and still holds the other customer.
    convs.close()
    reopened = _convs(SQLiteStore(path), clock)
    assert reopened.find_customer(ct.phone(OTHER_PHONE)) is not None
    reopened.close()


def test_erasing_either_side_of_a_merge_erases_both() -> None:
    """Built at the store level: survivor absorbed another customer (merge events as the
    merge engineer records them)."""
    clock = ct.ManualClock(T0)
    store = MemoryStore()
    convs = _convs(store, clock)
    a = convs.ingest(sms("A1", f"first {MARK}"))
    b = convs.ingest(sms("B1", f"second {MARK}", phone=OTHER_PHONE))
    _merge_by_hand(store, survivor=a.customer_id, absorbed=b.customer_id, thread=b.thread_id)
    report = convs.erase_customer(b.customer_id)  # the absorbed side
    assert set(report.customer_ids) == {a.customer_id, b.customer_id}
    assert set(report.thread_ids) == {a.thread_id, b.thread_id}
    assert [s for s in personal_strings(store) if MARK in s or OTHER_PHONE in s] == []
    assert convs.find_customer(ct.phone(OTHER_PHONE)) is None


def _merge_by_hand(store: Store, survivor: str, absorbed: str, thread: str) -> None:
    from convthread import codec
    from convthread.domain.thread import evolve_customer
    from convthread.ports import Append, Batch, Put
    from convthread.service._core import IdentRef, decode_customer_state

    s_item = store.get(NS_CUSTOMER, survivor)
    a_item = store.get(NS_CUSTOMER, absorbed)
    assert s_item is not None and a_item is not None
    s_state = decode_customer_state(s_item.value)
    a_state = decode_customer_state(a_item.value)
    moved = tuple(a_state.identifiers.values())
    event = ct.CustomerMerged(
        at=T0,
        merge_id="mg_1",
        survivor=survivor,
        absorbed=absorbed,
        identifiers=moved,
        threads=(thread,),
    )
    t_head = store.get_heads(TENANT, [thread])[thread]
    t_state = state_of(t_head)
    reassigned = ct.ThreadReassigned(at=T0, customer_id=survivor, previous_customer_id=absorbed)
    from convthread.domain.thread import evolve

    new_t = evolve(t_state, t_state.version + 1, reassigned)
    s_new = evolve_customer(s_state, survivor, s_state.version + 1, event)
    a_new = evolve_customer(a_state, absorbed, a_state.version + 1, event)
    store.commit(
        Batch(
            appends=(
                Append(survivor, s_state.version, (codec.encode(event),)),
                Append(absorbed, a_state.version, (codec.encode(event),)),
                Append(thread, t_state.version, (codec.encode(reassigned),)),
            ),
            puts=(
                Put(NS_CUSTOMER, survivor, codec.encode(s_new), s_item.version),
                Put(NS_CUSTOMER, absorbed, codec.encode(a_new), a_item.version),
                *(Put(NS_IDENT, i.key, codec.encode(IdentRef(survivor))) for i, _t in moved),
            ),
            heads=(HeadWrite(head_of(new_t, TENANT), t_head.version),),
        )
    )


def test_erased_event_forms_hold_no_text() -> None:
    ev = ct.LifecycleChanged(at=T0, status=ct.ThreadStatus.RESOLVED, reason=f"by {MARK}")
    assert MARK not in repr(erased_thread_event(ev))
    msg = ct.MessageSent(
        at=T0, channel="sms", sender=ct.Party.parse("agent:a"), content=ct.Content(text=MARK)
    )
    erased = erased_thread_event(msg)
    assert isinstance(erased, ct.MessageErased) and erased.original_type == "message_sent"


def test_async_erase(clock: ct.ManualClock) -> None:
    async def main() -> None:
        convs = ct.AsyncConversations(MemoryStore(), clock=clock, ids=ct.SequentialIds())
        r = await convs.ingest(sms("SM1", f"hi {MARK}"))
        report = await convs.erase_customer(r.customer_id)
        assert report.customer_ids == (r.customer_id,)
        assert await convs.find_customer(ct.phone(PHONE)) is None
        thread = await convs.thread(r.thread_id)
        assert MARK not in repr(thread)

    asyncio.run(main())


def test_side_indexes_of_the_customer_go_and_others_stay(clock: ct.ManualClock) -> None:
    """Handoff snapshots, marks, early statuses and unsupported entries kept for review."""
    from convthread import codec
    from convthread.domain.updates import Unsupported
    from convthread.ports import Batch, Put
    from convthread.service._core import NS_EARLY, NS_UNSUPPORTED

    store = MemoryStore()
    convs = _convs(store, clock)
    customer_id, other_id = populate(convs)
    tid = convs.customer(customer_id).thread_ids[0]
    other_tid = convs.customer(other_id).thread_ids[0]

    def unsupported(pid: str, raw: object) -> bytes:
        return codec.encode(
            Unsupported(channel="sms", reason="sticker", provider_message_id=pid, raw=raw)
        )

    store.commit(
        Batch(
            puts=(
                Put(NS_HSNAP, f"{tid}|ho_1", f"snapshot of {MARK}".encode()),
                Put(NS_HSNAP, f"{other_tid}|ho_2", b"other snapshot"),
                Put(NS_MARK, f"{tid}|2", b"mark"),
                Put(NS_MARK, f"{other_tid}|2", b"other mark"),
                Put(NS_EARLY, "sms|SM1", b"early"),
                Put(NS_UNSUPPORTED, "001|a", unsupported("SM1", {"x": 1})),
                Put(NS_UNSUPPORTED, "002|b", unsupported("ZZ", {"from": PHONE})),
                Put(NS_UNSUPPORTED, "003|c", unsupported("SM9", {"from": OTHER_PHONE})),
            )
        )
    )
    convs.erase_customer(customer_id)
    assert [k for k, _ in store.scan(NS_HSNAP)] == [f"{other_tid}|ho_2"]
    assert [k for k, _ in store.scan(NS_MARK)] == [f"{other_tid}|2"]
    assert store.scan(NS_EARLY) == []
    assert [k for k, _ in store.scan(NS_UNSUPPORTED)] == ["003|c"]


@pytest.mark.parametrize("erase_side", ["survivor", "absorbed"])
def test_real_merge_then_erase_takes_both(clock: ct.ManualClock, erase_side: str) -> None:
    convs = _convs(MemoryStore(), clock)
    a = convs.ingest(sms("A1", f"first {MARK}"))
    b = convs.ingest(sms("B1", f"second {MARK}", phone=OTHER_PHONE))
    merged = convs.merge(a.customer_id, b.customer_id, by="agent:alice", reason="same person")
    survivor, absorbed = merged.survivor, merged.absorbed
    report = convs.erase_customer(survivor if erase_side == "survivor" else absorbed)
    assert set(report.customer_ids) == {a.customer_id, b.customer_id}
    assert {a.thread_id, b.thread_id} <= set(report.thread_ids)
    store = convs.store
    leaks = [s for s in personal_strings(store) if MARK in s or OTHER_PHONE in s or PHONE in s]
    assert leaks == []
    assert convs.find_customer(ct.phone(PHONE)) is None
    assert convs.find_customer(ct.phone(OTHER_PHONE)) is None


def test_unmerged_customer_is_not_erased(clock: ct.ManualClock) -> None:
    convs = _convs(MemoryStore(), clock)
    a = convs.ingest(sms("A1", "first"))
    b = convs.ingest(sms("B1", "second", phone=OTHER_PHONE))
    merged = convs.merge(a.customer_id, b.customer_id, by="agent:alice", reason="oops")
    convs.unmerge(merged.merge_id, by="agent:alice", reason="different people")
    report = convs.erase_customer(a.customer_id)
    assert report.customer_ids == (a.customer_id,)
    assert convs.find_customer(ct.phone(OTHER_PHONE)) == b.customer_id
    assert "second" in repr(convs.thread(b.thread_id))


def test_send_to_an_erased_customers_thread_is_refused() -> None:
    from datetime import datetime, timezone

    import convthread as ct
    from convthread.errors import ErasedError

    clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    convs = ct.Conversations("memory://", clock=clock, ids=ct.SequentialIds())
    result = convs.ingest(
        ct.Inbound(
            channel="sms",
            provider_message_id="SM-erase",
            sender=(ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),),
            content=ct.Content(text="please forget me"),
            sent_at=clock.now(),
        )
    )
    convs.erase_customer(result.customer_id)
    before = len(convs.events(result.thread_id))
    with pytest.raises(ErasedError):
        convs.send(result.thread_id, "are you still there?", sender="agent:alice")
    assert len(convs.events(result.thread_id)) == before


def test_handoff_reasons_are_erased_from_records_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A handoff requested 'because the customer said X' must not keep X after erasure."""
    from datetime import datetime, timezone

    import convthread as ct
    from convthread.stores import SQLiteStore

    marker = "HANDOFF-MARKER-7Q2Z"
    db = tmp_path / "handoff.db"
    clock = ct.ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))
    convs = ct.Conversations(SQLiteStore(db), clock=clock, ids=ct.SequentialIds())
    first = convs.ingest(
        ct.Inbound(
            channel="sms",
            provider_message_id="SM-h1",
            sender=(ct.SenderIdentifier(ct.phone("+447911123456"), ct.Trust.ASSERTED),),
            content=ct.Content(text="please call me"),
            sent_at=clock.now(),
        )
    )
    h = convs.request_handoff(first.thread_id, to="queue:support", reason=f"customer says {marker}")
    assert marker in convs.handoff(h.id).reason
    convs.erase_customer(first.customer_id)
    assert convs.handoff(h.id).reason == ""
    assert convs.handoff(h.id).status is not None  # the skeleton stays
    convs.erase_customer(first.customer_id)  # idempotent
    convs.close()
    data = b"".join(
        p.read_bytes()
        for p in (db, tmp_path / "handoff.db-wal", tmp_path / "handoff.db-shm")
        if p.exists()
    )
    assert marker.encode() not in data
