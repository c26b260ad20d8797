"""Thread heads over a key-value store: the adapter for stores without head methods.

A store written to the protocol of releases up to 0.1 (:class:`~convthread.ports.KVStore`:
streams and a generic index, no heads) keeps working: the service wraps it in
:func:`with_heads`, which implements ``get_heads``, ``find_heads`` and the head writes
of a batch with the generic operations, in index namespaces private to this module, laid
out exactly as those releases laid them out (so the data such a store already holds is
read as it is, with no migration):

* ``thread``: thread id -> the head (its entry's version is the head's version). Releases
  up to 0.1 wrote the codec's ThreadState bytes there, which are read as they are; a
  head written by this adapter is the byte ``0xC1`` (never the first byte of
  MessagePack) and then its columns and opaque state, positionally;
* ``tactive``: ``"{status}|{last activity}|{thread}"`` -> ``b""`` (every thread);
* ``tchannel``: ``"{channel}|{thread}"`` -> ``b""`` (the channels a thread used);
* ``snooze``: ``"{until}|{thread}"`` -> ``b""`` (snoozed threads, by wake-up time);
* ``cthreads``: ``"{customer}|{thread}"`` -> ``b""`` (a customer's threads).

Times are microseconds since 1970, 17 digits. A tenant other than the default one gets
namespaces of its own (``thread@{tenant}``, ...).

A head write reads the head it replaces (to move its index entries) and commits its
entry with compare-and-set on the version read, so a concurrent writer makes the batch
conflict. Queries walk the index of their filter: a customer's threads, the snoozed
ones, or the per-status activity ranges merged (oldest first; newest first reads the
whole range, as the generic index scans forward only). A native store answers both
with database indexes; this adapter is for compatibility, not speed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import msgspec

from convthread import codec
from convthread._heads import head_of
from convthread.domain.events import ThreadStatus
from convthread.errors import ConflictError, StoreError
from convthread.ports import (
    ABSENT,
    ANY,
    DEFAULT_TENANT,
    AsyncKVStore,
    Batch,
    Delete,
    HeadQuery,
    Item,
    KVStore,
    Put,
    Recorded,
    ThreadHead,
)

__all__ = ["AsyncKVHeads", "KVHeads", "with_heads", "with_heads_async"]

_THREAD: Final = "thread"
_TACTIVE: Final = "tactive"
_TCHANNEL: Final = "tchannel"
_SNOOZE: Final = "snooze"
_CTHREADS: Final = "cthreads"
#: The namespaces this adapter owns (the migrations of native stores drop them).
NAMESPACES: Final = (_THREAD, _TACTIVE, _TCHANNEL, _SNOOZE, _CTHREADS)
_NONE: Final = b""
_PAGE: Final = 200
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US: Final = timedelta(microseconds=1)
_STATUSES: Final = tuple(s.value for s in ThreadStatus)

#: An adapter operation: yields calls to the wrapped store, gets their results.
_Op = Generator[tuple[str, tuple[Any, ...]], Any, Any]


def _ns(name: str, tenant: str) -> str:
    return name if tenant == DEFAULT_TENANT else f"{name}@{tenant}"


def _tk(value: datetime) -> str:
    return f"{max((value - _EPOCH) // _US, 0):017d}"


def _activity_key(head: ThreadHead) -> str:
    return f"{head.status}|{_tk(head.last_activity)}|{head.thread_id}"


class _Stored(msgspec.Struct, array_like=True, gc=False):
    """A head as this adapter stores it (tenant and version are the entry's)."""

    thread_id: str
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


_MARK: Final = b"\xc1"
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_Stored)


def _value(head: ThreadHead) -> bytes:
    stored = _Stored(
        head.thread_id,
        head.customer_id,
        head.status,
        head.last_seq,
        head.last_activity,
        head.last_channel,
        head.topic,
        head.channels,
        head.snoozed_until,
        head.controller,
        head.created_at,
        head.state,
    )
    return _MARK + _encoder.encode(stored)


def _head(tenant: str, item: Item) -> ThreadHead:
    if item.value[:1] == _MARK:
        s = _decoder.decode(item.value[1:])
        return ThreadHead(
            thread_id=s.thread_id,
            tenant=tenant,
            customer_id=s.customer_id,
            status=s.status,
            last_seq=s.last_seq,
            last_activity=s.last_activity,
            last_channel=s.last_channel,
            topic=s.topic,
            channels=s.channels,
            snoozed_until=s.snoozed_until,
            controller=s.controller,
            created_at=s.created_at,
            state=s.state,
            version=item.version,
        )
    head = head_of(codec.decode_thread_state(item.value), tenant)  # written by 0.1
    return ThreadHead(
        thread_id=head.thread_id,
        tenant=tenant,
        customer_id=head.customer_id,
        status=head.status,
        last_seq=head.last_seq,
        last_activity=head.last_activity,
        last_channel=head.last_channel,
        topic=head.topic,
        channels=head.channels,
        snoozed_until=head.snoozed_until,
        controller=head.controller,
        created_at=head.created_at,
        state=head.state,
        version=item.version,
    )


def _index_ops(old: ThreadHead | None, new: ThreadHead) -> tuple[list[Put], list[Delete]]:
    """The index entries that move when ``old`` becomes ``new``."""
    t, tid = new.tenant, new.thread_id
    puts: list[Put] = []
    deletes: list[Delete] = []
    key = _activity_key(new)
    if old is None:
        puts.append(Put(_ns(_TACTIVE, t), key, _NONE, ABSENT))
        puts.append(Put(_ns(_CTHREADS, t), f"{new.customer_id}|{tid}", _NONE, ABSENT))
    else:
        old_key = _activity_key(old)
        if old_key != key:
            deletes.append(Delete(_ns(_TACTIVE, t), old_key, ANY))
            puts.append(Put(_ns(_TACTIVE, t), key, _NONE, ANY))
        if old.customer_id != new.customer_id:
            deletes.append(Delete(_ns(_CTHREADS, t), f"{old.customer_id}|{tid}", ANY))
            puts.append(Put(_ns(_CTHREADS, t), f"{new.customer_id}|{tid}", _NONE, ANY))
    old_channels = () if old is None else old.channels
    for channel in new.channels:
        if channel not in old_channels:
            puts.append(Put(_ns(_TCHANNEL, t), f"{channel}|{tid}", _NONE, ANY))
    old_until = None if old is None else old.snoozed_until
    if old_until != new.snoozed_until:
        if old_until is not None:
            deletes.append(Delete(_ns(_SNOOZE, t), f"{_tk(old_until)}|{tid}", ANY))
        if new.snoozed_until is not None:
            puts.append(Put(_ns(_SNOOZE, t), f"{_tk(new.snoozed_until)}|{tid}", _NONE, ANY))
    return puts, deletes


# --------------------------------------------------------------------------- operations


def _get_heads(tenant: str, thread_ids: Sequence[str]) -> _Op:
    if not thread_ids:
        return {}
    items: dict[str, Item] = yield ("get_many", (_ns(_THREAD, tenant), list(thread_ids)))
    return {tid: _head(tenant, item) for tid, item in items.items()}


def _commit(batch: Batch) -> _Op:
    if not batch.heads:
        yield ("commit", (batch,))
        return None
    slots = [(hw.head.tenant, hw.head.thread_id) for hw in batch.heads]
    if len(set(slots)) != len(slots):
        raise StoreError("a batch may write each thread's head at most once")
    puts = list(batch.puts)
    deletes = list(batch.deletes)
    for hw in batch.heads:
        head, expected = hw.head, hw.expected
        if expected < 0:
            raise StoreError(
                f"thread head {head.tenant}/{head.thread_id}: a head write expects ABSENT "
                "or a version, not ANY"
            )
        old: ThreadHead | None = None
        if expected != ABSENT:
            found = yield from _get_heads(head.tenant, [head.thread_id])
            old = found.get(head.thread_id)
            if old is None or old.version != expected:
                at = "does not exist" if old is None else f"is at version {old.version}"
                raise ConflictError(
                    f"thread head {head.tenant}/{head.thread_id} {at}, expected {expected}"
                )
        puts.append(Put(_ns(_THREAD, head.tenant), head.thread_id, _value(head), expected))
        more_puts, more_deletes = _index_ops(old, head)
        puts.extend(more_puts)
        deletes.extend(more_deletes)
    plain = Batch(
        appends=batch.appends, puts=tuple(puts), deletes=tuple(deletes), rewrites=batch.rewrites
    )
    yield ("commit", (plain,))
    return None


def _find_heads(query: HeadQuery) -> _Op:
    t = query.tenant
    if query.limit <= 0:
        return []
    if query.customer_id is not None or query.snoozed_before is not None or query.newest_first:
        # Collect the candidates, then order: a customer's threads are few; the snoozed
        # ones are ordered by wake-up time, not activity; newest first reads backwards.
        ids: list[str] = []
        if query.customer_id is not None:
            keys = yield from _keys(_ns(_CTHREADS, t), f"{query.customer_id}|", "", None)
            ids = [k.split("|", 1)[1] for k in keys]
        elif query.snoozed_before is not None:
            horizon = _tk(query.snoozed_before)
            keys = yield from _keys(_ns(_SNOOZE, t), "", "", horizon)
            ids = [k.split("|", 1)[1] for k in keys if k[:17] < horizon]
        else:
            for status in query.statuses or _STATUSES:
                keys = yield from _keys(_ns(_TACTIVE, t), f"{status}|", "", None)
                ids.extend(k.rsplit("|", 1)[1] for k in keys)
        heads = yield from _get_heads(t, ids)
        found = [h for h in heads.values() if query.matches(h) and query.beyond(h)]
        found.sort(key=lambda h: (h.last_activity, h.thread_id), reverse=query.newest_first)
        return found[: query.limit]
    # Oldest first: walk the activity ranges of the statuses, merged, a page at a time.
    start = ""
    if query.after is not None:
        start = f"{_tk(query.after[0])}|{query.after[1]}"
    if query.active_from is not None and start < _tk(query.active_from):
        start = _tk(query.active_from)
    until = _tk(query.active_until) if query.active_until is not None else None
    statuses = list(query.statuses or _STATUSES)
    buffers: dict[str, deque[str]] = {st: deque() for st in statuses}  # "{time}|{thread}"
    more = dict.fromkeys(statuses, True)
    after = dict.fromkeys(statuses, start)
    out: list[ThreadHead] = []
    pending: list[str] = []
    while True:
        for st in statuses:
            if not buffers[st] and more[st]:
                prefix = f"{st}|"
                page = yield from _scan_keys(_ns(_TACTIVE, t), prefix, after[st])
                buffers[st].extend(k[len(prefix) :] for k in page)
                more[st] = len(page) == _PAGE
                if page:
                    after[st] = page[-1][len(prefix) :]
        live = [st for st in statuses if buffers[st]]
        done = not live
        if not done:
            pos = buffers[min(live, key=lambda st: buffers[st][0])].popleft()
            done = until is not None and pos[:17] > until  # the smallest left: past the range
            if not done:
                pending.append(pos)
        if done or len(pending) >= _PAGE:
            heads = yield from _get_heads(t, [p.split("|", 1)[1] for p in pending])
            for p in pending:
                head = heads.get(p.split("|", 1)[1])
                if head is not None and query.matches(head) and query.beyond(head):
                    out.append(head)
                    if len(out) == query.limit:
                        return out
            pending = []
        if done:
            return out


def _scan_keys(ns: str, prefix: str, start: str) -> _Op:
    """One page of keys of ``ns`` under ``prefix``, after ``prefix + start``."""
    after = prefix + start if start else ""
    page: list[tuple[str, Item]] = yield ("scan", (ns, prefix, after, _PAGE))
    return [k for k, _ in page]


def _keys(ns: str, prefix: str, after: str, stop: str | None) -> _Op:
    """Every key of ``ns`` under ``prefix`` (up to the first that sorts at or past
    ``prefix + stop``)."""
    keys: list[str] = []
    while True:
        page: list[tuple[str, Item]] = yield ("scan", (ns, prefix, after, 1000))
        for k, _ in page:
            if stop is not None and k[len(prefix) :] >= stop:
                return keys
            keys.append(k)
        if len(page) < 1000:
            return keys
        after = page[-1][0]


def _get_multi_heads(
    keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
) -> _Op:
    pairs = list(keys) + [(_ns(_THREAD, tenant), t) for t in thread_ids]
    found: dict[tuple[str, str], Item] = {}
    if pairs:
        found = yield ("get_multi", (pairs,))
    items = {k: found[k] for k in keys if k in found}
    ns = _ns(_THREAD, tenant)
    heads = {t: _head(tenant, found[(ns, t)]) for t in thread_ids if (ns, t) in found}
    return items, heads


# --------------------------------------------------------------------------- drivers


def _run(store: Any, op: _Op) -> Any:
    try:
        call = next(op)
        while True:
            name, args = call
            call = op.send(getattr(store, name)(*args))
    except StopIteration as stop:
        return stop.value


async def _run_async(store: Any, op: _Op) -> Any:
    try:
        call = next(op)
        while True:
            name, args = call
            call = op.send(await getattr(store, name)(*args))
    except StopIteration as stop:
        return stop.value


class KVHeads:
    """A :class:`~convthread.ports.Store` over a :class:`~convthread.ports.KVStore`:
    every call but the head operations goes to ``inner`` as it is."""

    def __init__(self, inner: KVStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"KVHeads({self.inner!r})"

    def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return self.inner.read(stream, after, limit)

    def version(self, stream: str) -> int:
        return self.inner.version(stream)

    def get(self, ns: str, key: str) -> Item | None:
        return self.inner.get(ns, key)

    def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return self.inner.get_many(ns, keys)

    def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return self.inner.scan(ns, prefix, after, limit)

    def commit(self, batch: Batch) -> None:
        _run(self.inner, _commit(batch))

    def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        result: dict[str, ThreadHead] = _run(self.inner, _get_heads(tenant, thread_ids))
        return result

    def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        result: list[ThreadHead] = _run(self.inner, _find_heads(query))
        return result

    def scrub(self) -> None:
        self.inner.scrub()

    def close(self) -> None:
        self.inner.close()


class _KVHeadsMulti(KVHeads):
    """:class:`KVHeads` over a store that offers ``get_multi``."""

    def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        result: dict[tuple[str, str], Item] = self.inner.get_multi(keys)  # type: ignore[attr-defined]
        return result

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        result: tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]] = _run(
            self.inner, _get_multi_heads(keys, tenant, thread_ids)
        )
        return result


class AsyncKVHeads:
    """The asyncio form of :class:`KVHeads`, over an :class:`~convthread.ports.AsyncKVStore`."""

    def __init__(self, inner: AsyncKVStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"AsyncKVHeads({self.inner!r})"

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return await self.inner.read(stream, after, limit)

    async def version(self, stream: str) -> int:
        return await self.inner.version(stream)

    async def get(self, ns: str, key: str) -> Item | None:
        return await self.inner.get(ns, key)

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return await self.inner.get_many(ns, keys)

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return await self.inner.scan(ns, prefix, after, limit)

    async def commit(self, batch: Batch) -> None:
        await _run_async(self.inner, _commit(batch))

    async def get_heads(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, ThreadHead]:
        result: dict[str, ThreadHead] = await _run_async(self.inner, _get_heads(tenant, thread_ids))
        return result

    async def find_heads(self, query: HeadQuery) -> list[ThreadHead]:
        result: list[ThreadHead] = await _run_async(self.inner, _find_heads(query))
        return result

    async def scrub(self) -> None:
        await self.inner.scrub()

    async def close(self) -> None:
        await self.inner.close()


class _AsyncKVHeadsMulti(AsyncKVHeads):
    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        result: dict[tuple[str, str], Item] = await self.inner.get_multi(keys)  # type: ignore[attr-defined]
        return result

    async def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        result: tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]] = await _run_async(
            self.inner, _get_multi_heads(keys, tenant, thread_ids)
        )
        return result


def with_heads(store: KVStore) -> KVHeads:
    """``store`` with head operations over its generic index (offering ``get_multi``
    and ``get_multi_heads`` where ``store`` offers ``get_multi``)."""
    return _KVHeadsMulti(store) if callable(getattr(store, "get_multi", None)) else KVHeads(store)


def with_heads_async(store: AsyncKVStore) -> AsyncKVHeads:
    """The asyncio form of :func:`with_heads`."""
    if callable(getattr(store, "get_multi", None)):
        return _AsyncKVHeadsMulti(store)
    return AsyncKVHeads(store)
