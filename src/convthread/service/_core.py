"""The shared core of the service: configuration, index namespaces, and store calls.

Every operation is a generator that *yields store calls* (``("get", (ns, key))``) and
receives their results; it never touches a store itself. The sync driver
(:class:`~convthread.Conversations`) and the asyncio driver
(:class:`~convthread.AsyncConversations`) run the same generators, so the pipeline is
written once. A generator runs from scratch again when its commit conflicts.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec

from convthread import codec
from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.events import CustomerEvent, ThreadEvent
from convthread.domain.identifiers import IdentifierRegistry, default_registry
from convthread.domain.thread import CustomerState, ThreadState
from convthread.errors import NotFound
from convthread.ports import Batch, Clock, IdSource, Item, RandomIds, Recorded, SystemClock

T = TypeVar("T")

#: A store call: method name and positional arguments.
Call = tuple[str, tuple[Any, ...]]
#: An operation: yields store calls, returns its result.
Op = Generator[Call, Any, T]

# Index namespaces. Keys are documented here because third-party stores see them.
NS_MSG: Final = "msg"  # "{channel}|{provider message id}" -> MsgRef
NS_IDEM: Final = "idem"  # explicit idempotency key -> MsgRef
NS_IDENT: Final = "ident"  # identifier key -> IdentRef
NS_CUSTOMER: Final = "customer"  # customer id -> CustomerState (cache of its stream)
NS_THREAD: Final = "thread"  # thread id -> ThreadState (cache of its stream)
NS_OPEN: Final = "open"  # "{customer}|{topic}" -> thread id of the live thread
NS_LATEST: Final = "latest"  # "{customer}|{topic}" -> thread id of the newest thread
NS_CTHREADS: Final = "cthreads"  # "{customer}|{thread}" -> b"" (a customer's threads)


class MsgRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a message landed, and the outcome its first delivery had."""

    thread_id: str
    seq: int
    customer_id: str
    new_thread: bool = False
    new_customer: bool = False


class IdentRef(msgspec.Struct, frozen=True, array_like=True):
    """Who an identifier belongs to now."""

    customer_id: str


_msgref = msgspec.msgpack.Decoder(MsgRef)
_identref = msgspec.msgpack.Decoder(IdentRef)
_thread_state = msgspec.msgpack.Decoder(ThreadState)
_customer_state = msgspec.msgpack.Decoder(CustomerState)


def decode_msgref(data: bytes) -> MsgRef:
    return _msgref.decode(data)


def decode_identref(data: bytes) -> IdentRef:
    return _identref.decode(data)


def decode_thread_state(data: bytes) -> ThreadState:
    return _thread_state.decode(data)


def decode_customer_state(data: bytes) -> CustomerState:
    return _customer_state.decode(data)


@dataclass
class Config:
    """What the service is configured with (shared by the sync and async drivers)."""

    clock: Clock = field(default_factory=SystemClock)
    ids: IdSource = field(default_factory=RandomIds)
    identifiers: IdentifierRegistry = default_registry
    continuity: ContinuityPolicy = field(default_factory=ContinuityPolicy)
    max_retries: int = 10


# --------------------------------------------------------------------------- store calls


def get(ns: str, key: str) -> Op[Item | None]:
    result: Item | None = yield ("get", (ns, key))
    return result


def get_many(ns: str, keys: Sequence[str]) -> Op[dict[str, Item]]:
    if not keys:
        return {}
    result: dict[str, Item] = yield ("get_many", (ns, list(keys)))
    return result


def scan(ns: str, prefix: str = "", after: str = "", limit: int = 1000) -> Op[list[tuple[str, Item]]]:
    result: list[tuple[str, Item]] = yield ("scan", (ns, prefix, after, limit))
    return result


def read(stream: str, after: int = 0, limit: int | None = None) -> Op[list[Recorded]]:
    result: list[Recorded] = yield ("read", (stream, after, limit))
    return result


def commit(batch: Batch) -> Op[None]:
    yield ("commit", (batch,))


def load_thread(thread_id: str) -> Op[tuple[ThreadState, int]]:
    """The thread's cached state and the version of its index entry."""
    item = yield from get(NS_THREAD, thread_id)
    if item is None:
        raise NotFound("thread", thread_id)
    return decode_thread_state(item.value), item.version


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
