"""``Conversations`` (sync) and ``AsyncConversations`` (asyncio): the public service.

Both run the same operations (store-call generators) through their driver, so they
behave identically; the async one never blocks the event loop (blocking stores run in
worker threads).
"""

from __future__ import annotations

from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING

from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.identifiers import IdentifierRegistry, default_registry
from convthread.domain.model import Content, Identifier, Inbound, Party
from convthread.domain.thread import ThreadState
from convthread.errors import ValidationError
from convthread.ports import AsyncStore, Clock, IdSource, RandomIds, Store, SystemClock
from convthread.service import _messages, _reads
from convthread.service._core import Config
from convthread.service._drivers import (
    InlineAsyncStore,
    ThreadedAsyncStore,
    run_async,
    run_sync,
)
from convthread.service._results import (
    CustomerView,
    IngestResult,
    SendResult,
    StoredEvent,
    ThreadView,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncConversations", "Conversations"]


def _config(
    clock: Clock | None,
    ids: IdSource | None,
    identifiers: IdentifierRegistry | None,
    continuity: ContinuityPolicy | None,
    max_retries: int,
) -> Config:
    if max_retries < 0:
        raise ValidationError("max_retries must be >= 0")
    return Config(
        clock=clock or SystemClock(),
        ids=ids or RandomIds(),
        identifiers=identifiers or default_registry,
        continuity=continuity or ContinuityPolicy(),
        max_retries=max_retries,
    )


def _content(content: str | Content) -> Content:
    if isinstance(content, Content):
        return content
    if isinstance(content, str):
        return Content(text=content)
    raise ValidationError(f"content must be a str or Content, not {type(content).__name__}")


def _open(store: Store | str) -> Store:
    if isinstance(store, str):
        from convthread.stores import open_store

        return open_store(store)
    return store


class Conversations:
    """The synchronous service over a :class:`~convthread.ports.Store`.

    ``store`` is a store object or a URL (``"memory://"``, ``"sqlite:///support.db"``).
    ``clock`` and ``ids`` are injectable for deterministic tests; ``identifiers`` holds
    the identifier normalizers; ``continuity`` decides which thread a message continues.
    Conflicts between concurrent writers are retried up to ``max_retries`` times.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        identifiers: IdentifierRegistry | None = None,
        continuity: ContinuityPolicy | None = None,
        max_retries: int = 10,
    ) -> None:
        self.store: Store = _open(store)
        self.config = _config(clock, ids, identifiers, continuity, max_retries)

    def __repr__(self) -> str:
        return f"Conversations({self.store!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    # -- messages

    def ingest(self, inbound: Inbound) -> IngestResult:
        """Store an inbound message: deduplicate, resolve the customer, choose the thread."""
        return run_sync(
            self.store, partial(_messages.ingest, self.config, inbound), self.config.max_retries
        )

    def send(
        self,
        thread_id: str,
        content: str | Content,
        *,
        sender: Party | str,
        channel: str | None = None,
        fencing_token: int | None = None,
        provider_message_id: str | None = None,
        idempotency_key: str | None = None,
        reply_to: str | None = None,
    ) -> SendResult:
        """Record an outbound message by an agent, a bot or the system.

        ``channel`` defaults to the channel the customer last used. A controller (see
        handoff) passes the ``fencing_token`` it holds; a stale one is rejected.
        """
        op = partial(
            _messages.send,
            self.config,
            thread_id,
            _content(content),
            Party.parse(sender),
            channel,
            fencing_token,
            provider_message_id,
            idempotency_key,
            reply_to,
        )
        return run_sync(self.store, op, self.config.max_retries)

    # -- reads

    def thread(self, thread_id: str) -> ThreadView:
        """A thread's state and all its events."""
        return run_sync(self.store, partial(_reads.thread, thread_id), 0)

    def thread_state(self, thread_id: str) -> ThreadState:
        """A thread's current state (without its events)."""
        return run_sync(self.store, partial(_reads.thread_state, thread_id), 0)

    def events(self, thread_id: str, *, after: int = 0) -> list[StoredEvent]:
        """A thread's events with sequence number greater than ``after``."""
        return run_sync(self.store, partial(_reads.events, thread_id, after), 0)

    def customer(self, customer_id: str) -> CustomerView:
        """A customer's identity state, identity events and thread ids."""
        return run_sync(self.store, partial(_reads.customer, customer_id), 0)

    def customer_threads(self, customer_id: str) -> list[ThreadState]:
        """A customer's threads, oldest first."""
        return run_sync(self.store, partial(_reads.customer_threads, customer_id), 0)

    def find_customer(self, identifier: Identifier) -> str | None:
        """The id of the customer an identifier is linked to, or None."""
        return run_sync(self.store, partial(_reads.find_customer, self.config, identifier), 0)


class AsyncConversations:
    """The asyncio service. Same operations and results as :class:`Conversations`.

    ``store`` may be an :class:`~convthread.ports.AsyncStore`, or a sync store or URL:
    the memory store is called inline (it never blocks); blocking stores run in a pool
    of worker threads.
    """

    def __init__(
        self,
        store: AsyncStore | Store | str,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        identifiers: IdentifierRegistry | None = None,
        continuity: ContinuityPolicy | None = None,
        max_retries: int = 10,
    ) -> None:
        self.store: AsyncStore = _as_async(store)
        self.config = _config(clock, ids, identifiers, continuity, max_retries)

    def __repr__(self) -> str:
        return f"AsyncConversations({self.store!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.store.close()

    async def ingest(self, inbound: Inbound) -> IngestResult:
        return await run_async(
            self.store, partial(_messages.ingest, self.config, inbound), self.config.max_retries
        )

    async def send(
        self,
        thread_id: str,
        content: str | Content,
        *,
        sender: Party | str,
        channel: str | None = None,
        fencing_token: int | None = None,
        provider_message_id: str | None = None,
        idempotency_key: str | None = None,
        reply_to: str | None = None,
    ) -> SendResult:
        op = partial(
            _messages.send,
            self.config,
            thread_id,
            _content(content),
            Party.parse(sender),
            channel,
            fencing_token,
            provider_message_id,
            idempotency_key,
            reply_to,
        )
        return await run_async(self.store, op, self.config.max_retries)

    async def thread(self, thread_id: str) -> ThreadView:
        return await run_async(self.store, partial(_reads.thread, thread_id), 0)

    async def thread_state(self, thread_id: str) -> ThreadState:
        return await run_async(self.store, partial(_reads.thread_state, thread_id), 0)

    async def events(self, thread_id: str, *, after: int = 0) -> list[StoredEvent]:
        return await run_async(self.store, partial(_reads.events, thread_id, after), 0)

    async def customer(self, customer_id: str) -> CustomerView:
        return await run_async(self.store, partial(_reads.customer, customer_id), 0)

    async def customer_threads(self, customer_id: str) -> list[ThreadState]:
        return await run_async(self.store, partial(_reads.customer_threads, customer_id), 0)

    async def find_customer(self, identifier: Identifier) -> str | None:
        return await run_async(
            self.store, partial(_reads.find_customer, self.config, identifier), 0
        )


def _as_async(store: AsyncStore | Store | str) -> AsyncStore:
    from convthread.stores.memory import MemoryStore

    if isinstance(store, str):
        store = _open(store)
    if isinstance(store, MemoryStore):
        return InlineAsyncStore(store)
    if isinstance(store, Store):
        return ThreadedAsyncStore(store)
    return store
