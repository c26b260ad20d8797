"""Prefetching what ingest will read, for stores that offer ``get_multi_heads``.

On a store whose every read is a round trip (PostgreSQL, and to a lesser degree a
SQLite file), ingest's reads dominate: deduplicate, identifiers, customers, the open
pointer, the live thread, each a separate call made after the previous one answered.
:func:`plan_ingest` walks the same chain for one message or a whole ``ingest_many``
batch *level by level*, one ``get_multi_heads`` per level for every message at once
(index entries and thread heads in one round trip), and returns what it found (and
what it found absent) as a cache.

The pipeline then runs unchanged with its reads answered from the cache
(:func:`through_cache`, or the batch overlay of ``ingest_many``); a read the plan did
not foresee (a custom continuity rule, a merge) goes to the store as before. Nothing
about correctness depends on the plan: every read it answers is one the pipeline would
have made before the same commit, whose compare-and-set expectations (and the retry of
the whole operation on conflict, with a fresh plan) guard against concurrent writers
exactly as they do without prefetching. After a commit inside the operation (an
automatic merge commits on its own before the message), the cache is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

from convthread.domain.continuity import find_reference_tokens
from convthread.domain.model import Inbound
from convthread.ports import Item, ThreadHead
from convthread.service import _core as core
from convthread.service._core import (
    NS_CUSTOMER,
    NS_IDEM,
    NS_IDENT,
    NS_LATEST,
    NS_MSG,
    NS_OPEN,
    Call,
    Config,
    Op,
)
from convthread.service._results import IngestResult

#: (namespace, key) -> the entry, or None for "absent when prefetched"; (HEAD, thread
#: id) -> the thread's head, or None.
Cache = dict[tuple[str, str], "Item | ThreadHead | None"]

#: The cache's namespace for thread heads (the service's own: no store sees it).
HEAD: Final = "\x00head"

#: Keys per ``get_multi_heads`` call (bounded statements; many stores cap parameters).
CHUNK = 500


def _entry(cache: Cache, ns: str, key: str) -> Item | None:
    """The prefetched index entry at ``ns``/``key`` (None: absent or not fetched)."""
    found = cache.get((ns, key))
    return found if isinstance(found, Item) else None


def fetch(cache: Cache, keys: Iterable[tuple[str, str]]) -> Op[None]:
    """Add ``keys`` not yet in ``cache`` to it, index entries and heads together: one
    ``get_multi_heads`` call (one round trip) per chunk."""
    want = [k for k in dict.fromkeys(keys) if k not in cache]
    for i in range(0, len(want), CHUNK):
        part = want[i : i + CHUNK]
        pairs = [k for k in part if k[0] != HEAD]
        tids = [k[1] for k in part if k[0] == HEAD]
        items: dict[tuple[str, str], Item]
        heads: dict[str, ThreadHead]
        items, heads = yield ("get_multi_heads", (pairs, core.TENANT, tids))
        for k in pairs:
            cache[k] = items.get(k)
        for t in tids:
            cache[(HEAD, t)] = heads.get(t)


class Plan:
    __slots__ = ("ident_keys", "inbound", "msg_key", "ref_keys", "tokens", "topic")

    def __init__(
        self,
        inbound: Inbound,
        msg_key: str,
        topic: str | None,
        ident_keys: list[str],
        ref_keys: list[str],
        tokens: list[str],
    ) -> None:
        self.inbound = inbound
        self.msg_key = msg_key
        self.topic = topic
        self.ident_keys = ident_keys
        self.ref_keys = ref_keys
        self.tokens = tokens


def _plans(config: Config, inbounds: Sequence[object]) -> list[Plan]:
    from convthread.service._messages import normalize_sender

    plans: list[Plan] = []
    for inbound in inbounds:
        if not isinstance(inbound, Inbound):
            continue  # the pipeline raises the typed error
        try:
            sender = normalize_sender(config, inbound)
            topic = config.continuity.topic_of(inbound)
        except Exception:
            continue
        refs = ([inbound.reply_to] if inbound.reply_to else []) + list(inbound.references)
        plans.append(
            Plan(
                inbound,
                f"{inbound.channel}|{inbound.provider_message_id}",
                topic,
                [s.identifier.key for s in sender],
                [f"{inbound.channel}|{r}" for r in refs],
                find_reference_tokens(inbound),
            )
        )
    return plans


def plan_ingest(config: Config, inbounds: Sequence[object]) -> Op[tuple[Cache, list[Plan]]]:
    """Prefetch, level by level, what ingesting ``inbounds`` in order will read (levels
    the hints foresaw cost no call of their own)."""
    from convthread.service._snapshots import CHECKPOINT_EVERY, checkpoint_key

    cache: Cache = {}
    plans = _plans(config, inbounds)
    hints = config.hints
    # Level 1: deduplication, identifiers, referenced messages; and what the hints say
    # levels 2 to 4 will want (the customer, its open pointer, the live thread and its
    # checkpoint, see level 4).
    level: list[tuple[str, str]] = []
    hinted: list[str] = []  # the customer of each hint (an over-count probes a key more)
    threads: list[tuple[str, str, int]] = []  # (customer, hinted thread, its last seq)
    for p in plans:
        level.append((NS_MSG, p.msg_key))
        if p.inbound.idempotency_key is not None:
            level.append((NS_IDEM, p.inbound.idempotency_key))
        level.extend((NS_IDENT, k) for k in p.ident_keys)
        level.extend((NS_MSG, k) for k in p.ref_keys)
        for k in p.ident_keys:
            cid = hints.customer(k)
            if cid is not None:
                okey = core.open_key(cid, p.topic)
                level.append((NS_CUSTOMER, cid))
                level.append((NS_OPEN, okey))
                hinted.append(cid)
                thread = hints.thread(okey)
                if thread is not None:
                    level.append((HEAD, thread[0]))
                    threads.append((cid, *thread))
    messages = Counter(hinted)
    level.extend(
        (core.NS_HSNAP, checkpoint_key(tid))
        for cid, tid, seq in threads
        if seq + 2 * messages[cid] >= CHECKPOINT_EVERY
    )
    yield from fetch(cache, level)
    # Level 2: the owners' states and open pointers; referenced and named threads.
    owned: list[str] = []  # the owners of each message (once per message)
    okeys: dict[str, None] = {}  # their open keys (customer and topic), first seen first
    level = []
    for p in plans:
        if cache.get((NS_MSG, p.msg_key)) is not None:
            continue  # a redelivery: the pipeline reads its outcome, nothing more
        ids: list[str] = []
        for k in p.ident_keys:
            item = _entry(cache, NS_IDENT, k)
            if item is not None:
                ids.append(core.decode_identref(item.value).customer_id)
        ids = list(dict.fromkeys(ids))
        owned.extend(ids)
        for cid in ids:
            okey = core.open_key(cid, p.topic)
            okeys[okey] = None
            level.append((NS_CUSTOMER, cid))
            level.append((NS_OPEN, okey))
        for k in p.ref_keys:
            ref = _entry(cache, NS_MSG, k)
            if ref is not None:
                level.append((HEAD, core.decode_msgref(ref.value).thread_id))
        level.extend((HEAD, t) for t in p.tokens)
    yield from fetch(cache, level)
    # Level 3: the live threads, or the newest ones where none is live.
    level = []
    for okey in okeys:
        live = _entry(cache, NS_OPEN, okey)
        if live is not None:
            level.append((HEAD, live.value.decode()))
        else:
            level.append((NS_LATEST, okey))
    yield from fetch(cache, level)
    # Level 4: the newest threads; checkpoints of threads long enough to need one.
    level = []
    for okey in okeys:
        latest = _entry(cache, NS_LATEST, okey)
        if latest is not None:
            level.append((HEAD, latest.value.decode()))
    # Each message appends one or two events (a wake-up) to a thread of its customer: in
    # a batch a thread may grow by twice its customer's messages before its checkpoint is
    # probed.
    owners = Counter(owned)
    for (ns, key), found in list(cache.items()):
        if (
            ns == HEAD
            and isinstance(found, ThreadHead)
            and found.last_seq + 2 * owners[found.customer_id] >= CHECKPOINT_EVERY
        ):
            level.append((core.NS_HSNAP, checkpoint_key(key)))
    yield from fetch(cache, level)
    return cache, plans


def learn(config: Config, plans: Sequence[Plan], results: Sequence[IngestResult]) -> None:
    """Remember where ``results`` went (the hints of the next prefetches); ``plans`` are
    what :func:`plan_ingest` made for the same messages."""
    if len(plans) != len(results):
        return  # (only when a message failed, and then there are no results)
    for p, r in zip(plans, results, strict=True):
        okey = core.open_key(r.customer_id, p.topic)
        config.hints.learn(p.ident_keys, okey, r.thread_id, r.seq, r.customer_id)


def answer(cache: Cache, call: Call) -> tuple[bool, Any]:
    """Answer ``call`` from ``cache`` if it can: (True, result), else (False, None)."""
    name, args = call
    if name == "get":
        key = (args[0], args[1])
        if key in cache:
            return True, cache[key]
    elif name == "get_many":
        ns, keys = args
        out: dict[str, Item | ThreadHead] = {}
        for k in keys:
            if (ns, k) not in cache:
                return False, None
            item = cache[(ns, k)]
            if item is not None:
                out[k] = item
        return True, out
    elif name == "get_heads":
        _tenant, ids = args
        heads: dict[str, Item | ThreadHead] = {}
        for t in ids:
            if (HEAD, t) not in cache:
                return False, None
            head = cache[(HEAD, t)]
            if head is not None:
                heads[t] = head
        return True, heads
    return False, None


def through_cache(cache: Cache, op: Op[Any]) -> Op[Any]:
    """Run ``op`` with its reads answered from ``cache`` where it can; a commit drops the
    cache (what follows reads the store)."""
    try:
        call: Call = next(op)
        while True:
            hit, result = answer(cache, call) if cache else (False, None)
            if not hit:
                result = yield call
                if call[0] == "commit":
                    cache.clear()
            call = op.send(result)
    except StopIteration as stop:
        return stop.value


def ingest(config: Config, inbound: Inbound) -> Op[IngestResult]:
    """``_messages.ingest`` with its reads prefetched."""
    from convthread.service._messages import ingest as plain

    cache, plans = yield from plan_ingest(config, [inbound])
    result: IngestResult = yield from through_cache(cache, plain(config, inbound))
    learn(config, plans, [result])  # committed: the generator got past its commit
    return result


__all__ = [
    "HEAD",
    "Cache",
    "Plan",
    "answer",
    "fetch",
    "ingest",
    "learn",
    "plan_ingest",
    "through_cache",
]
