"""The write side of an operation: the batch in progress, and its one commit.

An :class:`Overlay` collects what an operation writes (for ingest: the message's own
writes and those of any automatic merge it makes), so that what follows in the same
operation reads its own writes, and everything is committed in one batch
(:func:`commit`). The store checks every expectation of that batch (compare-and-set
versions, ``ABSENT`` for what must be new) and refuses all of it on a conflict; the
operation then runs again from its load.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from convthread.domain.ingest import IngestDecision
from convthread.errors import ConflictError
from convthread.ports import (
    ABSENT,
    Append,
    Batch,
    Delete,
    HeadQuery,
    HeadWrite,
    Item,
    Put,
    Recorded,
    ThreadHead,
)
from convthread.service import _core as core
from convthread.service._core import NS_LATEST, NS_OPEN, Call, Op
from convthread.service._core import Writes as _Writes
from convthread.service._load import HEAD, Cache

__all__ = ["Overlay", "commit", "ingest_writes", "through"]


_UNKNOWN: Any = object()


class Overlay:
    """The writes of a batch in progress, seen by the operations that follow in it."""

    def __init__(self, cache: Cache | None = None) -> None:
        self.streams: dict[str, tuple[int, list[bytes]]] = {}  # stream -> (base, events)
        self.kv: dict[tuple[str, str], tuple[int, Item | None]] = {}  # -> (first exp., item)
        # Entries read ahead of the batch (see _load): consulted after the batch's own
        # writes, before the store.
        self.cache: Cache = cache if cache is not None else {}
        self._fake = 1 << 40
        self.heads: dict[str, tuple[int, ThreadHead]] = {}  # thread -> (first exp., head)
        self.taken = False  # whether a batch was taken (else batch() is empty)
        self.blank = not self.cache  # nothing read ahead, nothing taken: answers nothing

    def head(self, thread_id: str) -> tuple[bool, ThreadHead | None]:
        """As :meth:`lookup`, for a thread's head."""
        if self.heads:
            written = self.heads.get(thread_id)
            if written is not None:
                return True, written[1]
        found = self.cache.get((HEAD, thread_id), _UNKNOWN)
        if found is _UNKNOWN:
            return False, None
        return True, cast("ThreadHead | None", found)

    def lookup(self, ns: str, key: str) -> tuple[bool, Item | None]:
        """(True, the entry or None for absent) if the batch wrote the key or it was read
        ahead; (False, None) if only the store knows."""
        k = (ns, key)
        if self.kv:
            written = self.kv.get(k)
            if written is not None:
                return True, written[1]
        found = self.cache.get(k, _UNKNOWN)
        if found is _UNKNOWN:
            return False, None
        return True, cast("Item | None", found)

    def version(self, stream: str) -> int | None:
        entry = self.streams.get(stream)
        return None if entry is None else entry[0] + len(entry[1])

    def take(self, batch: Batch) -> None:
        self.taken = True
        self.blank = False
        for a in batch.appends:
            entry = self.streams.get(a.stream)
            if entry is None:
                self.streams[a.stream] = (a.expected, list(a.events))
            else:
                base, events = entry
                if a.expected != base + len(events):
                    raise ConflictError(f"stream {a.stream!r} moved inside the batch")
                events.extend(a.events)
        ops: list[Put | Delete] = [*batch.puts, *batch.deletes]
        for op in ops:
            key = (op.ns, op.key)
            entry2 = self.kv.get(key)
            if entry2 is not None:
                first, item = entry2
                if op.expected == ABSENT and item is not None:
                    raise ConflictError(f"{op.ns}/{op.key} was created inside the batch")
                if op.expected > 0 and (item is None or item.version != op.expected):
                    raise ConflictError(f"{op.ns}/{op.key} moved inside the batch")
            else:
                first = op.expected
            if isinstance(op, Put):
                self._fake += 1
                version = op.expected + 1 if op.expected >= 0 else self._fake
                if entry2 is not None and entry2[1] is not None:
                    version = entry2[1].version + 1
                self.kv[key] = (first, Item(op.value, version))
            else:
                self.kv[key] = (first, None)
        for hw in batch.heads:
            tid = hw.head.thread_id
            entry3 = self.heads.get(tid)
            if entry3 is not None:
                first, head = entry3
                if hw.expected != head.version:
                    raise ConflictError(f"thread head {tid} moved inside the batch")
            else:
                first = hw.expected
            self.heads[tid] = (first, msgspec.structs.replace(hw.head, version=hw.expected + 1))

    def batch(self) -> Batch:
        appends = tuple(Append(s, base, tuple(ev)) for s, (base, ev) in self.streams.items())
        puts: list[Put] = []
        deletes: list[Delete] = []
        for (ns, key), (first, item) in self.kv.items():
            if item is None:
                deletes.append(Delete(ns, key, first))
            else:
                puts.append(Put(ns, key, item.value, first))
        heads = tuple(HeadWrite(head, first) for first, head in self.heads.values())
        return Batch(appends=appends, puts=tuple(puts), deletes=tuple(deletes), heads=heads)


def through(overlay: Overlay, op: Op[Any]) -> Op[Any]:
    """Run ``op`` with its reads answered through ``overlay`` and its commit taken into it."""
    try:
        call: Call = next(op)
        while True:
            name, args = call
            if name == "commit":
                overlay.take(args[0])
                result: Any = None
            elif overlay.blank:
                result = yield call  # nothing read ahead or written yet: the store answers
            elif name == "get":
                found, item = overlay.lookup(args[0], args[1])
                result = item if found else (yield call)
            elif name == "get_many":
                ns, keys = args
                result = {}
                missing = []
                for k in keys:
                    found, item = overlay.lookup(ns, k)
                    if not found:
                        missing.append(k)
                    elif item is not None:
                        result[k] = item
                if missing:
                    result.update((yield ("get_many", (ns, missing))))
            elif name == "read":
                result = yield from _overlay_read(overlay, *args)
            elif name == "version":
                v = overlay.version(args[0])
                result = v if v is not None else (yield call)
            elif name == "scan":
                result = yield from _overlay_scan(overlay, *args)
            elif name == "get_heads":
                tenant, ids = args
                result = {}
                missing = []
                for tid in ids:
                    found, head = overlay.head(tid)
                    if not found:
                        missing.append(tid)
                    elif head is not None:
                        result[tid] = head
                if missing:
                    result.update((yield ("get_heads", (tenant, missing))))
            elif name == "find_heads":
                result = yield from _overlay_find(overlay, args[0])
            else:
                result = yield call
            call = op.send(result)
    except StopIteration as stop:
        return stop.value


def _overlay_read(
    overlay: Overlay, stream: str, after: int, limit: int | None
) -> Op[list[Recorded]]:
    entry = overlay.streams.get(stream)
    if entry is None:
        return (yield from core.read(stream, after, limit))
    base, events = entry
    out: list[Recorded] = []
    if after < base:
        take = base - after if limit is None else min(limit, base - after)
        out = yield from core.read(stream, after, take)
    for i, data in enumerate(events, start=base + 1):
        if i > after and (limit is None or len(out) < limit):
            out.append(Recorded(stream, i, data))
    return out


def _overlay_scan(
    overlay: Overlay, ns: str, prefix: str, after: str, limit: int
) -> Op[list[tuple[str, Item]]]:
    mine = {
        k: v
        for (n, k), (_f, v) in overlay.kv.items()
        if n == ns and k.startswith(prefix) and k > after
    }
    # Ask for as many more as the batch deleted, so a full page stays full.
    extra = sum(1 for v in mine.values() if v is None)
    page = yield from core.scan(ns, prefix, after, limit + extra)
    if not mine:
        return page
    merged = {k: it for k, it in page if k not in mine}
    merged.update({k: v for k, v in mine.items() if v is not None})
    if len(page) == limit + extra and page:
        # Overlay keys beyond the store page's last key may hide store keys before them.
        last = page[-1][0]
        merged = {k: v for k, v in merged.items() if k <= last}
    keys = sorted(merged)[:limit]
    return [(k, merged[k]) for k in keys]


def _overlay_find(overlay: Overlay, query: HeadQuery) -> Op[list[ThreadHead]]:
    """``find_heads`` as the store will answer it once the batch is committed."""
    if not overlay.heads:
        return (yield from core.find_heads(query))
    # Ask for as many more as the batch wrote, so a full page stays full.
    asked = msgspec.structs.replace(query, limit=query.limit + len(overlay.heads))
    page = yield from core.find_heads(asked)
    mine = [h for _f, h in overlay.heads.values() if query.matches(h) and query.beyond(h)]
    merged = [h for h in page if h.thread_id not in overlay.heads] + mine
    merged.sort(key=lambda h: (h.last_activity, h.thread_id), reverse=query.newest_first)
    return merged[: query.limit]


def commit(overlay: Overlay, batch: Batch) -> Op[None]:
    """Commit ``batch`` (the operation's last writes) with what ``overlay`` took before
    it, as one batch: the batch as it is when the overlay took nothing."""
    if overlay.taken:
        overlay.take(batch)
        batch = overlay.batch()
    if not batch.is_empty:
        yield from core.commit(batch)


def ingest_writes(writes: _Writes, decision: IngestDecision) -> None:
    """Add what ``decision`` writes to ``writes``: each thread's events and head, and the
    customer's pointers for the topic."""
    for a in decision.appends:
        writes.append(a.stream, a.expected, a.events)
    for h in decision.heads:
        writes.thread(None, h.new, h.expected)
    for p in decision.pointers:
        ns = NS_OPEN if p.kind == "open" else NS_LATEST
        key = core.open_key(p.customer_id, p.topic)
        if p.thread_id is None:
            writes.delete(ns, key, p.expected)
        else:
            writes.put(ns, key, p.thread_id.encode(), p.expected)
