"""The in-memory store: the reference implementation of the store protocol.

Everything lives in Python dicts guarded by one lock. It is what the conformance kit
compares other stores with, and the store of choice for tests. Nothing survives the
process.

Thread heads are kept by (tenant, thread id), with indexes as a database would keep
them, so a query walks its page, not every head: sorted per status, channel and
controller, keyed by last activity then thread id; the snoozed heads sorted by wake-up
time; a set of thread ids per customer (a customer has few threads: they are sorted
when asked for, and a message moves no entry). A query walks the index of its most
selective filter (merging the status indexes when it names several statuses or none)
and checks the other filters on each head.

Head writes far outnumber head queries, and every message moves each of its head's
entries (its last activity is in every key), so a head write only marks its head as
moved; the next query first brings the indexes up to date for the heads moved since,
once each however often they moved: a query costs its page plus the heads written
since the last one, never more than keeping the indexes current at each write would.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from math import isqrt
from typing import Final

import msgspec

from convthread.errors import ConflictError, StoreError
from convthread.ports import (
    ABSENT,
    ANY,
    DEFAULT_TENANT,
    Batch,
    HeadQuery,
    Item,
    Recorded,
    ThreadHead,
)

__all__ = ["MemoryStore"]


class _SortedKeys:
    """The keys of one namespace in sorted order, for scans.

    A large sorted list (``keys``), a small sorted list of keys added since it was last
    rebuilt (``added``), and the keys deleted from the large one since (``removed``). A
    write is a bisect into the small list, or a set operation; a scan walks both lists
    from a bisect, merging them and skipping deleted keys, so it costs its page, not the
    namespace. The large list is rebuilt, in linear time (timsort on two sorted runs),
    only once the small ones have grown to a few thousand (more for very large
    namespaces): a few microseconds per write, amortized. (Rebuilding at every scan
    that followed a write made a merge cost milliseconds in a store of a million keys.)
    """

    __slots__ = ("added", "keys", "removed")

    #: Rebuild once the small lists hold more than this many keys (or four times the
    #: square root of the large one's length, whichever is more).
    REBUILD_AT = 4096

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.added: list[str] = []
        self.removed: set[str] = set()

    def add(self, key: str) -> None:
        """Note a key that is not in the namespace."""
        if key in self.removed:
            self.removed.discard(key)  # deleted, then created again: still in ``keys``
        else:
            insort(self.added, key)
            if len(self.added) + len(self.removed) > self.REBUILD_AT:  # else none is due
                self._maybe_rebuild()

    def remove(self, key: str) -> None:
        """Note a key that is in the namespace."""
        added = self.added
        i = bisect_left(added, key)
        if i < len(added) and added[i] == key:
            del added[i]
        else:
            self.removed.add(key)
            if len(self.added) + len(self.removed) > self.REBUILD_AT:  # else none is due
                self._maybe_rebuild()

    def _maybe_rebuild(self) -> None:
        # A threshold of the order of sqrt(n) balances the two costs per write: the
        # insort into the small list (its length) and the rebuild (n over the threshold).
        if len(self.added) + len(self.removed) > max(self.REBUILD_AT, 4 * isqrt(len(self.keys))):
            gone = self.removed
            keys = [k for k in self.keys if k not in gone] if gone else self.keys
            keys.extend(self.added)
            keys.sort()
            self.keys, self.added, self.removed = keys, [], set()

    def page(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in order, after ``after``
        (``after=""``: from the start, the empty key included)."""
        keys, added, gone = self.keys, self.added, self.removed
        if after and after >= prefix:
            i, j = bisect_right(keys, after), bisect_right(added, after)
        else:
            i, j = bisect_left(keys, prefix), bisect_left(added, prefix)
        out: list[str] = []
        n, m = len(keys), len(added)
        while len(out) < limit:
            if i < n and (j >= m or keys[i] < added[j]):
                key = keys[i]
                i += 1
                if key in gone:
                    continue
            elif j < m:
                key = added[j]
                j += 1
            else:
                break
            if not key.startswith(prefix):
                break
            out.append(key)
        return out

    def page_desc(self, before: str | None, limit: int) -> list[str]:
        """Up to ``limit`` keys before ``before`` (None: from the last), last first."""
        keys, added, gone = self.keys, self.added, self.removed
        if before is None:
            i, j = len(keys), len(added)
        else:
            i, j = bisect_left(keys, before), bisect_left(added, before)
        out: list[str] = []
        while len(out) < limit:
            if i > 0 and (j <= 0 or keys[i - 1] > added[j - 1]):
                i -= 1
                key = keys[i]
                if key in gone:
                    continue
            elif j > 0:
                j -= 1
                key = added[j]
            else:
                break
            out.append(key)
        return out

    def walk(self, start: str | None, desc: bool) -> Iterator[str]:
        """Every key after ``start`` (before it with ``desc``; None: from the end), in
        order, a page at a time. Call only under the store's lock."""
        while True:
            page = self.page_desc(start, 256) if desc else self.page("", start or "", 256)
            yield from page
            if len(page) < 256:
                return
            start = page[-1]


_MIN: Final = datetime(1, 1, 1, tzinfo=timezone.utc)
_US: Final = timedelta(microseconds=1)
#: Sorts after "|" and before every other separator a key could hold after a time.
_AFTER_SEP: Final = "}"


def _tkey(value: datetime) -> str:
    """A time as a sortable key: microseconds since year 1, 18 digits."""
    return f"{(value - _MIN) // _US:018d}"


def _entries(head: ThreadHead) -> set[tuple[tuple[str, ...], str]]:
    """The index entries of ``head``: (index, key) pairs."""
    key = f"{_tkey(head.last_activity)}|{head.thread_id}"
    t = head.tenant
    out: set[tuple[tuple[str, ...], str]] = {(("s", t, head.status), key)}
    for channel in head.channels:
        out.add((("ch", t, channel), key))
    if head.controller is not None:
        out.add((("ct", t, head.controller), key))
    if head.snoozed_until is not None:
        out.add((("z", t), f"{_tkey(head.snoozed_until)}|{head.thread_id}"))
    return out


class MemoryStore:
    """A thread-safe in-memory :class:`~convthread.ports.Store`."""

    def __init__(self) -> None:
        self._streams: dict[str, list[bytes]] = {}
        # The position of each event, per stream, from one store-wide counter: the
        # lock makes a commit's positions a block after every earlier commit's.
        self._positions: dict[str, list[int]] = {}
        self._last_position = 0
        # The feed: one block per append, in position order: the position of its first
        # event (``_block_starts``), its stream and the seq of that event. Positions here
        # have no gaps, so a block runs up to the next one's start.
        self._block_starts: list[int] = []
        self._blocks: list[tuple[str, int]] = []
        self._kv: dict[str, dict[str, Item]] = {}
        self._keys: dict[str, _SortedKeys] = {}  # keys per namespace, for scan
        self._heads: dict[tuple[str, str], ThreadHead] = {}  # (tenant, thread id) -> head
        self._hindex: dict[tuple[str, ...], _SortedKeys] = {}  # see _entries
        self._statuses: dict[str, set[str]] = {}  # tenant -> statuses it has indexes of
        self._customers: dict[tuple[str, str], set[str]] = {}  # (tenant, customer) -> ids
        # The entries each head has in the indexes, and the heads written since the
        # indexes were last brought up to date (see _reindex).
        self._head_entries: dict[tuple[str, str], set[tuple[tuple[str, ...], str]]] = {}
        self._moved: set[tuple[str, str]] = set()
        self._lock = threading.RLock()
        # Feed watchers wait on this; every commit that appends notifies it.
        self._appended = threading.Condition(self._lock)
        self._closed = False

    def __repr__(self) -> str:
        return "MemoryStore()"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        self._check_open()
        with self._lock:
            events = self._streams.get(stream)
            if not events:
                return []
            stop = len(events) if limit is None else min(len(events), after + limit)
            positions = self._positions[stream]
            return [
                Recorded(stream, i + 1, events[i], positions[i]) for i in range(max(after, 0), stop)
            ]

    def version(self, stream: str) -> int:
        self._check_open()
        events = self._streams.get(stream)
        return 0 if events is None else len(events)

    def read_positions(self, tenant: str, after: int, limit: int) -> list[Recorded]:
        """Events by position (:class:`~convthread.ports.FeedReader`). Every event of
        this store is the default tenant's (its appends name no tenant)."""
        self._check_open()
        if tenant != DEFAULT_TENANT or limit <= 0:
            return []
        out: list[Recorded] = []
        with self._lock:
            starts, blocks, streams = self._block_starts, self._blocks, self._streams
            position = max(after, 0) + 1
            stop = min(self._last_position, position + limit - 1)
            b = bisect_right(starts, position) - 1
            while position <= stop:
                stream, first_seq = blocks[b]
                end = starts[b + 1] - 1 if b + 1 < len(starts) else self._last_position
                events = streams[stream]
                for p in range(position, min(end, stop) + 1):
                    seq = first_seq + p - starts[b]
                    out.append(Recorded(stream, seq, events[seq - 1], p))
                position = min(end, stop) + 1
                b += 1
        return out

    def last_position(self, tenant: str) -> int:
        self._check_open()
        return self._last_position if tenant == DEFAULT_TENANT else 0

    def watch(self) -> _MemoryWatch:
        """A watch woken by every commit that appends (:class:`~convthread.ports.FeedWatcher`)."""
        self._check_open()
        return _MemoryWatch(self)

    def get(self, ns: str, key: str) -> Item | None:
        self._check_open()
        table = self._kv.get(ns)
        return None if table is None else table.get(key)

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        self._check_open()
        table = self._kv.get(ns)
        if not table:
            return {}
        with self._lock:
            return {k: table[k] for k in keys if k in table}

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        self._check_open()
        with self._lock:
            index = self._keys.get(ns)
            table = self._kv.get(ns)
            if index is None or table is None:
                return []
            return [(key, table[key]) for key in index.page(prefix, after, limit)]

    def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        self._check_open()
        heads = self._heads
        with self._lock:
            return {t: h for t in thread_ids if (h := heads.get((tenant, t))) is not None}

    def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        self._check_open()
        t, desc, limit = query.tenant, query.newest_first, query.limit
        heads, index = self._heads, self._hindex
        out: list[ThreadHead] = []
        if limit <= 0:
            return out
        with self._lock:
            if self._moved:
                self._reindex()
            if query.customer_id is not None or query.snoozed_before is not None:
                # A customer's threads, or every head due by wake-up time; then ordered.
                if query.customer_id is not None:
                    ids = self._customers.get((t, query.customer_id), set())
                else:
                    snoozed = index.get(("z", t))
                    horizon = _tkey(query.snoozed_before)  # type: ignore[arg-type]
                    ids = set()
                    for key in snoozed.walk(None, False) if snoozed is not None else ():
                        if key[:18] >= horizon:
                            break
                        ids.add(key[19:])
                found = [h for i in ids if query.matches(h := heads[(t, i)]) and query.beyond(h)]
                found.sort(key=lambda h: (h.last_activity, h.thread_id), reverse=desc)
                return found[:limit]
            names: list[tuple[str, ...]]
            if query.controller is not None:
                names = [("ct", t, query.controller)]
            elif query.channel is not None:
                names = [("ch", t, query.channel)]
            else:
                names = [("s", t, s) for s in (query.statuses or self._statuses.get(t, ()))]
            start = _start(query)
            walks = [ix.walk(start, desc) for n in names if (ix := index.get(n)) is not None]
            first, last = query.active_from, query.active_until
            for key in heapq.merge(*walks, reverse=desc):
                head = heads[(t, key[19:])]
                if (last is not None and not desc and head.last_activity > last) or (
                    first is not None and desc and head.last_activity < first
                ):
                    break
                if query.matches(head):
                    out.append(head)
                    if len(out) == limit:
                        break
        return out

    def _reindex(self) -> None:
        """Bring the head indexes up to date with every head written since the last
        call. Call only under the store's lock."""
        heads, entries, index = self._heads, self._head_entries, self._hindex
        for slot in self._moved:
            before = entries.get(slot, set())
            after = entries[slot] = _entries(heads[slot])
            for name, key in before - after:
                index[name].remove(key)
            for name, key in after - before:
                ix = index.get(name)
                if ix is None:
                    ix = index[name] = _SortedKeys()
                    if name[0] == "s":
                        self._statuses.setdefault(name[1], set()).add(name[2])
                ix.add(key)
        self._moved.clear()

    def commit(self, batch: Batch) -> None:
        self._check_open()
        appends, puts, deletes, rewrites = batch.appends, batch.puts, batch.deletes, batch.rewrites
        streams, kv, heads = self._streams, self._kv, self._heads
        customers, moved = self._customers, self._moved
        with self._lock:
            # Check every expectation first, against the state before the batch: a batch
            # that conflicts writes nothing.
            for append in appends:
                events = streams.get(append.stream)
                current = 0 if events is None else len(events)
                if current != append.expected:
                    raise ConflictError(
                        f"stream {append.stream!r} is at version {current}, "
                        f"expected {append.expected}"
                    )
            if len(appends) > 1 and len({a.stream for a in appends}) != len(appends):
                raise StoreError("a batch may append to each stream at most once")
            for ops in (puts, deletes):
                for op in ops:
                    if op.expected != ANY:
                        table = kv.get(op.ns)
                        item = None if table is None else table.get(op.key)
                        _check_expected(op.ns, op.key, item, op.expected)
            if batch.heads:
                _check_heads(batch, heads)
            for rw in rewrites:
                if not 1 <= rw.seq <= len(streams.get(rw.stream, ())):
                    raise StoreError(f"cannot rewrite missing event {rw.stream!r}#{rw.seq}")
            # Apply.
            for append in appends:
                events = streams.get(append.stream)
                first = self._last_position + 1
                if append.events:
                    self._block_starts.append(first)
                    self._blocks.append((append.stream, append.expected + 1))
                self._last_position += len(append.events)
                numbers = range(first, self._last_position + 1)
                if events is None:
                    streams[append.stream] = list(append.events)
                    self._positions[append.stream] = list(numbers)
                else:
                    events.extend(append.events)
                    self._positions[append.stream].extend(numbers)
            for put in puts:
                table = kv.get(put.ns)
                if table is None:
                    table = kv[put.ns] = {}
                old = table.get(put.key)
                if old is None:
                    index = self._keys.get(put.ns)
                    if index is None:
                        index = self._keys[put.ns] = _SortedKeys()
                    index.add(put.key)
                    table[put.key] = Item(put.value, 1)
                else:
                    table[put.key] = Item(put.value, old.version + 1)
            for delete in deletes:
                table = kv.get(delete.ns)
                if table is not None and table.pop(delete.key, None) is not None:
                    self._keys[delete.ns].remove(delete.key)
            for rw in rewrites:
                streams[rw.stream][rw.seq - 1] = rw.data
            for hw in batch.heads:
                slot = (hw.head.tenant, hw.head.thread_id)
                old_head = heads.get(slot)
                new = msgspec.structs.replace(hw.head, version=hw.expected + 1)
                heads[slot] = new
                # The customer index stays current (a message rarely changes it); the
                # sorted ones catch up at the next query (see _reindex).
                if old_head is None or old_head.customer_id != new.customer_id:
                    if old_head is not None:
                        customers[(old_head.tenant, old_head.customer_id)].discard(slot[1])
                    customers.setdefault((slot[0], new.customer_id), set()).add(slot[1])
                moved.add(slot)
            if appends:
                self._appended.notify_all()

    def scrub(self) -> None:
        self._check_open()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._appended.notify_all()


class _MemoryWatch:
    """A :class:`~convthread.ports.FeedWatch` over the store's condition: it has seen
    every position up to ``seen``; a wait returns once the store's last position is
    beyond it (or the watch or store is closed)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._seen = store._last_position
        self._closed = False

    def wait(self, timeout: float) -> bool:
        store = self._store
        with store._appended:
            changed = store._appended.wait_for(
                lambda: store._last_position != self._seen or self._closed or store._closed,
                timeout=max(timeout, 0.0),
            )
            fresh = store._last_position != self._seen
            self._seen = store._last_position
        return bool(changed) and fresh

    def close(self) -> None:
        store = self._store
        with store._appended:
            self._closed = True
            store._appended.notify_all()


def _start(query: HeadQuery) -> str | None:
    """Where a walk of an activity index starts (exclusive) for ``query``."""
    after = query.after
    if query.newest_first:
        if after is not None:
            return f"{_tkey(after[0])}|{after[1]}"
        if query.active_until is not None:
            return _tkey(query.active_until) + _AFTER_SEP
        return None
    if after is not None and (query.active_from is None or after[0] >= query.active_from):
        return f"{_tkey(after[0])}|{after[1]}"
    if query.active_from is not None:
        return _tkey(query.active_from) + "|"
    return None


def _check_heads(batch: Batch, heads: dict[tuple[str, str], ThreadHead]) -> None:
    """The head writes' expectations (see the ports notes), before anything applies."""
    slots = [(hw.head.tenant, hw.head.thread_id) for hw in batch.heads]
    if len(set(slots)) != len(slots):
        raise StoreError("a batch may write each thread's head at most once")
    for hw, slot in zip(batch.heads, slots, strict=True):
        check_head_write(hw.expected, slot, heads.get(slot))


def check_head_write(expected: int, slot: tuple[str, str], head: ThreadHead | None) -> None:
    """Raise unless a head write expecting ``expected`` may replace ``head``."""
    label = f"thread head {slot[0]}/{slot[1]}"
    if expected < 0:
        raise StoreError(f"{label}: a head write expects ABSENT or a version, not ANY")
    if expected == ABSENT:
        if head is not None:
            raise ConflictError(f"{label} already exists (version {head.version})")
    elif head is None:
        raise ConflictError(f"{label} does not exist, expected version {expected}")
    elif head.version != expected:
        raise ConflictError(f"{label} is at version {head.version}, expected {expected}")


def _check_expected(ns: str, key: str, item: Item | None, expected: int) -> None:
    if expected == ANY:
        return
    if expected == ABSENT:
        if item is not None:
            raise ConflictError(f"{ns}/{key} already exists (version {item.version})")
        return
    if item is None:
        raise ConflictError(f"{ns}/{key} does not exist, expected version {expected}")
    if item.version != expected:
        raise ConflictError(f"{ns}/{key} is at version {item.version}, expected {expected}")
