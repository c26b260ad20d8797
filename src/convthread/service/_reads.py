"""Read operations as store-call generators."""

from __future__ import annotations

from convthread.domain.model import Identifier
from convthread.domain.thread import ThreadState
from convthread.ports import Item
from convthread.service import _core as core
from convthread.service._core import Config, Op
from convthread.service._results import CustomerView, StoredEvent, ThreadView

__all__ = ["customer", "customer_threads", "events", "thread", "thread_state"]


def thread_state(thread_id: str) -> Op[ThreadState]:
    state, _version = yield from core.load_thread(thread_id)
    return state


def events(thread_id: str, after: int = 0) -> Op[list[StoredEvent]]:
    yield from core.load_thread(thread_id)
    pairs = yield from core.read_thread_events(thread_id, after)
    return [StoredEvent(seq, ev) for seq, ev in pairs]


def thread(thread_id: str) -> Op[ThreadView]:
    state, _version = yield from core.load_thread(thread_id)
    pairs = yield from core.read_thread_events(thread_id, 0)
    # The cached state may be older than the events only inside a racing writer's commit;
    # reads see committed data, so read the state at the events' version.
    return ThreadView(state=state, events=tuple(StoredEvent(s, e) for s, e in pairs))


def customer_thread_ids(customer_id: str) -> Op[list[str]]:
    return (yield from core.customer_thread_ids(customer_id))


def customer_threads(customer_id: str) -> Op[list[ThreadState]]:
    yield from core.load_customer(customer_id)
    ids = yield from core.customer_thread_ids(customer_id)
    found = yield from core.get_threads(ids)
    states = [found[i][0] for i in ids if i in found]
    states.sort(key=lambda s: (s.created_at, s.id))
    return states


def customer(customer_id: str) -> Op[CustomerView]:
    state, _version = yield from core.load_customer(customer_id)
    evs = yield from core.read_customer_events(customer_id)
    threads = yield from customer_threads(customer_id)
    return CustomerView(state=state, events=tuple(evs), thread_ids=tuple(t.id for t in threads))


def ident_key(config: Config, identifier: Identifier) -> str:
    """The NS_IDENT key of ``identifier`` (normalized by the configured registry)."""
    return config.identifiers.key_of(identifier)


def owner_of(item: Item | None) -> str | None:
    """The customer an NS_IDENT entry names (None for no entry)."""
    return None if item is None else core.decode_identref(item.value).customer_id
