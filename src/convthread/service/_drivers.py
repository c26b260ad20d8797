"""The sync and asyncio drivers: run an operation's store calls against a store."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from convthread.errors import ConflictError
from convthread.ports import AsyncStore, Batch, Item, Recorded, Store
from convthread.service._core import Op

T = TypeVar("T")

_rng = random.Random()


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): jittered, capped at 50 ms."""
    return _rng.uniform(0, min(0.05, 0.001 * (2**attempt)))


def run_sync(store: Store, factory: Callable[[], Op[T]], max_retries: int) -> T:
    attempt = 0
    while True:
        gen = factory()
        try:
            name, args = next(gen)
            while True:
                try:
                    result = getattr(store, name)(*args)
                except ConflictError:
                    if name != "commit" or attempt >= max_retries:
                        raise
                    gen.close()
                    break
                name, args = gen.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        attempt += 1
        delay = backoff(attempt)
        if delay:
            time.sleep(delay)


async def run_async(store: AsyncStore, factory: Callable[[], Op[T]], max_retries: int) -> T:
    attempt = 0
    while True:
        gen = factory()
        try:
            name, args = next(gen)
            while True:
                try:
                    result = await getattr(store, name)(*args)
                except ConflictError:
                    if name != "commit" or attempt >= max_retries:
                        raise
                    gen.close()
                    break
                name, args = gen.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        attempt += 1
        await asyncio.sleep(backoff(attempt))


class InlineAsyncStore:
    """An AsyncStore over a sync store whose calls never block (the memory store)."""

    def __init__(self, store: Store) -> None:
        self.sync = store

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return self.sync.read(stream, after, limit)

    async def version(self, stream: str) -> int:
        return self.sync.version(stream)

    async def get(self, ns: str, key: str) -> Item | None:
        return self.sync.get(ns, key)

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return self.sync.get_many(ns, keys)

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """Only where the wrapped store offers it (see :class:`~convthread.ports.MultiGet`)."""
        return self.sync.get_multi(keys)  # type: ignore[attr-defined,no-any-return]

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return self.sync.scan(ns, prefix, after, limit)

    async def commit(self, batch: Batch) -> None:
        self.sync.commit(batch)

    async def scrub(self) -> None:
        self.sync.scrub()

    async def close(self) -> None:
        self.sync.close()


class ThreadedAsyncStore:
    """An AsyncStore over a blocking sync store (SQLite, PostgreSQL): every call runs in a
    worker thread, so the event loop never blocks on I/O."""

    def __init__(self, store: Store, *, workers: int = 4) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convthread")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def read(self, stream: str, after: int = 0, limit: int | None = None) -> list[Recorded]:
        return await self._call(self.sync.read, stream, after, limit)

    async def version(self, stream: str) -> int:
        return await self._call(self.sync.version, stream)

    async def get(self, ns: str, key: str) -> Item | None:
        return await self._call(self.sync.get, ns, key)

    async def get_many(self, ns: str, keys: Sequence[str]) -> dict[str, Item]:
        return await self._call(self.sync.get_many, ns, keys)

    async def get_multi(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """Only where the wrapped store offers it (see :class:`~convthread.ports.MultiGet`)."""
        return await self._call(self.sync.get_multi, keys)  # type: ignore[attr-defined]

    async def scan(
        self, ns: str, prefix: str = "", after: str = "", limit: int = 1000
    ) -> list[tuple[str, Item]]:
        return await self._call(self.sync.scan, ns, prefix, after, limit)

    async def commit(self, batch: Batch) -> None:
        await self._call(self.sync.commit, batch)

    async def scrub(self) -> None:
        await self._call(self.sync.scrub)

    async def close(self) -> None:
        await self._call(self.sync.close)
        self._executor.shutdown(wait=True)
