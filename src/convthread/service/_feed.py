"""The change feed as store-call generators, and the followers that wait on it.

* :func:`changes`: the stored events after a position, in position (commit) order, as
  :class:`~convthread.domain.feed.Change` records: decoded, with a dotted kind, the
  thread and the customer. Read from the events as they are now, so an event rewritten
  by erasure is read in its erased form.
* Named consumers keep a checkpoint, an index entry of the same store
  (``consumer``/``"{tenant}|{name}"``): :func:`ack` moves it forward (never back),
  :func:`commit_tracked` commits it together with the consumer's own writes, which is
  what makes a consumer's effects exactly-once when they live in the same database.
* :class:`Follower` (sync) and :class:`AsyncFollower` (asyncio) iterate over the feed
  and wait for new changes: on the store's watch where it has one (see
  :class:`~convthread.ports.FeedWatcher`), else by polling. A follower with a consumer
  name acknowledges a change once the next one is asked for, so every change is
  delivered at least once, and again after a crash before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Union, cast, get_args

import msgspec

from convthread import codec
from convthread.domain.events import CustomerEvent, ThreadEvent, ThreadStarted
from convthread.domain.feed import Change, Consumer, Tracking, change_kind
from convthread.errors import FeedUnavailable, StoreError, ValidationError
from convthread.ports import (
    ABSENT,
    AsyncFeedWatch,
    AsyncFeedWatcher,
    Batch,
    FeedReader,
    FeedWatch,
    FeedWatcher,
    Put,
    Recorded,
)
from convthread.service import _core as core
from convthread.service._core import Config, Op

if TYPE_CHECKING:
    from typing_extensions import Self

    from convthread.service._api import AsyncConversations, Conversations

#: Checkpoints of named consumers: "{tenant}|{consumer}" -> Checkpoint.
NS_CONSUMER: Final = "consumer"
#: The most changes one read returns.
MAX_LIMIT: Final = 10_000
#: How long a follower waits before reading again when the store has no watch, and
#: the longest it trusts a watch before reading anyway (seconds).
DEFAULT_POLL: Final = 1.0
#: By default a following consumer's acknowledgements are written at most this many
#: changes apart (and whenever it has caught up).
ACK_EVERY: Final = 100

_CUSTOMER_TYPES: Final = get_args(CustomerEvent)
_decode: Final[Callable[[bytes], ThreadEvent | CustomerEvent]] = codec.decoder(
    Union[ThreadEvent, CustomerEvent]  # type: ignore[arg-type]
)


class Checkpoint(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a consumer has got to: the last position it handled, and when."""

    position: int
    at: datetime


_checkpoint = codec.decoder(Checkpoint)


def check_consumer(name: object) -> str:
    """A consumer name: 1 to 200 printable characters, no "|" (it separates the key)."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 200
        or not name.isprintable()
        or name != name.strip()
    ):
        raise ValidationError(
            f"a consumer name is 1 to 200 printable characters without surrounding "
            f"spaces, got {name!r}"
        )
    return name


def check_position(value: object, what: str = "after") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"{what} must be a position (an int >= 0), got {value!r}")
    return value


def check_limit(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise ValidationError(f"limit must be an int from 1 to {MAX_LIMIT}, got {value!r}")
    return value


def require_feed(store: object) -> None:
    """Raise FeedUnavailable unless ``store`` reads events by position."""
    if not has_feed(store):
        raise FeedUnavailable(
            "this store has no change feed: it does not read events by position "
            "(convthread.ports.FeedReader); use MemoryStore, SQLiteStore or PostgresStore"
        )


def _key(name: str) -> str:
    return f"{core.TENANT}|{name}"


# --------------------------------------------------------------------------- reads


def changes(after: int, limit: int) -> Op[list[Change]]:
    """The changes after position ``after``, at most ``limit``, in position order
    (call :func:`require_feed` first)."""
    records: list[Recorded] = yield ("read_positions", (core.TENANT, after, limit))
    decoded = [(r, _decode(r.data)) for r in records]
    threads = sorted({r.stream for r, ev in decoded if not isinstance(ev, _CUSTOMER_TYPES)})
    heads = yield from core.get_heads(threads)
    out: list[Change] = []
    for rec, event in decoded:
        thread_id: str | None
        customer_id: str | None
        if isinstance(event, _CUSTOMER_TYPES):
            thread_id, customer_id = None, rec.stream
        else:
            head = heads.get(rec.stream)
            thread_id = rec.stream
            if head is not None:
                customer_id = head.customer_id
            elif isinstance(event, ThreadStarted):
                customer_id = event.customer_id
            else:
                customer_id = None
        out.append(
            Change(
                position=rec.position,
                tenant=core.TENANT,
                kind=change_kind(event),
                thread_id=thread_id,
                customer_id=customer_id,
                stream=rec.stream,
                seq=rec.seq,
                at=event.at,
                event=event,
            )
        )
    return out


def last_position() -> Op[int]:
    """The feed's last position (0 when it is empty)."""
    result: int = yield ("last_position", (core.TENANT,))
    return result


def consumer_position(name: str) -> Op[int]:
    """The last position ``name`` acknowledged (0 if it never did)."""
    item = yield from core.get(NS_CONSUMER, _key(check_consumer(name)))
    return 0 if item is None else _checkpoint(item.value).position


def consumers() -> Op[list[Consumer]]:
    """Every named consumer of the service's tenant, by name, with its lag."""
    prefix = f"{core.TENANT}|"
    found: list[tuple[str, Checkpoint]] = []
    after = ""
    while True:
        page = yield from core.scan(NS_CONSUMER, prefix, after, 1000)
        found.extend((key[len(prefix) :], _checkpoint(item.value)) for key, item in page)
        if len(page) < 1000:
            break
        after = page[-1][0]
    last = yield from last_position()
    return [
        Consumer(
            name=name,
            tenant=core.TENANT,
            position=cp.position,
            lag=max(last - cp.position, 0),
            updated_at=cp.at,
        )
        for name, cp in found
    ]


# --------------------------------------------------------------------------- writes


def ack(config: Config, name: str, position: int) -> Op[int]:
    """Record that ``name`` has handled every change up to ``position``; an older
    position than the one recorded changes nothing. Returns the consumer's position."""
    key = _key(check_consumer(name))
    check_position(position, "position")
    item = yield from core.get(NS_CONSUMER, key)
    current = 0 if item is None else _checkpoint(item.value).position
    if position <= current:
        return current
    last = yield from last_position()
    if position > last:
        raise ValidationError(f"position {position} is beyond the feed's last position {last}")
    value = codec.encode(Checkpoint(position, config.clock.now()))
    yield from core.commit(Batch(puts=(Put(NS_CONSUMER, key, value, _version(item)),)))
    return position


def _version(item: Any) -> int:
    return ABSENT if item is None else int(item.version)


#: Namespaces a tracked batch may not write: the service's own.
_RESERVED: Final = frozenset(
    value for name, value in vars(core).items() if name.startswith("NS_") and isinstance(value, str)
) | {NS_CONSUMER}


def check_tracked_batch(batch: object) -> Batch:
    if not isinstance(batch, Batch):
        raise ValidationError(f"batch must be a convthread.ports.Batch, got {batch!r}")
    if batch.appends or batch.rewrites or batch.heads:
        raise ValidationError(
            "a tracked batch holds only puts and deletes (index entries of the consumer's "
            "own namespaces): appends, rewrites and head writes are the service's"
        )
    for op in (*batch.puts, *batch.deletes):
        if op.ns in _RESERVED:
            raise ValidationError(f"namespace {op.ns!r} is the service's; use one of your own")
    return batch


def commit_tracked(config: Config, batch: Batch, tracking: Tracking) -> Op[bool]:
    """Commit ``batch`` and the consumer's checkpoint in one transaction, unless the
    checkpoint already is at or beyond ``tracking.position`` (then nothing is written:
    False). Concurrent commits for one consumer: one wins, the other re-reads and
    finds the position recorded."""
    check_tracked_batch(batch)
    key = _key(check_consumer(tracking.consumer))
    check_position(tracking.position, "tracking.position")
    item = yield from core.get(NS_CONSUMER, key)
    current = 0 if item is None else _checkpoint(item.value).position
    if tracking.position <= current:
        return False
    value = codec.encode(Checkpoint(tracking.position, config.clock.now()))
    checkpoint = Put(NS_CONSUMER, key, value, _version(item))
    yield from core.commit(Batch(puts=(*batch.puts, checkpoint), deletes=batch.deletes))
    return True


# --------------------------------------------------------------------------- followers


class _Start:
    """What a follower starts from: the position after which it reads."""

    @staticmethod
    def check(
        after: int | None, consumer: str | None, limit: int, poll: float, ack_every: int
    ) -> None:
        if not isinstance(ack_every, int) or isinstance(ack_every, bool) or ack_every < 1:
            raise ValidationError(f"ack_every must be an int >= 1, got {ack_every!r}")
        if after is not None:
            check_position(after)
        if consumer is not None:
            check_consumer(consumer)
        check_limit(limit)
        if not isinstance(poll, (int, float)) or isinstance(poll, bool) or not poll > 0:
            raise ValidationError(f"poll must be a number of seconds > 0, got {poll!r}")


class Follower(Iterator[Change]):
    """The changes of the feed, in order, waiting for new ones (see
    ``Conversations.follow``). Iterate it; :meth:`close` (from any thread, or leaving
    its ``with`` block) ends the iteration and releases the watch."""

    def __init__(
        self,
        service: Conversations,
        after: int | None,
        consumer: str | None,
        limit: int,
        poll: float,
        ack_every: int = ACK_EVERY,
    ) -> None:
        _Start.check(after, consumer, limit, poll, ack_every)
        self._ack_every = ack_every
        require_feed(service.store)
        self._service = service
        self.consumer = consumer
        self._limit = limit
        self._poll = float(poll)
        self._closed = threading.Event()
        self._pending: deque[Change] = deque()
        store = service.store
        # The watch listens before the first read: a commit after it is signalled.
        self._watch: FeedWatch | None = _open_watch(store)
        try:
            start = after
            if start is None:
                start = service.consumer_position(consumer) if consumer is not None else 0
        except BaseException:
            self._close_watch()
            raise
        #: The position of the last change handed out (where a restart would resume).
        self.position: int = start
        self._acked = start
        self._handed = 0  # changes handed out since the last acknowledgement

    def __repr__(self) -> str:
        return f"Follower(position={self.position}, consumer={self.consumer!r})"

    def __iter__(self) -> Self:
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __next__(self) -> Change:
        # Asking for the next change says the previous one was handled.
        if self.consumer is not None and self._handed >= self._ack_every:
            self._ack()
        while not self._closed.is_set():
            if self._pending:
                change = self._pending.popleft()
                self.position = change.position
                self._handed += 1
                return change
            page = self._service.changes(after=self.position, limit=self._limit)
            if page:
                self._pending.extend(page)
                continue
            if self.consumer is not None and self._handed:
                self._ack()
            self._wait()
        raise StopIteration

    def _wait(self) -> None:
        """Wait for a commit: on the watch, else (no watch, or it failed: a lost
        connection) for ``poll`` seconds, trying to open a new watch next time."""
        if self._watch is None and not self._closed.is_set():
            with contextlib.suppress(StoreError):
                self._watch = _open_watch(self._service.store)
        watch = self._watch
        if watch is not None:
            try:
                watch.wait(self._poll)
                return
            except StoreError:
                self._close_watch()
        self._closed.wait(self._poll)

    def _ack(self) -> None:
        assert self.consumer is not None
        if self.position > self._acked:
            self._service.ack(self.consumer, self.position)
            self._acked = self.position
        self._handed = 0

    def close(self) -> None:
        """End the iteration (a wait in progress returns) and release the watch. The
        last change handed out is not acknowledged: a restart delivers it again."""
        self._closed.set()
        self._close_watch()

    def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(StoreError):
                watch.close()


class AsyncFollower(AsyncIterator[Change]):
    """The asyncio form of :class:`Follower` (see ``AsyncConversations.follow``):
    ``async for`` over it; cancel the task or call :meth:`aclose` to stop."""

    def __init__(
        self,
        service: AsyncConversations,
        after: int | None,
        consumer: str | None,
        limit: int,
        poll: float,
        ack_every: int = ACK_EVERY,
    ) -> None:
        _Start.check(after, consumer, limit, poll, ack_every)
        self._ack_every = ack_every
        require_feed(service.store)
        self._service = service
        self.consumer = consumer
        self._after = after
        self._limit = limit
        self._poll = float(poll)
        self._pending: deque[Change] = deque()
        self._watch: AsyncFeedWatch | _PolledWatch | None = None
        self._started = False
        self._closed = False
        self.position = after or 0
        self._acked = self.position
        self._handed = 0

    def __repr__(self) -> str:
        return f"AsyncFollower(position={self.position}, consumer={self.consumer!r})"

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        self._started = True
        self._watch = await _async_watch(self._service.store)
        if self._after is None:
            self.position = (
                await self._service.consumer_position(self.consumer)
                if self.consumer is not None
                else 0
            )
            self._acked = self.position

    async def __anext__(self) -> Change:
        try:
            if not self._started:
                await self._start()
            if self.consumer is not None and self._handed >= self._ack_every:
                await self._ack()
            while not self._closed:
                if self._pending:
                    change = self._pending.popleft()
                    self.position = change.position
                    self._handed += 1
                    return change
                page = await self._service.changes(after=self.position, limit=self._limit)
                if page:
                    self._pending.extend(page)
                    continue
                if self.consumer is not None and self._handed:
                    await self._ack()
                await self._wait()
        except BaseException:
            await self._close_watch()
            raise
        await self._close_watch()
        raise StopAsyncIteration

    async def _wait(self) -> None:
        """As :meth:`Follower._wait`."""
        if self._watch is None:
            with contextlib.suppress(StoreError):
                self._watch = await _async_watch(self._service.store)
        watch = self._watch
        if watch is not None:
            try:
                await watch.wait(self._poll)
                return
            except StoreError:
                await self._close_watch()
        await asyncio.sleep(self._poll)

    async def _ack(self) -> None:
        assert self.consumer is not None
        if self.position > self._acked:
            await self._service.ack(self.consumer, self.position)
            self._acked = self.position
        self._handed = 0

    async def aclose(self) -> None:
        """End the iteration and release the watch (as :meth:`Follower.close`)."""
        self._closed = True
        await self._close_watch()

    async def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(StoreError):
                await watch.close()


class _PolledWatch:
    """An asyncio watch over a blocking store's watch, asked without blocking every
    :attr:`interval` seconds (the memory store's and SQLite's checks cost microseconds)."""

    interval = 0.002

    def __init__(self, watch: FeedWatch) -> None:
        self._watch = watch

    async def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._watch.wait(0):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.interval, left))

    async def close(self) -> None:
        self._watch.close()


def _open_watch(store: object) -> FeedWatch | None:
    """A new watch of ``store``, or None when it offers none."""
    watch = getattr(store, "watch", None)
    return cast("FeedWatcher", store).watch() if callable(watch) else None


async def _async_watch(store: object) -> AsyncFeedWatch | _PolledWatch | None:
    sync = getattr(store, "sync", None)  # a blocking store run by an adapter
    if sync is not None:
        watch = _open_watch(sync)
        return None if watch is None else _PolledWatch(watch)
    if callable(getattr(store, "watch", None)):
        return await cast("AsyncFeedWatcher", store).watch()
    return None


def has_feed(store: object) -> bool:
    """Whether ``store`` (or the blocking store an adapter runs) reads by position."""
    sync = getattr(store, "sync", None)
    if sync is not None:
        return isinstance(sync, FeedReader)
    return isinstance(store, FeedReader) or callable(getattr(store, "read_positions", None))
