"""The change feed: changes() is the stored events in position order, with kinds,
threads and customers; consumers, acknowledgements and tracked commits; followers
(sync and asyncio) that wait for new changes and stop cleanly; erasure in the feed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.feed import change_kind
from convthread.errors import FeedUnavailable, ValidationError
from convthread.ports import Batch, Delete, Put
from convthread.stores import MemoryStore, SQLiteStore
from tests._feed_workers import message
from tests._workers import T0
from tests.conftest import POSTGRES_URL, require_postgres

# --------------------------------------------------------------------------- stores


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def feed_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ct.Store]:
    if request.param == "memory":
        store: ct.Store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "feed.db")
    else:
        require_postgres()
        import os
        import random

        from convthread.stores.postgres import PostgresStore

        pg = PostgresStore(POSTGRES_URL, schema=f"feed_{os.getpid()}_{random.randrange(10**6)}")
        yield pg
        pg.drop_schema()
        pg.close()
        return
    yield store
    store.close()


def service(store: ct.Store) -> ct.Conversations:
    return ct.Conversations(store, clock=ct.ManualClock(T0), ids=ct.SequentialIds())


def all_changes(convs: ct.Conversations) -> list[ct.Change]:
    out: list[ct.Change] = []
    while page := convs.changes(after=out[-1].position if out else 0, limit=7):
        out.extend(page)
    return out


def a_life(convs: ct.Conversations) -> tuple[str, str]:
    """A thread that goes through most of what the feed shows."""
    r = convs.ingest(message("life", 1))
    tid = r.thread_id
    convs.send(tid, "hi", sender="bot:b")
    h = convs.request_handoff(tid, to="queue:billing", reason="refund")
    convs.offer_handoff(h.id, to="agent:alice")
    accepted = convs.accept_handoff(h.id, by="agent:alice")
    token = accepted.fencing_token
    assert token is not None
    convs.release_control(tid, by="agent:alice", fencing_token=token)
    convs.resolve(tid)
    convs.reopen(tid)
    convs.link(r.customer_id, ct.email("a@example.com"), trust=ct.Trust.CLAIMED)
    return tid, r.customer_id


def test_changes_show_every_event_in_order_with_kinds(feed_store: ct.Store) -> None:
    convs = service(feed_store)
    tid, cid = a_life(convs)
    changes = all_changes(convs)
    kinds = [c.kind for c in changes]
    for kind in (
        "customer.created",
        "identifier.linked",
        "thread.opened",
        "message.received",
        "message.sent",
        "handoff.requested",
        "handoff.offered",
        "handoff.accepted",
        "handoff.released",
        "thread.resolved",
        "thread.reopened",
    ):
        assert kind in kinds, kind
    positions = [c.position for c in changes]
    assert positions == sorted(set(positions))
    assert positions[-1] == convs.last_position()
    for c in changes:
        assert c.tenant == ""
        assert c.customer_id == cid
        assert c.thread_id == (tid if c.stream == tid else None)
        assert c.kind == change_kind(c.event)
        assert c.at == c.event.at
    # The feed is the stored events: the same events, seq by seq, as the stream reads.
    thread_events = [(e.seq, e.event) for e in convs.events(tid)]
    assert [(c.seq, c.event) for c in changes if c.stream == tid] == thread_events


def test_limits_and_positions_are_checked(feed_store: ct.Store) -> None:
    convs = service(feed_store)
    for bad in ({"after": -1}, {"limit": 0}, {"limit": 10_001}):
        with pytest.raises(ValidationError):
            convs.changes(**bad)
    assert convs.changes() == [] and convs.last_position() == 0


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from("ims")), min_size=1, max_size=12))
def test_changes_are_the_stored_events_in_position_order(
    steps: list[tuple[int, str]],
) -> None:
    store = MemoryStore()
    convs = service(store)
    threads: list[str] = []
    for n, (who, what) in enumerate(steps):
        if what == "s" and threads:
            convs.send(threads[who % len(threads)], f"r{n}", sender="agent:a")
        else:
            threads.append(convs.ingest(message(f"p{who}", n)).thread_id)
    changes = all_changes(convs)
    stored = sorted(
        (r.position, r.stream, r.seq, r.data)
        for stream in store._streams
        for r in store.read(stream)
    )
    assert [(c.position, c.stream, c.seq) for c in changes] == [s[:3] for s in stored]
    assert [ct.codec.encode(c.event) for c in changes] == [s[3] for s in stored]


# --------------------------------------------------------------------------- consumers


def test_ack_moves_a_consumer_forward_only(feed_store: ct.Store) -> None:
    convs = service(feed_store)
    a_life(convs)
    last = convs.last_position()
    assert convs.consumer_position("crm") == 0
    assert convs.ack("crm", 3) == 3
    assert convs.ack("crm", 2) == 3  # an older position changes nothing
    with pytest.raises(ValidationError):
        convs.ack("crm", last + 1)
    with pytest.raises(ValidationError):
        convs.ack("bad|name\n", 1)
    convs.ack("warehouse", last)
    listed = {c.name: (c.position, c.lag) for c in convs.consumers()}
    assert listed == {"crm": (3, last - 3), "warehouse": (last, 0)}


def test_commit_tracked_writes_effects_and_checkpoint_together(feed_store: ct.Store) -> None:
    convs = service(feed_store)
    a_life(convs)
    first, second = convs.changes(limit=2)
    effect = Batch(puts=(Put("metrics", "n", b"1"),))
    assert convs.commit_tracked(effect, ct.Tracking("metrics", first.position))
    assert convs.consumer_position("metrics") == first.position
    # A redelivery of a change already tracked writes nothing.
    again = Batch(puts=(Put("metrics", "n", b"2"),))
    assert not convs.commit_tracked(again, ct.Tracking("metrics", first.position))
    item = feed_store.get("metrics", "n")
    assert item is not None and item.value == b"1"
    assert convs.commit_tracked(
        Batch(deletes=(Delete("metrics", "n"),)), ct.Tracking("metrics", second.position)
    )
    assert feed_store.get("metrics", "n") is None
    for bad in (
        Batch(puts=(Put("ident", "x", b""),)),  # the service's namespace
        Batch(puts=(Put("consumer", "|metrics", b""),)),
    ):
        with pytest.raises(ValidationError):
            convs.commit_tracked(bad, ct.Tracking("metrics", second.position + 1))
    assert convs.consumer_position("metrics") == second.position


def test_a_store_without_the_feed_is_a_typed_error() -> None:
    from convthread.stores._kv import with_heads

    # A store of releases up to 0.1 runs behind the heads adapter, which has no feed.
    convs = ct.Conversations(with_heads(MemoryStore()))
    for call in (convs.changes, convs.last_position, convs.consumers, convs.follow):
        with pytest.raises(FeedUnavailable, match="no change feed"):
            call()


# --------------------------------------------------------------------------- following


def test_follow_waits_for_new_changes_and_closes_from_another_thread(
    feed_store: ct.Store,
) -> None:
    convs = service(feed_store)
    convs.ingest(message("f", 1))
    seen: list[ct.Change] = []
    got_one = threading.Event()
    feed = convs.follow(consumer="desk", poll=5.0, ack_every=1)

    def run() -> None:
        for change in feed:
            seen.append(change)
            got_one.set()

    reader = threading.Thread(target=run)
    reader.start()
    assert got_one.wait(10)
    before = len(seen)
    convs.ingest(message("f", 2))  # woken by the watch, well before the 5 s poll
    for _ in range(500):
        if len(seen) > before and seen[-1].position == convs.last_position():
            break
        threading.Event().wait(0.01)
    feed.close()
    reader.join(10)
    assert not reader.is_alive()
    assert [c.position for c in seen] == [c.position for c in all_changes(convs)]
    # The loop asked for the change after the last one (and waited): all acknowledged.
    assert convs.consumer_position("desk") == seen[-1].position


def test_follow_resumes_after_the_consumer_checkpoint() -> None:
    convs = service(MemoryStore())
    convs.ingest(message("r", 1))
    convs.ack("x", 2)
    with convs.follow(consumer="x", poll=0.01) as feed:
        assert next(feed).position == 3
    with convs.follow(after=0, consumer="x", poll=0.01) as feed:
        assert next(feed).position == 1  # an explicit start wins


def test_async_follow_sees_new_changes_and_cancels_cleanly(feed_store: ct.Store) -> None:
    sync = service(feed_store)
    sync.ingest(message("a", 1))

    async def main() -> list[int]:
        convs = ct.AsyncConversations(feed_store)
        seen: list[int] = []
        stop = convs.last_position
        last = await stop()

        async def consume() -> None:
            async for change in convs.follow(consumer="async", poll=5.0, ack_every=1):
                seen.append(change.position)

        task = asyncio.create_task(consume())
        for _ in range(500):
            if seen and seen[-1] == last:
                break
            await asyncio.sleep(0.01)
        await asyncio.to_thread(sync.ingest, message("a", 2))
        last = await stop()
        for _ in range(500):
            if seen[-1] == last:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(main())
    assert seen == [c.position for c in all_changes(sync)]


def test_async_follow_on_the_native_postgres_store() -> None:
    require_postgres()
    import os
    import random

    from convthread.stores.postgres import AsyncPostgresStore, PostgresStore

    schema = f"feeda_{os.getpid()}_{random.randrange(10**6)}"

    async def main() -> tuple[list[int], list[int]]:
        store = AsyncPostgresStore(POSTGRES_URL, schema=schema)
        convs = ct.AsyncConversations(store, clock=ct.ManualClock(T0))
        await convs.ingest(message("n", 1))
        seen: list[int] = []
        async with convs.follow(poll=5.0) as feed:
            async for change in feed:
                seen.append(change.position)
                if change.position == 3:
                    await convs.ingest(message("n", 2))  # NOTIFY wakes the follower
                if change.position == await convs.last_position() and len(seen) > 3:
                    break
        full = [c.position for c in await convs.changes(limit=1000)]
        await convs.close()
        return seen, full

    try:
        seen, full = asyncio.run(main())
        assert seen == full
    finally:
        with PostgresStore(POSTGRES_URL, schema=schema) as pg:
            pg.drop_schema()


# --------------------------------------------------------------------------- erasure


def test_erasure_leaves_an_erasure_change_and_no_personal_data(feed_store: ct.Store) -> None:
    convs = service(feed_store)
    tid, cid = a_life(convs)
    convs.set_attribute(tid, "order", "A-12345")
    before = all_changes(convs)
    convs.erase_customer(cid, by="agent:dpo")
    after = all_changes(convs)
    # Earlier changes keep their positions and kinds; only their content is gone.
    assert [(c.position, c.kind) for c in after[: len(before)]] == [
        (c.position, c.kind) for c in before
    ]
    text = b"".join(ct.codec.to_json(c) for c in after)
    for secret in (b"life 1", b"a@example.com", b"+1415555", b"A-12345", b"refund", b"hi"):
        assert secret not in text, secret
    erased = [c for c in after if c.kind == "customer.erased"]
    assert len(erased) == 1 and erased[0].customer_id == cid
    assert isinstance(erased[0].event, ct.CustomerErased)
    assert erased[0].event.threads == (tid,)
    assert erased[0].position == after[-1].position


def test_kinds_of_lifecycle_and_erased_events() -> None:
    at = T0 + timedelta(seconds=1)
    assert change_kind(ct.LifecycleChanged(at=at, status=ct.ThreadStatus.CLOSED)) == (
        "thread.status_changed"
    )
    assert change_kind(ct.CustomerErased(at=at)) == "customer.erased"
    assert change_kind(ct.CustomerErased(at=at, original_type="identifier_verified")) == (
        "identifier.verified"
    )


class _FailingWatch:
    def wait(self, timeout: float) -> bool:
        raise ct.errors.StoreUnavailable("the listening connection was lost")

    def close(self) -> None:
        pass


class _NoWatchStore(MemoryStore):
    watch = None  # type: ignore[assignment]  # a feed store that cannot wake followers


class _BrokenWatchStore(MemoryStore):
    def watch(self) -> _FailingWatch:  # type: ignore[override]
        return _FailingWatch()


@pytest.mark.parametrize("store_class", [_NoWatchStore, _BrokenWatchStore])
def test_follow_polls_when_the_store_cannot_watch(store_class: type[MemoryStore]) -> None:
    convs = service(store_class())
    convs.ingest(message("p", 1))
    seen: list[int] = []
    feed = convs.follow(poll=0.01)
    reader = threading.Thread(target=lambda: seen.extend(c.position for c in feed))
    reader.start()
    convs.ingest(message("p", 2))
    last = convs.last_position()
    for _ in range(1000):
        if seen and seen[-1] == last:
            break
        threading.Event().wait(0.01)
    feed.close()
    reader.join(10)
    assert seen == list(range(1, last + 1))
