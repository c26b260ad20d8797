"""The read side of ingest: what a message (or an ``ingest_many`` batch) needs, loaded
before anything is decided.

:func:`query` validates a message and works out the keys it depends on (an
:class:`IngestQuery`: its deduplication keys, its sender's identifiers, the messages and
threads it refers to, its topic). :func:`load` then reads, for every message of the
batch at once, *round by round*: the deduplication keys and identifiers, then the
owners' customer states and open pointers, then the live (or newest) threads, then the
checkpoints of threads long enough to need one. Keys already known cost nothing, and a
round with nothing left to ask makes no call. Each round is one ``get_multi_heads`` call
(index entries and heads in one round trip); a store that does not offer it (the memory
store, whose every call is a lookup in this process, or a store of the old protocol
over a plain key-value store) is read as ingest goes, a few calls per message.

The hints (:class:`~convthread.service._core.Hints`: where this process's recent
messages went) let the first round ask for what the later rounds would: in the steady
state a message is loaded in **one** read. Hints only choose keys; every value ingest
uses is read in the same attempt, and the commit's expectations (compare-and-set
versions, ``ABSENT``) are checked by the store, so a stale hint costs a round, never a
wrong answer.

What was loaded is the :data:`Cache` an :class:`~convthread.service._write.Overlay`
answers from; ingest asks it first (:func:`entry`, :func:`entries`, :func:`heads`) and
reads the store only for what no round foresaw (a custom continuity rule's thread, a
merge's threads, a pending suggestion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from convthread import codec
from convthread.domain.continuity import find_reference_tokens
from convthread.domain.model import Inbound, SenderIdentifier
from convthread.errors import ValidationError
from convthread.ports import Item, ThreadHead
from convthread.service import _core as core
from convthread.service._core import (
    CHECKPOINT_EVERY,
    NS_CUSTOMER,
    NS_IDEM,
    NS_IDENT,
    NS_LATEST,
    NS_MSG,
    NS_OPEN,
    Config,
    Op,
    checkpoint_key,
)

if TYPE_CHECKING:
    from convthread.service._results import IngestResult
    from convthread.service._write import Overlay

__all__ = [
    "CHUNK",
    "HEAD",
    "Cache",
    "IngestQuery",
    "entries",
    "entry",
    "heads",
    "learn",
    "load",
    "normalize_sender",
    "query",
]

#: (namespace, key) -> the entry, or None for "absent when loaded"; (HEAD, thread id)
#: -> the thread's head, or None.
Cache = dict[tuple[str, str], "Item | ThreadHead | None"]

#: The cache's namespace for thread heads (the service's own: no store sees it).
HEAD: Final = "\x00head"

#: Keys per read call (bounded statements; many stores cap parameters).
CHUNK = 500


def normalize_sender(config: Config, inbound: Inbound) -> tuple[SenderIdentifier, ...]:
    """Re-normalize every sender identifier (cached), rejecting unknown kinds."""
    out: list[SenderIdentifier] = []
    seen: set[str] = set()
    registry = config.identifiers
    for s in inbound.sender:
        if not isinstance(s, SenderIdentifier):
            raise ValidationError(
                f"sender entries must be SenderIdentifier, not {type(s).__name__}"
            )
        ident = registry.renormalize(s.identifier)
        if ident.key in seen:
            continue
        seen.add(ident.key)
        out.append(s if ident == s.identifier else SenderIdentifier(ident, s.trust, s.method))
    return tuple(out)


class IngestQuery:
    """One message and the keys its ingest depends on."""

    __slots__ = (
        "fingerprint",
        "ident_keys",
        "inbound",
        "msg_key",
        "ref_ids",
        "ref_keys",
        "sender",
        "tokens",
        "topic",
    )

    def __init__(self, config: Config, inbound: Inbound) -> None:
        self.inbound = inbound
        self.sender = sender = normalize_sender(config, inbound)
        self.fingerprint = codec.fingerprint(inbound)
        self.msg_key = f"{inbound.channel}|{inbound.provider_message_id}"
        self.topic = config.continuity.topic_of(inbound)
        self.ident_keys = [s.identifier.key for s in sender]
        reply_to = inbound.reply_to
        self.ref_ids: list[str] = ([reply_to] if reply_to else []) + list(inbound.references)
        self.ref_keys = [f"{inbound.channel}|{r}" for r in self.ref_ids]
        self.tokens = find_reference_tokens(inbound)


def query(config: Config, inbound: object) -> IngestQuery:
    """The query of ``inbound``; a typed error when it cannot be ingested."""
    if not isinstance(inbound, Inbound):
        raise ValidationError(f"ingest() takes an Inbound, not {type(inbound).__name__}")
    return IngestQuery(config, inbound)


def _fetch(config: Config, cache: Cache, want: list[tuple[str, str]]) -> Op[None]:
    """Add ``want`` (keys not in ``cache``) to it, index entries and heads together."""
    want = list(dict.fromkeys(want))
    for i in range(0, len(want), CHUNK):
        part = want[i : i + CHUNK]
        pairs = [k for k in part if k[0] != HEAD]
        tids = [k[1] for k in part if k[0] == HEAD]
        items: dict[tuple[str, str], Item]
        found: dict[str, ThreadHead]
        items, found = yield ("get_multi_heads", (pairs, core.TENANT, tids))
        for k in pairs:
            cache[k] = items.get(k)
        for t in tids:
            cache[(HEAD, t)] = found.get(t)


def _item(cache: Cache, ns: str, key: str) -> Item | None:
    found = cache.get((ns, key))
    return found if isinstance(found, Item) else None


def load(config: Config, queries: Sequence[IngestQuery]) -> Op[Cache]:
    """Read, round by round, what ingesting ``queries`` in order will read (rounds the
    hints foresaw cost no call of their own)."""
    cache: Cache = {}
    if not config.prefetch:
        # Each read is a call into this process or a round trip of its own whatever
        # it asks: reading ahead saves nothing, ingest reads what it needs when it does.
        return cache
    hints = config.hints
    # Each message appends one or two events (a wake-up) to a thread of its customer: in
    # a batch a thread may grow by twice its customer's messages before its checkpoint
    # is probed. A thread whose last seq is ``near`` or more may need it then.
    near = CHECKPOINT_EVERY - 2
    many = len(queries) > 1
    hinted: dict[str, int] = {}  # customer -> its messages, as the hints say (batches)
    threads: list[tuple[str, str, int]] = []  # (customer, hinted thread, its last seq)
    # Round 1: deduplication, identifiers, referenced messages; and what the hints say
    # rounds 2 to 4 will want (the customer, its open pointer, the live thread and its
    # checkpoint).
    level: list[tuple[str, str]] = []
    for q in queries:
        level.append((NS_MSG, q.msg_key))
        if q.inbound.idempotency_key is not None:
            level.append((NS_IDEM, q.inbound.idempotency_key))
        for k in q.ident_keys:
            level.append((NS_IDENT, k))
            cid = hints.customer(k)
            if cid is not None:
                okey = core.open_key(cid, q.topic)
                level.append((NS_CUSTOMER, cid))
                level.append((NS_OPEN, okey))
                if many:
                    hinted[cid] = hinted.get(cid, 0) + 1
                thread = hints.thread(okey)
                if thread is not None:
                    level.append((HEAD, thread[0]))
                    threads.append((cid, *thread))
        if q.ref_keys:
            level.extend((NS_MSG, k) for k in q.ref_keys)
    for cid, tid, seq in threads:
        if seq + 2 * hinted.get(cid, 1) >= CHECKPOINT_EVERY:
            level.append((core.NS_HSNAP, checkpoint_key(tid)))
    yield from _fetch(config, cache, level)
    # Round 2: the owners' states and open pointers; referenced and named threads.
    okeys: dict[str, None] = {}  # the owners' open keys (customer and topic)
    owners: dict[str, int] = {}  # customer -> its messages (batches)
    level = []
    for q in queries:
        if cache.get((NS_MSG, q.msg_key)) is not None:
            continue  # a redelivery: ingest reads its outcome, nothing more
        ids: set[str] = set()
        for k in q.ident_keys:
            item = _item(cache, NS_IDENT, k)
            if item is not None:
                cid = core.decode_identref(item.value).customer_id
                if many and cid not in ids:
                    ids.add(cid)
                    owners[cid] = owners.get(cid, 0) + 1
                okey = core.open_key(cid, q.topic)
                if okey not in okeys:
                    okeys[okey] = None
                    level.append((NS_CUSTOMER, cid))
                    level.append((NS_OPEN, okey))
        for k in q.ref_keys:
            ref = _item(cache, NS_MSG, k)
            if ref is not None:
                level.append((HEAD, core.decode_msgref(ref.value).thread_id))
        if q.tokens:
            level.extend((HEAD, t) for t in q.tokens)
    want = [k for k in level if k not in cache]
    if want:
        yield from _fetch(config, cache, want)
    # Round 3: the live threads, or the newest ones where none is live.
    level = []
    for okey in okeys:
        live = _item(cache, NS_OPEN, okey)
        if live is not None:
            level.append((HEAD, live.value.decode()))
        else:
            level.append((NS_LATEST, okey))
    want = [k for k in level if k not in cache]
    if want:
        yield from _fetch(config, cache, want)
    # Round 4: the newest threads; checkpoints of threads long enough to need one.
    level = []
    for okey in okeys:
        latest = _item(cache, NS_LATEST, okey)
        if latest is not None:
            level.append((HEAD, latest.value.decode()))
    want = [k for k in level if k not in cache]
    for (ns, key), found in cache.items():
        if (
            ns == HEAD
            and isinstance(found, ThreadHead)
            and found.last_seq >= near
            and found.last_seq + 2 * owners.get(found.customer_id, 0 if many else 1)
            >= CHECKPOINT_EVERY
        ):
            probe = (core.NS_HSNAP, checkpoint_key(key))
            if probe not in cache:
                want.append(probe)
    if want:
        yield from _fetch(config, cache, want)
    return cache


def learn(config: Config, queries: Sequence[IngestQuery], results: Sequence[IngestResult]) -> None:
    """Remember where ``results`` went (the hints of the next loads); ``queries`` are
    those of the same messages."""
    if not config.prefetch or len(queries) != len(results):
        return  # (no load reads ahead; a message failed, and then there are no results)
    hints = config.hints
    for q, r in zip(queries, results, strict=True):
        okey = core.open_key(r.customer_id, q.topic)
        hints.learn(q.ident_keys, okey, r.thread_id, r.seq, r.customer_id)


# --------------------------------------------------------------------------- reads


def entry(view: Overlay, ns: str, key: str) -> Op[Item | None]:
    """The entry at ``ns``/``key`` as the operation sees it: its own writes, then what
    was loaded, then the store."""
    if not view.blank:
        found, item = view.lookup(ns, key)
        if found:
            return item
    got: Item | None = yield ("get", (ns, key))
    return got


def entries(view: Overlay, ns: str, keys: Sequence[str]) -> Op[dict[str, Item]]:
    """:func:`entry` for several keys (one store call for those only the store knows)."""
    if view.blank:
        if not keys:
            return {}
        every: dict[str, Item] = yield ("get_many", (ns, list(keys)))
        return every
    out: dict[str, Item] = {}
    missing: list[str] = []
    for k in keys:
        found, item = view.lookup(ns, k)
        if not found:
            missing.append(k)
        elif item is not None:
            out[k] = item
    if missing:
        got: dict[str, Item] = yield ("get_many", (ns, missing))
        out.update(got)
    return out


def heads(view: Overlay, thread_ids: Sequence[str]) -> Op[dict[str, ThreadHead]]:
    """The heads that exist among ``thread_ids``, as :func:`entry` sees entries."""
    out: dict[str, ThreadHead] = {}
    missing: list[str] = []
    for t in thread_ids:
        found, head = view.head(t)
        if not found:
            missing.append(t)
        elif head is not None:
            out[t] = head
    if missing:
        out.update((yield from core.get_heads(missing)))
    return out
