"""The two services run each public method, defined once, through their own driver:
alike in behaviour (retries on a conflicting commit, procedures of several operations),
and each with its own signatures for type checkers (``mypy --strict`` on a user's
module). Their names, parameters and docstrings are compared in test_public_api."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread.domain.handoff import HandoffStatus
from convthread.errors import ConflictError
from convthread.ports import Batch, ManualClock, SequentialIds
from convthread.stores import MemoryStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SERVICES = [ct.Conversations, ct.AsyncConversations]


class ConflictingStore(MemoryStore):
    """A store whose next ``conflicts`` commits lose to another writer."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0
        self.commits = 0
        self.reads = 0

    def commit(self, batch: Batch) -> None:
        self.commits += 1
        if self.conflicts:
            self.conflicts -= 1
            raise ConflictError("another writer committed first")
        super().commit(batch)

    def get(self, ns: str, key: str) -> Any:
        self.reads += 1
        return super().get(ns, key)


def run(service: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    result = getattr(service, name)(*args, **kwargs)
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def inbound(n: int) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=f"SM{n}",
        sender=(ct.SenderIdentifier(ct.phone(f"+1415555010{n}"), ct.Trust.ASSERTED),),
        content=ct.Content(text="hello"),
        sent_at=T0 + timedelta(seconds=n),
    )


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_a_conflicting_commit_runs_the_operation_again_on_fresh_reads(cls: type) -> None:
    store = ConflictingStore()
    setup = ct.Conversations(store, clock=ManualClock(T0), ids=SequentialIds())
    thread_id = setup.ingest(inbound(1)).thread_id
    service = cls(store, clock=ManualClock(T0), ids=SequentialIds(), max_retries=1)
    store.reads = 0
    run(service, "send", thread_id, "first", sender="agent:a")
    one_attempt = store.reads
    assert one_attempt > 0
    store.conflicts, store.commits, store.reads = 1, 0, 0
    sent = run(service, "send", thread_id, "hi", sender="agent:a")
    assert store.commits == 2
    assert store.reads == 2 * one_attempt  # the second attempt read everything again
    events = setup.events(thread_id)
    texts = [getattr(getattr(e.event, "content", None), "text", None) for e in events]
    assert texts.count("hi") == 1  # written once
    assert events[-1].seq == sent.seq
    store.conflicts = 2  # more than the budget of one retry
    with pytest.raises(ct.Contention):
        run(service, "send", thread_id, "again", sender="agent:a")
    assert setup.events(thread_id) == events


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_a_procedure_runs_its_operations_in_turn(cls: type) -> None:
    clock = ManualClock(T0)
    store = MemoryStore()
    setup = ct.Conversations(store, clock=clock, ids=SequentialIds())
    offered = []
    for n in (1, 2):
        tid = setup.ingest(inbound(n)).thread_id
        h = setup.request_handoff(tid, to="queue:billing", handoff_id=f"h{n}")
        setup.offer_handoff(h.id, to="agent:ann", ttl=timedelta(seconds=5 * n))
        offered.append(h.id)
    service = cls(store, clock=clock, ids=SequentialIds())
    assert run(service, "expire_handoffs") == []
    expired = run(service, "expire_handoffs", now=T0 + timedelta(seconds=7))
    assert [r.id for r in expired] == ["h1"]
    assert setup.handoff("h1").status is HandoffStatus.REQUESTED  # pending again
    assert setup.handoff("h2").offered_to is not None


USER_MODULE = """
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any

from typing_extensions import assert_type

import convthread as ct

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def use_sync(convs: ct.Conversations, inbound: ct.Inbound) -> None:
    assert_type(convs.ingest(inbound), ct.IngestResult)
    assert_type(convs.send("th_1", "hi", sender="agent:a"), ct.SendResult)
    assert_type(convs.find_customer(ct.phone("+14155550100")), str | None)
    assert_type(convs.resolve("th_1", by="agent:a"), ct.ThreadState)
    assert_type(convs.import_history([]), ct.ImportSummary)
    assert_type(convs.expire_handoffs(now=T0), list[ct.HandoffResult])
    with convs:
        convs.close()
    convs.send("th_1", "hi")  # type: ignore[call-arg]
    convs.send("th_1", "hi", "agent:a")  # type: ignore[call-arg]
    convs.ingest("not an inbound")  # type: ignore[arg-type]
    convs.events("th_1", after="0")  # type: ignore[arg-type]


async def use_async(convs: ct.AsyncConversations, inbound: ct.Inbound) -> None:
    pending = assert_type(convs.ingest(inbound), Coroutine[Any, Any, ct.IngestResult])
    assert_type(await pending, ct.IngestResult)
    assert_type(await convs.send("th_1", "hi", sender="agent:a"), ct.SendResult)
    assert_type(await convs.import_history([]), ct.ImportSummary)
    assert_type(await convs.expire_handoffs(now=T0), list[ct.HandoffResult])
    async with convs:
        await convs.close()
    await convs.send("th_1", "hi")  # type: ignore[call-arg]
    await convs.events("th_1", after="0")  # type: ignore[arg-type]
    result: ct.IngestResult = convs.ingest(inbound)  # type: ignore[assignment]
"""


def test_each_service_has_its_own_signatures_for_type_checkers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from mypy import api

    module = tmp_path / "user_of_services.py"
    module.write_text(USER_MODULE, encoding="utf-8")
    cache = request.config.cache
    cache_dir = cache.mkdir("mypy-services") if cache is not None else tmp_path / "mypy-cache"
    # --strict warns on an unused "type: ignore": each misuse above must be an error
    out, err, status = api.run(
        ["--strict", "--cache-dir", str(cache_dir), "--no-error-summary", str(module)]
    )
    assert status == 0, f"mypy --strict on a module using the services:\n{out}{err}"
