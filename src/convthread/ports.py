"""Ports: what the service needs from the outside world.

* :class:`Store` / :class:`AsyncStore`: streams of encoded events, the heads of threads
  (one typed row per thread: :class:`ThreadHead`) and a keyed index with
  compare-and-set, committed together atomically. The store knows the library's nouns
  (streams, thread heads) but none of its rules: all domain logic lives in one place, so
  a new backend is small and the conformance kit (:mod:`convthread.testing`) can prove
  it behaves like the reference.
* :class:`KVStore` / :class:`AsyncKVStore`: the same without the heads (the protocol of
  releases up to 0.1). A store that offers only these keeps working: the service runs
  it behind an adapter (``convthread.stores._kv``) that keeps the heads in index
  entries of its own.
* :class:`Clock` and :class:`IdSource`: injected, so tests are deterministic.

Store semantics, which every backend must keep:

1. ``commit(batch)`` is atomic. Every append names the stream's expected version (the
   sequence number of its last event, 0 for a new stream); every put or delete names the
   expected version of the key (:data:`ABSENT` for "must not exist", :data:`ANY` for
   "whatever it is"); every head write names the expected version of the head
   (:data:`ABSENT`: insert a new head; a version: replace that version). If any
   expectation fails, nothing is written and :class:`~convthread.errors.ConflictError`
   is raised.
2. Sequence numbers of a stream are 1, 2, 3, ... with no gaps.
3. A key's version starts at 1 and grows by one with each put. So does a head's: its
   ``version`` counts the writes of the head, which is not its thread's ``last_seq``
   (some writes change a head without appending, e.g. a merge moving the thread).
4. Acknowledged commits survive a process crash (durability is per backend; see its docs).
5. ``rewrite`` (erasure) replaces an event's bytes in place, keeping its sequence number;
   ``scrub()`` then makes sure replaced or deleted bytes are gone from storage.
6. Every event has a **position** (:attr:`Recorded.position`), unique in the store and
   increasing in **commit order**: once a reader has seen an event at position p, no
   event with a position <= p becomes visible later. Within a stream, positions grow
   with the sequence number; they may have gaps (a rolled-back commit can use some up).
   A rewrite keeps the position. A store that cannot keep this promise reports 0 (its
   events then have no global order); the conformance kit's ``positions`` capability
   checks a store that reports them.
7. Heads are per tenant: ``(tenant, thread_id)`` names one; a read or query names its
   tenant and sees no other. ``get_heads`` returns those that exist among the ids;
   ``find_heads(query)`` returns the heads matching every filter of a :class:`HeadQuery`,
   ordered by ``(last_activity, thread_id)`` (oldest first, or newest first), starting
   strictly after the query's cursor, at most ``limit``. A head's ``state`` is bytes of
   the service's: stored and returned as they are, never read by the store.

Clarifications (the conformance kit checks each):

* Every expectation in a batch is checked against the state *before* the batch; then
  appends, puts (in order: the same key put twice grows by two versions) and deletes
  apply (a key both put and deleted ends up absent). Two different version expectations
  on one key cannot both hold: ConflictError.
* An append with no events still checks its expected version (a guard); a stream may
  appear in a batch's appends at most once, and a thread in its head writes at most
  once (else StoreError, nothing written). A head write expecting :data:`ANY` is refused
  the same way: a head is always compare-and-set.
* A rewrite must name an event that existed before the batch (else StoreError, nothing
  written). After a delete, a key's version starts again at 1.
* Keys are any text (provider ids come from outside); values and events are any bytes.
  ``scan`` orders by code point; ``after=""`` means from the start. Thread ids order by
  code point too. Times are timezone-aware UTC, kept to the microsecond.
* A closed store raises StoreError; driver errors are translated into ConflictError
  (another writer won), StoreUnavailable (connection lost) or StoreError.

Optional capability: a store whose reads cost a round trip (a database server, a file)
may also offer ``get_multi(keys)`` (:class:`MultiGet` / :class:`AsyncMultiGet`): the
entries of several namespaces in one call, and ``get_multi_heads(keys, tenant,
thread_ids)`` (:class:`MultiGetHeads` / :class:`AsyncMultiGetHeads`): those entries and
some heads in one round trip. The service then fetches what an ingest will read in a
few calls instead of one per namespace and step. A store without them works unchanged;
the conformance kit checks them where a store offers them.

Optional capability: a store shared by several processes may offer ``hold(streams)``
(:class:`StreamHold` / :class:`AsyncStreamHold`): a context in which this writer reads
and commits while other holders of those streams wait, across processes. The service
enters it only to retry a write whose commit conflicted on those streams, so a busy
thread's writers queue in the database instead of racing. A hold never replaces the
compare-and-set: a commit inside one checks every expectation as always.

Optional capability: the **change feed** reads events by position
(:class:`FeedReader` / :class:`AsyncFeedReader`): ``read_positions(tenant, after,
limit)`` returns the tenant's events with a position greater than ``after``, in
position order, at most ``limit``; ``last_position(tenant)`` the greatest position of
the tenant's events (0 if none). Because positions grow in commit order (semantics 6),
a reader that pages on with the last position it saw misses no event. A store may
also offer ``watch()`` (:class:`FeedWatcher` / :class:`AsyncFeedWatcher`): a
:class:`FeedWatch` whose ``wait(timeout)`` returns as soon as a commit may have been
made since the watch was opened or last returned (a hint, never a promise: the service
reads the feed again after every wait, and waits again when it finds nothing). A store
without a watch is polled. The service's feed API needs a :class:`FeedReader`; the
conformance kit checks one where a store offers it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Final, Protocol, runtime_checkable

import msgspec

from convthread.domain.model import ensure_utc

__all__ = [
    "ABSENT",
    "ANY",
    "DEFAULT_TENANT",
    "Append",
    "AsyncFeedReader",
    "AsyncFeedWatch",
    "AsyncFeedWatcher",
    "AsyncKVStore",
    "AsyncMultiGet",
    "AsyncMultiGetHeads",
    "AsyncStore",
    "AsyncStreamHold",
    "Batch",
    "Clock",
    "Delete",
    "FeedReader",
    "FeedWatch",
    "FeedWatcher",
    "HeadQuery",
    "HeadWrite",
    "IdSource",
    "Item",
    "KVStore",
    "KeyWrite",
    "ManualClock",
    "MultiGet",
    "MultiGetHeads",
    "Put",
    "RandomIds",
    "Recorded",
    "Rewrite",
    "SequentialIds",
    "Store",
    "StreamHold",
    "SystemClock",
    "ThreadHead",
]

#: Expected version meaning "the key must not exist".
ABSENT: Final = 0
#: Expected version meaning "no expectation" (unconditional write).
ANY: Final = -1
#: The tenant of a service that names none (the tenant column's default in the SQL stores).
DEFAULT_TENANT: Final = ""


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its stream, its sequence number, its encoded bytes and its
    global position.

    ``position`` orders every event of the store in commit order (see the module
    docstring, semantics 6). The stores of this library always set it (1 or more); 0
    means "not reported", the default for a store written before positions existed, so
    ``Recorded(stream, seq, data)`` still builds one. (``gc=False``: it holds only a str,
    ints and bytes, so it can be in no reference cycle; the garbage collector need not
    track the millions a store may hold.)"""

    stream: str
    seq: int
    data: bytes
    position: int = 0


class Item(msgspec.Struct, frozen=True, gc=False):
    """An index entry: its encoded value and its version (1 after the first put).
    Untracked by the garbage collector, as :class:`Recorded`."""

    value: bytes
    version: int


class Append(msgspec.Struct, frozen=True):
    """Append ``events`` to ``stream`` whose last sequence number must be ``expected``."""

    stream: str
    expected: int
    events: tuple[bytes, ...]


class KeyWrite(msgspec.Struct, frozen=True):
    """What :class:`Put` and :class:`Delete` share: a write to key ``key`` of namespace
    ``ns``, checked against the version ``expected`` of the key. A store checks both kinds
    alike (``for op in (*batch.puts, *batch.deletes)``); only the two subclasses are
    ever committed."""

    ns: str
    key: str

    @property
    def expected(self) -> int:
        """The version the key must have (:data:`ABSENT`, :data:`ANY` or a version)."""
        raise NotImplementedError("a KeyWrite is a Put or a Delete")


class Put(KeyWrite, frozen=True):
    """Set ``ns``/``key`` to ``value`` if its version is ``expected`` (or ABSENT / ANY)."""

    value: bytes
    expected: int = ANY


class Delete(KeyWrite, frozen=True):
    """Delete ``ns``/``key`` if its version is ``expected`` (ANY: unconditionally; deleting
    a missing key with ANY is a no-op)."""

    expected: int = ANY


class Rewrite(msgspec.Struct, frozen=True):
    """Replace the bytes of event ``seq`` of ``stream`` (erasure). The event must exist."""

    stream: str
    seq: int
    data: bytes


class ThreadHead(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A thread as a typed row: what queries filter and order by, plus the rest of its
    state as the service's bytes.

    ``last_activity`` is the channel time of the thread's latest message (its creation
    time before it has one); ``channels`` are the channels it has used, first first;
    ``controller`` is the party in control (``"kind:id"``) or None; ``state`` is opaque
    to the store. ``version`` is the head's compare-and-set version: filled in by the
    store on reads, ignored in a :class:`HeadWrite` (which names the version it expects).
    """

    thread_id: str
    tenant: str
    customer_id: str
    status: str
    last_seq: int
    last_activity: datetime
    last_channel: str
    topic: str | None
    channels: tuple[str, ...]
    snoozed_until: datetime | None
    controller: str | None
    created_at: datetime
    state: bytes
    version: int = 0


class HeadWrite(msgspec.Struct, frozen=True):
    """Insert ``head`` (``expected`` :data:`ABSENT`: no head of that tenant and thread may
    exist) or replace it (``expected`` the version it must have); its version becomes 1,
    or ``expected + 1``."""

    head: ThreadHead
    expected: int


class HeadQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which heads :meth:`Store.find_heads` returns: those of ``tenant`` matching every
    filter given, ordered by ``(last_activity, thread_id)``, oldest first (newest first
    with ``newest_first``), strictly after ``after`` (the ``(last_activity, thread_id)``
    of the last head of the previous page), at most ``limit``.

    Filters: ``customer_id``; ``statuses`` (any of them; empty: every status);
    ``channel`` (among the head's ``channels``); ``controller``; ``snoozed_before``
    (``snoozed_until`` is set and earlier); ``active_from`` / ``active_until``
    (``last_activity`` within, both inclusive).
    """

    tenant: str = DEFAULT_TENANT
    customer_id: str | None = None
    statuses: tuple[str, ...] = ()
    channel: str | None = None
    controller: str | None = None
    snoozed_before: datetime | None = None
    active_from: datetime | None = None
    active_until: datetime | None = None
    newest_first: bool = False
    after: tuple[datetime, str] | None = None
    limit: int = 100

    def matches(self, head: ThreadHead) -> bool:
        """Whether ``head`` passes every filter (not the cursor): the reference rule."""
        if head.tenant != self.tenant:
            return False
        if self.customer_id is not None and head.customer_id != self.customer_id:
            return False
        if self.statuses and head.status not in self.statuses:
            return False
        if self.channel is not None and self.channel not in head.channels:
            return False
        if self.controller is not None and head.controller != self.controller:
            return False
        if self.snoozed_before is not None and (
            head.snoozed_until is None or head.snoozed_until >= self.snoozed_before
        ):
            return False
        if self.active_from is not None and head.last_activity < self.active_from:
            return False
        return not (self.active_until is not None and head.last_activity > self.active_until)

    def beyond(self, head: ThreadHead) -> bool:
        """Whether ``head`` comes after the cursor in the query's order."""
        if self.after is None:
            return True
        key = (head.last_activity, head.thread_id)
        return key < self.after if self.newest_first else key > self.after


class Batch(msgspec.Struct, frozen=True):
    """Everything one operation writes, committed atomically or not at all."""

    appends: tuple[Append, ...] = ()
    puts: tuple[Put, ...] = ()
    deletes: tuple[Delete, ...] = ()
    rewrites: tuple[Rewrite, ...] = ()
    heads: tuple[HeadWrite, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.appends or self.puts or self.deletes or self.rewrites or self.heads)


@runtime_checkable
class KVStore(Protocol):
    """The synchronous store protocol without heads (releases up to 0.1; see the module
    notes). Implementations must be safe to share between threads of one process;
    several processes may share one backend where it allows."""

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        """Events of ``stream`` with sequence number > ``after``, in order (at most ``limit``)."""
        ...

    def version(self, stream: str) -> int:
        """The last sequence number of ``stream`` (0 if it has no events)."""
        ...

    def get(self, ns: str, key: str) -> Item | None:
        """The entry at ``ns``/``key``, or None."""
        ...

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        """The entries that exist among ``keys`` in ``ns``."""
        ...

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        """Entries of ``ns`` whose key starts with ``prefix`` and sorts after ``after``,
        in key order (code-point order), at most ``limit``. ``after=""`` means no lower
        bound: the empty key is included."""
        ...

    def commit(self, batch: Batch) -> None:
        """Write ``batch`` atomically, or raise ConflictError and write nothing."""
        ...

    def scrub(self) -> None:
        """Make sure bytes of rewritten events and deleted entries are gone from storage."""
        ...

    def close(self) -> None:
        """Release connections and files. The store is unusable afterwards."""
        ...


@runtime_checkable
class Store(KVStore, Protocol):
    """The synchronous store protocol: :class:`KVStore` plus the heads of threads."""

    def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        """The heads of ``tenant`` that exist among ``thread_ids``, by thread id."""
        ...

    def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        """The heads ``query`` selects, in its order (see :class:`HeadQuery`)."""
        ...


@runtime_checkable
class AsyncKVStore(Protocol):
    """The asyncio form of :class:`KVStore`: the same methods, as coroutines."""

    async def read(
        self, stream: str, after: int = 0, limit: int | None = None
    ) -> list[Recorded]: ...

    async def version(self, stream: str) -> int: ...

    async def get(self, ns: str, key: str) -> Item | None: ...

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]: ...

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]: ...

    async def commit(self, batch: Batch) -> None: ...

    async def scrub(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class AsyncStore(AsyncKVStore, Protocol):
    """The asyncio form of :class:`Store`: the same methods, as coroutines."""

    async def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]: ...

    async def find_heads(self, query: HeadQuery) -> list[ThreadHead]: ...


@runtime_checkable
class MultiGet(Protocol):
    """Optional: reads of several namespaces in one call (see the module notes)."""

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The entries that exist among ``keys``, (namespace, key) pairs, keyed by pair.
        Duplicates are allowed; an empty ``keys`` gives an empty dict."""
        ...


@runtime_checkable
class AsyncMultiGet(Protocol):
    """The asyncio form of :class:`MultiGet`."""

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]: ...


@runtime_checkable
class MultiGetHeads(Protocol):
    """Optional: index entries and heads in one round trip (see the module notes)."""

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        """``(get_multi(keys), get_heads(tenant, thread_ids))``, read in one call."""
        ...


@runtime_checkable
class StreamHold(Protocol):
    """Optional: serialize the writers of some streams (see the module notes)."""

    def hold(self, streams: Sequence[str]) -> AbstractContextManager[None]:
        """A context in which the calling thread's reads see every commit to
        ``streams`` made before it was entered, and no other holder of any of them, in
        any process, is inside its own. Entering waits (up to the store's timeout: then
        :class:`~convthread.errors.StoreUnavailable`). Commits made inside are checked
        as always; leaving releases the streams, whether or not a commit was made."""
        ...


@runtime_checkable
class AsyncMultiGetHeads(Protocol):
    """The asyncio form of :class:`MultiGetHeads`."""

    async def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]: ...


@runtime_checkable
class AsyncStreamHold(Protocol):
    """The asyncio form of :class:`StreamHold` (for the calling task)."""

    def hold(self, streams: Sequence[str]) -> AbstractAsyncContextManager[None]: ...


@runtime_checkable
class FeedReader(Protocol):
    """Optional: events by global position, for the change feed (see the module notes)."""

    def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        """The events of ``tenant`` with a position greater than ``after``, in position
        order, at most ``limit`` (each with its stream, seq, bytes and position)."""
        ...

    def last_position(self, tenant: str) -> int:
        """The greatest position among ``tenant``'s events (0 if it has none)."""
        ...


@runtime_checkable
class AsyncFeedReader(Protocol):
    """The asyncio form of :class:`FeedReader`."""

    async def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]: ...

    async def last_position(self, tenant: str) -> int: ...


class FeedWatch(Protocol):
    """A wake-up hint for feed readers (see the module notes). Safe to close from
    another thread than the one waiting: the wait then returns promptly."""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (0: do not block) for a commit made since the
        watch was opened or last returned True; True if one may have been made."""
        ...

    def close(self) -> None:
        """Release the watch's connection or thread; a wait in progress returns."""
        ...


@runtime_checkable
class FeedWatcher(Protocol):
    """Optional: a store that can tell feed readers when to look again."""

    def watch(self) -> FeedWatch:
        """A new watch, already listening: a commit made after this returns is signalled."""
        ...


class AsyncFeedWatch(Protocol):
    """The asyncio form of :class:`FeedWatch` (cancel the waiting task to stop it)."""

    async def wait(self, timeout: float) -> bool: ...

    async def close(self) -> None: ...


@runtime_checkable
class AsyncFeedWatcher(Protocol):
    """The asyncio form of :class:`FeedWatcher`."""

    async def watch(self) -> AsyncFeedWatch: ...


# --------------------------------------------------------------------------- clock, ids


class Clock(Protocol):
    """Gives the current time, timezone-aware UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """A clock that moves only when told: ``advance(minutes=5)`` or ``set(dt)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_utc(start or datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc))
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def set(self, value: datetime) -> None:
        with self._lock:
            self._now = ensure_utc(value)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        step = delta if delta is not None else timedelta(**kwargs)
        with self._lock:
            self._now = self._now + step
            return self._now


class IdSource(Protocol):
    """Gives new ids for threads, customers, handoffs and so on. ``prefix`` names the kind."""

    def new_id(self, prefix: str) -> str: ...


_CROCKFORD: Final = "0123456789abcdefghjkmnpqrstvwxyz"


class RandomIds:
    """Time-ordered random ids: ``th_`` + 10 characters of milliseconds + 16 random.

    Sortable by creation time, unique across processes and machines (80 random bits).
    """

    def new_id(self, prefix: str) -> str:
        ms = time.time_ns() // 1_000_000
        rand = int.from_bytes(os.urandom(10), "big")
        chars = []
        for _ in range(16):
            chars.append(_CROCKFORD[rand & 31])
            rand >>= 5
        stamp = []
        for _ in range(10):
            stamp.append(_CROCKFORD[ms & 31])
            ms >>= 5
        return f"{prefix}_{''.join(reversed(stamp))}{''.join(chars)}"


class SequentialIds:
    """Deterministic ids for tests and demos: ``th_0001``, ``cu_0001``, ... per prefix."""

    def __init__(self, width: int = 4) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._width = width
        self._lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        with self._lock:
            counter = self._counters.setdefault(prefix, itertools.count(1))
            return f"{prefix}_{next(counter):0{self._width}d}"
