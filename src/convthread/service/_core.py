"""The shared core of the service: configuration, index namespaces, and store calls.

Every operation is a generator that *yields store calls* (``("get", (ns, key))``) and
receives their results; it never touches a store itself. The sync driver
(:class:`~convthread.Conversations`) and the asyncio driver
(:class:`~convthread.AsyncConversations`) run the same generators, so the pipeline is
written once. A generator runs from scratch again when its commit conflicts.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Final, TypeVar

import msgspec

from convthread import codec
from convthread._heads import head_of, state_of
from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.events import CustomerEvent, ThreadEvent
from convthread.domain.handoff import HandoffRule
from convthread.domain.identifiers import IdentifierRegistry, default_registry
from convthread.domain.identity import DisclosurePolicy
from convthread.domain.merge import MergePolicy
from convthread.domain.redaction import DEFAULT_POLICIES, RedactionPolicy
from convthread.domain.thread import CustomerState, LifecyclePolicy, ThreadState, evolve_customer
from convthread.domain.tokens import KeyRing
from convthread.errors import NotFound
from convthread.ports import (
    ANY,
    DEFAULT_TENANT,
    Append,
    Batch,
    Clock,
    Delete,
    HeadQuery,
    HeadWrite,
    IdSource,
    Item,
    Put,
    RandomIds,
    Recorded,
    SystemClock,
    ThreadHead,
)

T = TypeVar("T")

#: A store call: method name and positional arguments.
Call = tuple[str, tuple[Any, ...]]
#: An operation: yields store calls, returns its result.
Op = Generator[Call, Any, T]

#: The tenant the service's heads belong to (one per service until tenants are configurable).
TENANT: Final = DEFAULT_TENANT

# Index namespaces, the service's own key layouts over the store's generic index.
# Threads are not among them: each is a head (``ThreadHead``, a typed row of the store),
# read with get_heads / find_heads and written by Writes.thread.
NS_MSG: Final = "msg"  # "{channel}|{provider message id}" -> MsgRef
NS_IDEM: Final = "idem"  # explicit idempotency key -> MsgRef
NS_IDENT: Final = "ident"  # identifier key -> IdentRef
NS_CUSTOMER: Final = "customer"  # customer id -> CustomerState (cache of its stream)
NS_OPEN: Final = "open"  # "{customer}|{topic}" -> thread id of the live thread
NS_LATEST: Final = "latest"  # "{customer}|{topic}" -> thread id of the newest thread
# Time keys are UTC microseconds since 1970, 17 digits (sortable).
NS_MARK: Final = "mark"  # "{thread}|{seq}" -> MessageMark (status, edit, deletion, reactions)
NS_EARLY: Final = "early"  # "{channel}|{provider message id}" -> EarlyStatuses (unknown msg)
NS_UNSUPPORTED: Final = "unsupported"  # "{recorded at}|{id}" -> Unsupported (kept for review)
# Identity.
NS_MERGE: Final = "merge"  # merge id -> MergeRef (survivor, absorbed, undone)
NS_SUGGEST: Final = "suggest"  # suggestion id -> SuggestionRef (pair, status, decision)
NS_SUGGEST_PAIR: Final = "suggestpair"  # "{customer a}|{customer b}" (sorted) -> suggestion id
NS_VERIFY: Final = "verify"  # verification id -> VerificationRecord (hashed code, expiry)
# Handoff, snapshots and continuation tokens.
NS_HANDOFF: Final = "handoff"  # handoff id -> HandoffRecord (thread, status, parties)
NS_OFFERS: Final = "offers"  # "{expires at time_key}|{handoff id}" -> thread id (live offers)
NS_HSNAP: Final = "hsnap"  # "{thread}|{handoff}" -> Snapshot JSON handed to the receiver;
# "{thread}|" (empty handoff id) -> SnapshotState checkpoint (message text: erased with them)
#: A thread's snapshot checkpoint moves forward once it is this many events behind.
CHECKPOINT_EVERY: Final = 64


def checkpoint_key(thread_id: str) -> str:
    """Where a thread's checkpoint lives: NS_HSNAP ``"{thread}|"`` (an empty handoff id),
    so erasing the customer, which deletes every ``"{thread}|..."`` key of NS_HSNAP,
    deletes the checkpoint (which holds message text) with the handoff snapshots."""
    return f"{thread_id}|"


NS_TOKEN: Final = "token"  # token id -> TokenRecord (thread, customer, expiry, use)
NS_TOKCODE: Final = "tokcode"  # "{key id}:{HMAC of code}" -> token id
NS_TOKFAIL: Final = "tokfail"  # "{key id}:{HMAC of sender}" -> TokenFailures (attempts)


class MsgRef(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a message landed, and the outcome its first delivery had."""

    thread_id: str
    seq: int
    customer_id: str
    new_thread: bool = False
    new_customer: bool = False


class IdentRef(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Who an identifier belongs to now."""

    customer_id: str


_msgref = codec.decoder(MsgRef)
_identref = codec.decoder(IdentRef)
_thread_state = codec.decoder(ThreadState)
_customer_state = codec.decoder(CustomerState)


def decode_msgref(data: bytes) -> MsgRef:
    return _msgref(data)


def decode_identref(data: bytes) -> IdentRef:
    return _identref(data)


def decode_thread_state(data: bytes) -> ThreadState:
    return _thread_state(data)


def decode_customer_state(data: bytes) -> CustomerState:
    return _customer_state(data)


class Hints:
    """Where this process's recent messages went: identifier key -> customer, open key
    -> (live thread, its last sequence number). Prefetching uses them to ask, in its
    first call, for the keys it would otherwise learn it needs only from that call's
    answers: a returning customer's message reads in one round trip. They only choose
    which keys to fetch; every value the pipeline uses is read from the store in the
    same attempt, so a stale hint costs a round trip, never a wrong answer. Bounded:
    when full they start afresh (one atomic step; threads need no lock)."""

    __slots__ = ("_customers", "_size", "_threads")

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._customers: dict[str, str] = {}
        self._threads: dict[str, tuple[str, int]] = {}

    def customer(self, ident_key: str) -> str | None:
        return self._customers.get(ident_key)

    def thread(self, okey: str) -> tuple[str, int] | None:
        return self._threads.get(okey)

    def learn(self, ident_keys: Sequence[str], okey: str, thread_id: str, seq: int,
              customer_id: str) -> None:  # fmt: skip
        customers, threads = self._customers, self._threads
        if len(customers) + len(ident_keys) > self._size:
            customers.clear()
        if len(threads) >= self._size:
            threads.clear()
        for key in ident_keys:
            customers[key] = customer_id
        threads[okey] = (thread_id, seq)

    def forget(self, customer_ids: Sequence[str]) -> None:
        """Drop every hint about ``customer_ids`` (their identifiers are erased)."""
        gone = set(customer_ids)
        for key in [k for k, c in list(self._customers.items()) if c in gone]:
            self._customers.pop(key, None)
        for okey in [k for k in list(self._threads) if k.split("|", 1)[0] in gone]:
            self._threads.pop(okey, None)


@dataclass
class Config:
    """What the service is configured with (shared by the sync and async drivers)."""

    clock: Clock = field(default_factory=SystemClock)
    ids: IdSource = field(default_factory=RandomIds)
    identifiers: IdentifierRegistry = default_registry
    continuity: ContinuityPolicy = field(default_factory=ContinuityPolicy)
    max_retries: int = 10
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    merge_policy: MergePolicy = field(default_factory=MergePolicy)
    disclosure: DisclosurePolicy = field(default_factory=DisclosurePolicy)
    # Handoff, snapshots, continuation tokens.
    handoff_rules: Sequence[HandoffRule] = ()
    redaction: Mapping[str, RedactionPolicy] = field(default_factory=lambda: DEFAULT_POLICIES)
    token_keys: KeyRing | None = None
    # Set by the API from the store: it offers get_multi_heads, so each round of ingest's
    # load (see _load) is one call.
    prefetch: bool = False
    hints: Hints = field(default_factory=Hints)


# --------------------------------------------------------------------------- store calls


def get(ns: str, key: str) -> Op[Item | None]:
    result: Item | None = yield ("get", (ns, key))
    return result


def get_many(ns: str, keys: Sequence[str]) -> Op[dict[str, Item]]:
    if not keys:
        return {}
    result: dict[str, Item] = yield ("get_many", (ns, list(keys)))
    return result


def scan(
    ns: str, prefix: str = "", after: str = "", limit: int = 1000
) -> Op[list[tuple[str, Item]]]:
    result: list[tuple[str, Item]] = yield ("scan", (ns, prefix, after, limit))
    return result


def read(stream: str, after: int = 0, limit: int | None = None) -> Op[list[Recorded]]:
    result: list[Recorded] = yield ("read", (stream, after, limit))
    return result


def commit(batch: Batch) -> Op[None]:
    yield ("commit", (batch,))


def get_heads(thread_ids: Sequence[str]) -> Op[dict[str, ThreadHead]]:
    if not thread_ids:
        return {}
    result: dict[str, ThreadHead] = yield ("get_heads", (TENANT, list(thread_ids)))
    return result


def find_heads(query: HeadQuery) -> Op[list[ThreadHead]]:
    result: list[ThreadHead] = yield ("find_heads", (query,))
    return result


def get_threads(thread_ids: Sequence[str]) -> Op[dict[str, tuple[ThreadState, int]]]:
    """The states of the threads that exist among ``thread_ids``, each with the version
    of its head (what a write of the thread expects)."""
    heads = yield from get_heads(thread_ids)
    return {tid: (state_of(h), h.version) for tid, h in heads.items()}


def get_thread(thread_id: str) -> Op[tuple[ThreadState, int] | None]:
    heads = yield from get_heads([thread_id])
    head = heads.get(thread_id)
    return None if head is None else (state_of(head), head.version)


def load_thread(thread_id: str) -> Op[tuple[ThreadState, int]]:
    """The thread's state and the version of its head."""
    found = yield from get_thread(thread_id)
    if found is None:
        raise NotFound("thread", thread_id)
    return found


def find_threads(query: HeadQuery) -> Op[list[ThreadState]]:
    """The states of the heads ``query`` selects, in its order."""
    heads = yield from find_heads(query)
    return [state_of(h) for h in heads]


def customer_thread_ids(customer_id: str) -> Op[list[str]]:
    """Every thread of ``customer_id`` (its customer index), oldest activity first."""
    ids: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = yield from find_heads(
            HeadQuery(tenant=TENANT, customer_id=customer_id, after=after, limit=1000)
        )
        ids.extend(h.thread_id for h in page)
        if len(page) < 1000:
            return ids
        after = (page[-1].last_activity, page[-1].thread_id)


def load_customer(customer_id: str) -> Op[tuple[CustomerState, int]]:
    item = yield from get(NS_CUSTOMER, customer_id)
    if item is None:
        raise NotFound("customer", customer_id)
    return decode_customer_state(item.value), item.version


def read_thread_events(thread_id: str, after: int = 0) -> Op[list[tuple[int, ThreadEvent]]]:
    records = yield from read(thread_id, after)
    return [(r.seq, codec.decode_event(r.data)) for r in records]


def read_customer_events(customer_id: str) -> Op[list[tuple[int, CustomerEvent]]]:
    records = yield from read(customer_id)
    return [(r.seq, codec.decode_customer_event(r.data)) for r in records]


def open_key(customer_id: str, topic: str | None) -> str:
    return f"{customer_id}|{topic or ''}"


# --------------------------------------------------------------------------- time keys

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US: Final = timedelta(microseconds=1)


@lru_cache(maxsize=4096)
def time_key(value: datetime) -> str:
    """A sortable key for a UTC time: microseconds since 1970, 17 digits."""
    return f"{max((value - _EPOCH) // _US, 0):017d}"


class Writes:
    """Collects the batch of one operation: appends, puts and deletes, committed together.

    Every service operation builds its batch with this, so how a thread's head, or a
    customer's state and stream, are written lives here once.
    """

    def __init__(self) -> None:
        self.appends: list[Append] = []
        self.puts: list[Put] = []
        self.deletes: list[Delete] = []
        self.heads: list[HeadWrite] = []

    def append(
        self, stream: str, expected: int, events: Sequence[ThreadEvent | CustomerEvent]
    ) -> None:
        self.appends.append(Append(stream, expected, tuple(codec.encode(e) for e in events)))

    def put(self, ns: str, key: str, value: object, expected: int = ANY) -> None:
        data = value if isinstance(value, bytes) else codec.encode(value)
        self.puts.append(Put(ns, key, data, expected))

    def delete(self, ns: str, key: str, expected: int = ANY) -> None:
        self.deletes.append(Delete(ns, key, expected))

    def thread(self, old: ThreadState | None, new: ThreadState, expected: int) -> None:
        """Write a thread's head: insert it (``old`` None, ``expected`` ABSENT) or replace
        the version ``expected`` of it. The store's indexes on heads move with it."""
        self.heads.append(HeadWrite(head_of(new, TENANT), expected))

    def customer(
        self,
        customer_id: str,
        state: CustomerState | None,
        item_version: int,
        events: list[CustomerEvent],
    ) -> CustomerState:
        """Append ``events`` to the customer's stream and write the folded state."""
        expected = state.version if state is not None else 0
        seq = expected
        for ev in events:
            seq += 1
            state = evolve_customer(state, customer_id, seq, ev)
        assert state is not None
        self.append(customer_id, expected, events)
        self.put(NS_CUSTOMER, customer_id, state, item_version)
        return state

    def batch(self) -> Batch:
        return Batch(
            appends=tuple(self.appends),
            puts=tuple(self.puts),
            deletes=tuple(self.deletes),
            heads=tuple(self.heads),
        )
