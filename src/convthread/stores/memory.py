"""The in-memory store: the reference implementation of the store protocol.

Everything lives in Python dicts guarded by one lock. It is what the conformance kit
compares other stores with, and the store of choice for tests. Nothing survives the
process.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from math import isqrt

from convthread.errors import ConflictError, StoreError
from convthread.ports import ABSENT, ANY, Batch, Item, Recorded

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
            self._maybe_rebuild()

    def remove(self, key: str) -> None:
        """Note a key that is in the namespace."""
        added = self.added
        i = bisect_left(added, key)
        if i < len(added) and added[i] == key:
            del added[i]
        else:
            self.removed.add(key)
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


class MemoryStore:
    """A thread-safe in-memory :class:`~convthread.ports.Store`."""

    def __init__(self) -> None:
        self._streams: dict[str, list[bytes]] = {}
        # The position of each event, per stream, from one store-wide counter: the
        # lock makes a commit's positions a block after every earlier commit's.
        self._positions: dict[str, list[int]] = {}
        self._last_position = 0
        self._kv: dict[str, dict[str, Item]] = {}
        self._keys: dict[str, _SortedKeys] = {}  # keys per namespace, for scan
        self._lock = threading.RLock()
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

    def commit(self, batch: Batch) -> None:
        self._check_open()
        appends, puts, deletes, rewrites = batch.appends, batch.puts, batch.deletes, batch.rewrites
        streams, kv = self._streams, self._kv
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
            for rw in rewrites:
                if not 1 <= rw.seq <= len(streams.get(rw.stream, ())):
                    raise StoreError(f"cannot rewrite missing event {rw.stream!r}#{rw.seq}")
            # Apply.
            for append in appends:
                events = streams.get(append.stream)
                first = self._last_position + 1
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

    def scrub(self) -> None:
        self._check_open()

    def close(self) -> None:
        self._closed = True


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
