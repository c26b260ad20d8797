"""Type checkers see each service's own signatures: a public method defined once is a
plain method on ``Conversations`` and a coroutine method on ``AsyncConversations``, with
the definition's parameters (checked by running ``mypy --strict`` on a user's module)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
