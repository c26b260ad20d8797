"""The sync and asyncio drivers: run an operation's store calls against a store.

An operation is a generator of store calls that ends in (at most) one ``commit``. The
drivers keep these promises:

* A :class:`~convthread.errors.ConflictError` at the commit means another writer
  committed first; nothing was written. The driver runs the operation again from the
  start, on fresh reads, up to ``max_retries`` times. When that budget is spent it raises
  :class:`~convthread.errors.Contention` (a ``ConflictError``) carrying a ``retry_after``
  hint. A conflict raised by any other call is passed through unchanged.
* Writers in one process queue rather than race. The uncontended path takes no lock.
  Once a writer's commit has conflicted, it and every writer that arrives while any
  writer is queued run one at a time, in arrival order, through the store's gate: a FIFO
  lock per store for the sync driver, an ``asyncio.Lock`` per store and event loop for
  the async one. The backlog drains in order; when it is empty, writers run lock-free
  again. Operations run with ``max_retries=0`` (the reads) never queue, nor does a
  writer started inside the turn of the writer holding the gate (same thread or task).
* A writer that waited in the queue retries at once (its wait was the backoff). One that
  did not, the head of the queue meeting writers in other processes, first sleeps for an
  exponential backoff with full jitter: uniform in ``[0, min(BACKOFF_CAP, BACKOFF_BASE *
  2**attempt)]`` seconds.
* Writers in other processes share no queue with this one. A writer whose commit
  conflicted while it held the gate lost to one of them; where the store can hold
  streams (:class:`~convthread.ports.StreamHold`: PostgreSQL, SQLite), its later attempts
  hold the streams that commit conflicted on, from their first read to their commit, so
  the retries of a busy thread, in every process, queue in the database and each reads
  what the one before it wrote. Only those retries hold: the uncontended path, and a
  burst within one process that its queue resolves, cost nothing more. Nested writers do
  not hold, nor do streams new in the conflicted batch (version 0: a new id each time).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar
from typing import Any, Final, TypeVar

from convthread.errors import ConflictError, Contention, StoreError
from convthread.ports import (
    AsyncStore,
    AsyncStreamHold,
    Batch,
    HeadQuery,
    Item,
    Recorded,
    Store,
    StreamHold,
    ThreadHead,
)
from convthread.service._core import Op

T = TypeVar("T")

_rng = random.Random()

#: The first retry waits up to twice this (seconds); each later one doubles the window.
BACKOFF_BASE: Final = 0.002
#: The longest window a retry waits in (seconds).
BACKOFF_CAP: Final = 0.5


def backoff_window(attempt: int) -> float:
    """The upper bound of the wait before retry ``attempt`` (1-based)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 32))


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): full jitter in its window."""
    return _rng.uniform(0.0, backoff_window(attempt))


def _spent(exc: ConflictError, attempts: int) -> Contention:
    return Contention(str(exc), attempts=attempts, retry_after=backoff_window(attempts + 1))


class _Conflicted:
    """One attempt's commit conflicted; ``streams`` are the existing streams it appended
    to (what a retry holds, where the store can)."""

    __slots__ = ("error", "streams")

    def __init__(self, error: ConflictError, batch: object) -> None:
        self.error = error
        appends = batch.appends if isinstance(batch, Batch) else ()
        self.streams = [a.stream for a in appends if a.expected > 0]


# --------------------------------------------------------------------------- gates


class _SyncGate:
    """A FIFO lock and the count of writers queued on it (waiting or holding)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False
        self.queued = 0
        self.owner: int | None = None  # the thread holding the gate

    def mine(self) -> bool:
        return self.owner == threading.get_ident()

    def enter(self) -> bool:
        """Take the gate in arrival order; True when this writer had to wait."""
        with self._mutex:
            self.queued += 1
            if not self._held:
                self._held = True
                self.owner = threading.get_ident()
                return False
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by the writer ahead, which hands the gate over
        except BaseException:
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                    self.queued -= 1
                    raise
            self.owner = threading.get_ident()
            self.leave()  # the gate was handed over as this writer gave up
            raise
        self.owner = threading.get_ident()
        return True

    def leave(self) -> None:
        with self._mutex:
            self.queued -= 1
            self.owner = None
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


class _AsyncGate:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # FIFO: waiters are woken in arrival order
        self.queued = 0
        self.owner: asyncio.Task[Any] | None = None  # the task holding the gate

    def mine(self) -> bool:
        return self.owner is not None and self.owner is asyncio.current_task()

    async def enter(self) -> bool:
        self.queued += 1
        waited = self._lock.locked()
        try:
            await self._lock.acquire()
        except BaseException:
            self.queued -= 1
            raise
        self.owner = asyncio.current_task()
        return waited

    def leave(self) -> None:
        self.queued -= 1
        self.owner = None
        self._lock.release()


_gates_lock = threading.Lock()
_sync_gates: weakref.WeakKeyDictionary[Any, _SyncGate] = weakref.WeakKeyDictionary()
_async_gates: weakref.WeakKeyDictionary[
    Any, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncGate]
] = weakref.WeakKeyDictionary()
# Stores that cannot be weakly referenced or hashed get a gate by id (small, never freed).
_gates_by_id: dict[tuple[int, int], Any] = {}


def _sync_gate(store: object) -> _SyncGate:
    with _gates_lock:
        try:
            gate = _sync_gates.get(store)
            if gate is None:
                gate = _sync_gates[store] = _SyncGate()
        except TypeError:
            gate = _gates_by_id.setdefault((id(store), 0), _SyncGate())
        return gate


def _async_gate(store: object) -> _AsyncGate:
    loop = asyncio.get_running_loop()
    with _gates_lock:
        try:
            per_loop = _async_gates.get(store)
            if per_loop is None:
                per_loop = _async_gates[store] = weakref.WeakKeyDictionary()
        except TypeError:
            gate: _AsyncGate = _gates_by_id.setdefault((id(store), id(loop)), _AsyncGate())
            return gate
        gate = per_loop.get(loop) or per_loop.setdefault(loop, _AsyncGate())
        return gate


# --------------------------------------------------------------------------- drivers


def _once_sync(store: Store, factory: Callable[[], Op[T]]) -> T | _Conflicted:
    gen = factory()
    try:
        name, args = next(gen)
        while True:
            try:
                result = getattr(store, name)(*args)
            except ConflictError as exc:
                if name != "commit":
                    raise
                gen.close()
                return _Conflicted(exc, args[0] if args else None)
            name, args = gen.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _once_async(store: AsyncStore, factory: Callable[[], Op[T]]) -> T | _Conflicted:
    gen = factory()
    try:
        name, args = next(gen)
        while True:
            try:
                result = await getattr(store, name)(*args)
            except ConflictError as exc:
                if name != "commit":
                    raise
                gen.close()
                return _Conflicted(exc, args[0] if args else None)
            name, args = gen.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def run_once_sync(store: Store, op: Op[T]) -> T:
    """Run ``op`` once, without retries: what :func:`run_sync` does with no retry budget,
    minus the queue and hold bookkeeping a writer needs (a read costs a few µs; this
    keeps the driver's share of it small). A conflicting commit raises Contention."""
    try:
        name, args = next(op)
        while True:
            try:
                result = getattr(store, name)(*args)
            except ConflictError as exc:
                if name != "commit":
                    raise
                op.close()
                raise _spent(exc, 1) from exc
            name, args = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_once_async(store: AsyncStore, op: Op[T]) -> T:
    """The asyncio twin of :func:`run_once_sync`."""
    try:
        name, args = next(op)
        while True:
            try:
                result = await getattr(store, name)(*args)
            except ConflictError as exc:
                if name != "commit":
                    raise
                op.close()
                raise _spent(exc, 1) from exc
            name, args = op.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def run_sync(store: Store, factory: Callable[[], Op[T]], max_retries: int) -> T:
    gate = _sync_gate(store) if max_retries > 0 else None
    if gate is not None and gate.mine():
        gate = None  # a writer nested in the holder's turn runs within it
    queued = False
    try:
        if gate is not None and gate.queued:
            gate.enter()
            queued = True
        attempt = 0
        held: list[str] = []
        while True:
            if held:
                with store.hold(held):  # type: ignore[attr-defined]
                    outcome = _once_sync(store, factory)
            else:
                outcome = _once_sync(store, factory)
            if not isinstance(outcome, _Conflicted):
                return outcome
            if attempt >= max_retries:
                raise _spent(outcome.error, attempt + 1) from outcome.error
            attempt += 1
            if queued and outcome.streams and isinstance(store, StreamHold):
                held = outcome.streams  # a rival outside this process's queue won
            waited = False
            if gate is not None and not queued:
                waited = gate.enter()
                queued = True
            if not waited and not held:  # a hold waits in the database's queue instead
                time.sleep(backoff(attempt))
    finally:
        if queued:
            assert gate is not None
            gate.leave()


async def run_async(store: AsyncStore, factory: Callable[[], Op[T]], max_retries: int) -> T:
    gate = _async_gate(store) if max_retries > 0 else None
    if gate is not None and gate.mine():
        gate = None  # a writer nested in the holder's turn runs within it
    queued = False
    try:
        if gate is not None and gate.queued:
            await gate.enter()
            queued = True
        attempt = 0
        held: list[str] = []
        while True:
            if held:
                async with store.hold(held):  # type: ignore[attr-defined]
                    outcome = await _once_async(store, factory)
            else:
                outcome = await _once_async(store, factory)
            if not isinstance(outcome, _Conflicted):
                return outcome
            if attempt >= max_retries:
                raise _spent(outcome.error, attempt + 1) from outcome.error
            attempt += 1
            if queued and outcome.streams and isinstance(store, AsyncStreamHold):
                held = outcome.streams  # a rival outside this process's queue won
            waited = False
            if gate is not None and not queued:
                waited = await gate.enter()
                queued = True
            if not waited and not held:  # a hold waits in the database's queue instead
                await asyncio.sleep(backoff(attempt))
    finally:
        if queued:
            assert gate is not None
            gate.leave()


class InlineAsyncStore:
    """An AsyncStore over a sync store whose calls never block (the memory store)."""

    def __init__(self, store: Store) -> None:
        self.sync = store

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return self.sync.read(stream, after, limit)

    async def version(self, stream: str) -> int:
        return self.sync.version(stream)

    async def get(self, ns: str, key: str) -> Item | None:
        return self.sync.get(ns, key)

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return self.sync.get_many(ns, keys)

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """Only where the wrapped store offers it (see :class:`~convthread.ports.MultiGet`)."""
        return self.sync.get_multi(keys)  # type: ignore[attr-defined,no-any-return]

    async def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """Only where the wrapped store offers it (:class:`~convthread.ports.MultiGetHeads`)."""
        return self.sync.get_multi_heads(keys, tenant, thread_ids)  # type: ignore[attr-defined,no-any-return]

    async def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        return self.sync.read_positions(tenant, after, limit)  # type: ignore[attr-defined,no-any-return]

    async def last_position(self, tenant: str) -> int:
        return self.sync.last_position(tenant)  # type: ignore[attr-defined,no-any-return]

    async def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        return self.sync.get_heads(tenant, thread_ids)

    async def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        return self.sync.find_heads(query)

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return self.sync.scan(ns, prefix, after, limit)

    async def commit(self, batch: Batch) -> None:
        self.sync.commit(batch)

    async def scrub(self) -> None:
        self.sync.scrub()

    async def close(self) -> None:
        self.sync.close()


# The thread a task's calls to one ThreadedAsyncStore are pinned to while it holds
# streams there: (store, that thread's executor). A context variable, so it is the
# holding task's alone (a task started inside the hold inherits it, and runs on the
# same thread, one call at a time).
_pinned: ContextVar[tuple[object, ThreadPoolExecutor] | None] = ContextVar(
    "convthread_pinned", default=None
)


class ThreadedAsyncStore:
    """An AsyncStore over a blocking sync store (SQLite, PostgreSQL): every call runs in a
    worker thread, so the event loop never blocks on I/O."""

    def __init__(self, store: Store, *, workers: int = 4) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convthread")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        pinned = _pinned.get()
        executor = pinned[1] if pinned is not None and pinned[0] is self else self._executor
        return await loop.run_in_executor(executor, fn, *args)

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return await self._call(self.sync.read, stream, after, limit)

    async def version(self, stream: str) -> int:
        return await self._call(self.sync.version, stream)

    async def get(self, ns: str, key: str) -> Item | None:
        return await self._call(self.sync.get, ns, key)

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return await self._call(self.sync.get_many, ns, keys)

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """Only where the wrapped store offers it (see :class:`~convthread.ports.MultiGet`)."""
        return await self._call(self.sync.get_multi, keys)  # type: ignore[attr-defined]

    async def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """Only where the wrapped store offers it (:class:`~convthread.ports.MultiGetHeads`)."""
        return await self._call(self.sync.get_multi_heads, keys, tenant, thread_ids)  # type: ignore[attr-defined]

    async def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        return await self._call(self.sync.read_positions, tenant, after, limit)  # type: ignore[attr-defined]

    async def last_position(self, tenant: str) -> int:
        return await self._call(self.sync.last_position, tenant)  # type: ignore[attr-defined]

    async def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        return await self._call(self.sync.get_heads, tenant, thread_ids)

    async def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        return await self._call(self.sync.find_heads, query)

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return await self._call(self.sync.scan, ns, prefix, after, limit)

    async def commit(self, batch: Batch) -> None:
        await self._call(self.sync.commit, batch)

    async def scrub(self) -> None:
        await self._call(self.sync.scrub)

    async def close(self) -> None:
        await self._call(self.sync.close)
        self._executor.shutdown(wait=True)
        self._close_holds()

    def _close_holds(self) -> None:
        """Overridden where holds keep threads of their own."""


class _ThreadHold:
    """One hold of a blocking store, entered and left on the one thread that runs every
    call of the holding attempt (SQLite's hold is a transaction on that thread's
    connection). Both run as jobs of that thread, in order: a leave submitted while the
    enter (or any call) is still running runs after it, so a hold whose waiter was
    cancelled is still released, and one never entered is not left."""

    __slots__ = ("_cm", "_store", "_streams")

    def __init__(self, store: Any, streams: list[str]) -> None:
        self._store = store
        self._streams = streams
        self._cm: AbstractContextManager[None] | None = None

    def enter(self) -> None:
        cm = self._store.hold(self._streams)
        cm.__enter__()
        self._cm = cm

    def leave(self, exc: BaseException | None) -> None:
        cm, self._cm = self._cm, None
        if cm is None:
            return
        if exc is None:
            cm.__exit__(None, None, None)
            return
        try:
            cm.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException as err:
            if err is not exc:
                raise


class HoldingThreadedAsyncStore(ThreadedAsyncStore):
    """A :class:`ThreadedAsyncStore` over a store that can hold streams
    (:class:`~convthread.ports.StreamHold`), offering the asyncio form.

    A blocking store's hold belongs to the thread that entered it (SQLite: a
    transaction on that thread's connection), and the worker threads cannot share it.
    So a hold takes a thread of its own, one at a time, and every call the holding task
    makes to this store until the hold ends runs on it. Such threads are kept for the
    next hold (there is at most one per concurrent hold: a hold is a queued writer's,
    so in practice one per event loop); calls outside a hold are unchanged."""

    def __init__(self, store: Store, *, workers: int = 4) -> None:
        super().__init__(store, workers=workers)
        self._spare: list[ThreadPoolExecutor] = []
        self._spare_lock = threading.Lock()
        self._closed = False

    def hold(self, streams: Sequence[str]) -> AbstractAsyncContextManager[None]:
        """Hold ``streams`` as the wrapped store's ``hold`` does, for the calling task
        (:class:`~convthread.ports.AsyncStreamHold`)."""
        return self._holding(list(streams)) if streams else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def _holding(self, streams: list[str]) -> AsyncIterator[None]:
        pinned = _pinned.get()
        if pinned is not None and pinned[0] is self:
            thread, own = pinned[1], False  # nested in this task's hold: its thread
        else:
            thread, own = self._take_thread(), True
        hold = _ThreadHold(self.sync, streams)
        token = _pinned.set((self, thread))
        failure: BaseException | None = None
        try:
            # Cancelling this wait cannot stop an enter already running on the thread;
            # the leave below, queued behind it, then releases what it took.
            await asyncio.wrap_future(thread.submit(hold.enter))
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _pinned.reset(token)
            leaving = thread.submit(hold.leave, failure)
            if own:
                leaving.add_done_callback(lambda done: self._give_back(thread, done))
            # Shielded: a cancellation arriving now stops the wait, not the release.
            await asyncio.shield(asyncio.wrap_future(leaving))

    def _take_thread(self) -> ThreadPoolExecutor:
        with self._spare_lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._spare:
                return self._spare.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="convthread-hold")

    def _give_back(self, thread: ThreadPoolExecutor, left: Future[None]) -> None:
        """Keep the thread for the next hold, unless leaving failed (its connection
        may still be in the hold's transaction) or the store closed."""
        with self._spare_lock:
            if not self._closed and not left.cancelled() and left.exception() is None:
                self._spare.append(thread)
                return
        thread.shutdown(wait=False)

    def _close_holds(self) -> None:
        with self._spare_lock:
            self._closed = True
            spare, self._spare = self._spare, []
        for thread in spare:
            thread.shutdown(wait=True)


def threaded(store: Store) -> ThreadedAsyncStore:
    """The asyncio form of a blocking store: calls in worker threads, and holds where
    the store can hold."""
    if isinstance(store, StreamHold):
        return HoldingThreadedAsyncStore(store)
    return ThreadedAsyncStore(store)
