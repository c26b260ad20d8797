"""Logging and OpenTelemetry: what an application sees, and that it holds no personal data.

Spans and metrics are read with the real SDK (in-memory span exporter, in-memory metric
reader with delta temporality) installed once per process as the global providers, the
way an application installs its own; each test drains both first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import convthread as ct
from convthread import _telemetry
from convthread.channels import sms, whatsapp
from convthread.errors import ConflictError, Contention, ParseError, ValidationError
from convthread.ports import Batch, Put
from convthread.stores import MemoryStore, SQLiteStore

from .conftest import POSTGRES_URL, require_postgres

# Personal data the journeys below carry: none of it may reach a log record or a span.
PHONE = "+447911123456"
EMAIL = "jane.doe@example.com"
NAME = "Jane Doe"
TEXT = "my card 4929 1234 5678 9012 was charged twice"
REPLY = "Sorry Jane, refunding the card ending 9012 now"
REASON = "Jane Doe asked for a refund"
AGENT = "agent:alice.smith"
PERSONAL = (
    PHONE,
    PHONE[1:],
    "7911123456",
    EMAIL,
    "jane.doe",
    NAME,
    "Jane",
    "4929",
    "9012",
    "refund",
    "alice",
    "smith",
    "twice",
)

_SPANS = InMemorySpanExporter()
_READER = InMemoryMetricReader(
    preferred_temporality={
        Counter: AggregationTemporality.DELTA,
        Histogram: AggregationTemporality.DELTA,
    }
)
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    _installed = True


class Telemetry:
    """What the SDK collected during one test."""

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(_SPANS.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        (one,) = self.spans(name)
        return one

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        """Metric name -> (attributes, sum for counters or count for histograms)."""
        out: dict[str, list[tuple[dict[str, Any], float]]] = {}
        data = _READER.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "count", None)
                        if value is None:
                            value = point.value  # type: ignore[union-attr]
                        out.setdefault(metric.name, []).append((dict(point.attributes), value))
        return out


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    _install()
    _SPANS.clear()
    _READER.get_metrics_data()  # drain: delta temporality starts afresh
    yield Telemetry()
    _SPANS.clear()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="convthread")
    return caplog


class FlakyStore(MemoryStore):
    """A memory store whose next ``conflicts`` commits lose to a (pretend) rival, with an
    error message quoting personal data, as a store's key in a message may."""

    def __init__(self, conflicts: int = 0) -> None:
        super().__init__()
        self.conflicts = conflicts

    def commit(self, batch: Batch) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise ConflictError(f"ident/tel:{PHONE} ({EMAIL}) is at version 2, expected 1")
        super().commit(batch)


def _sms(clock: ct.ManualClock, n: int, text: str = TEXT) -> ct.Inbound:
    return ct.Inbound(
        channel="sms",
        provider_message_id=f"SM{n}",
        sender=(ct.SenderIdentifier(ct.phone(PHONE), ct.Trust.ASSERTED),),
        content=ct.Content(text=text, metadata={"profile_name": NAME}),
        sent_at=clock.now(),
        subject=NAME,
    )


def _email(clock: ct.ManualClock, n: int) -> ct.Inbound:
    return ct.Inbound(
        channel="email",
        provider_message_id=f"<m{n}@example.com>",
        sender=(ct.SenderIdentifier(ct.email(EMAIL), ct.Trust.CLAIMED),),
        content=ct.Content(text=f"{NAME} here: {TEXT}"),
        sent_at=clock.now(),
        subject=f"Refund for {NAME}",
    )


def journey(convs: ct.Conversations, clock: ct.ManualClock) -> ct.IngestResult:
    """Every kind of operation that logs, with personal data everywhere it can go."""
    first = convs.ingest(_sms(clock, 1))
    convs.ingest(_sms(clock, 1))  # a redelivery
    clock.advance(timedelta(minutes=5))
    convs.ingest(_email(clock, 2))
    convs.link(first.customer_id, ct.email(EMAIL), trust=ct.Trust.VERIFIED)
    convs.set_attribute(first.thread_id, "name", NAME)
    handoff = convs.request_handoff(first.thread_id, to="queue:billing", reason=REASON)
    accepted = convs.accept_handoff(handoff.id, by=AGENT)
    convs.send(first.thread_id, REPLY, sender=AGENT, fencing_token=accepted.fencing_token)
    convs.snapshot(first.thread_id, audience="agent")
    with pytest.raises(ValidationError):
        convs.send(first.thread_id, REPLY, sender="nobody")  # not a party: refused
    with pytest.raises(ParseError):
        whatsapp.parse(f'{{"entry": [{{"from": "{PHONE}", "text": "{TEXT}"'.encode())
    with pytest.raises(ParseError):
        sms.parse({"From": PHONE, "Body": TEXT})  # no MessageSid
    convs.erase_customer(first.customer_id)
    return first


# What every record has (time, process, thread, source line): numbers that can contain
# the digits above by chance, and no data of the call.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _values(record: logging.LogRecord) -> list[str]:
    """The message and the fields the library added (its ``extra``)."""
    extra = (str(v) for k, v in vars(record).items() if k not in _STANDARD)
    return [record.getMessage(), *extra]


def _assert_no_personal_data(values: list[str]) -> None:
    text = "\n".join(values).lower()
    for item in PERSONAL:
        assert item.lower() not in text, item


# --------------------------------------------------------------------------- logging


def test_the_library_prints_nothing_unless_logging_is_configured(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import logging
        from datetime import datetime, timezone
        import convthread as ct
        from convthread.errors import Contention
        assert any(isinstance(h, logging.NullHandler)
                   for h in logging.getLogger("convthread").handlers)
        clock = ct.ManualClock(datetime(2026, 3, 2, 9, tzinfo=timezone.utc))
        convs = ct.Conversations("sqlite:///{tmp_path / "quiet.db"}", clock=clock)
        r = convs.ingest(ct.Inbound(channel="sms", provider_message_id="SM1",
            sender=(ct.SenderIdentifier(ct.phone("{PHONE}"), ct.Trust.ASSERTED),),
            content=ct.Content(text="hi"), sent_at=clock.now()))
        h = convs.request_handoff(r.thread_id, to="queue:billing")
        convs.accept_handoff(h.id, by="agent:a")
        convs.erase_customer(r.customer_id)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and run.stderr == ""


def test_a_journey_logs_outcomes_per_layer_without_personal_data(
    logs: pytest.LogCaptureFixture, clock: ct.ManualClock, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "journey.db")
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
    first = journey(convs, clock)
    store.close()
    records = logs.records
    by_logger = {r.name for r in records}
    assert {
        "convthread.service",
        "convthread.stores.sqlite",
        "convthread.channels.whatsapp",
        "convthread.channels.sms",
    } <= by_logger
    for record in records:
        _assert_no_personal_data(_values(record))

    def one(operation: str, **fields: Any) -> logging.LogRecord:
        found = [
            r
            for r in records
            if getattr(r, "operation", None) == operation
            and all(getattr(r, k, None) == v for k, v in fields.items())
        ]
        assert len(found) == 1, (operation, fields, found)
        return found[0]

    new = one("ingest", outcome="new_thread", channel="sms")
    assert new.levelno == logging.DEBUG
    assert (new.thread_id, new.customer_id, new.channel) == (
        first.thread_id,
        first.customer_id,
        "sms",
    )
    assert new.decision == first.decision.code and new.resolution == first.resolution.code
    assert one("ingest", outcome="duplicate").duplicate is True
    assert one("ingest", channel="email").resolution  # a claimed e-mail: its own customer
    requested = one("request_handoff")
    assert requested.levelno == logging.INFO
    assert (requested.status, requested.target_kind) == ("requested", "queue")
    accepted = one("accept_handoff")
    assert (accepted.status, accepted.fencing_token) == ("accepted", 1)
    assert one("send", outcome="sent").thread_id == first.thread_id
    assert one("snapshot").messages >= 2
    failed = one("send", outcome="error")
    assert failed.error == "ValidationError"
    erased = one("erase_customer")
    assert erased.levelno == logging.INFO
    assert (erased.customer_id, erased.outcome, erased.threads) == (
        first.customer_id,
        "erased",
        1,
    )
    migrated = [r for r in records if r.name == "convthread.stores.sqlite"]
    assert migrated and all(r.outcome == "migrated" for r in migrated)
    refused = [r for r in records if r.name.startswith("convthread.channels.")]
    assert {(r.channel, r.outcome) for r in refused} == {
        ("whatsapp", "parse_error"),
        ("sms", "parse_error"),
    }


def test_conflicts_and_retries_are_logged_and_spent_retries_at_info(
    logs: pytest.LogCaptureFixture, clock: ct.ManualClock
) -> None:
    store = FlakyStore(conflicts=2)
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds(), max_retries=3)
    convs.ingest(_sms(clock, 1))
    conflicts = [r for r in logs.records if getattr(r, "outcome", None) == "conflict"]
    assert [(r.operation, r.attempts, r.levelno) for r in conflicts] == [
        ("ingest", 1, logging.DEBUG),
        ("ingest", 2, logging.DEBUG),
    ]
    logs.clear()
    store.conflicts = 10
    with pytest.raises(Contention):
        convs.ingest(_sms(clock, 2))
    spent = [r for r in logs.records if getattr(r, "outcome", None) == "contention"]
    assert [(r.operation, r.attempts, r.levelno) for r in spent] == [("ingest", 4, logging.INFO)]
    for record in logs.records:
        _assert_no_personal_data(_values(record))


# --------------------------------------------------------------------------- OpenTelemetry


def _span_values(spans: list[ReadableSpan]) -> list[str]:
    out: list[str] = []
    for span in spans:
        out.append(span.name)
        out.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        out.append(str(span.status.description))
        out.extend(str(e.attributes) for e in span.events)
    return out


def test_spans_and_metrics_of_a_journey(
    otel: Telemetry, clock: ct.ManualClock, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "traced.db")
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
    first = journey(convs, clock)
    store.close()
    spans = otel.spans()
    _assert_no_personal_data(_span_values(spans))

    ingests = otel.spans("convthread.ingest")
    assert [s.attributes["convthread.outcome"] for s in ingests] == [
        "new_thread",
        "duplicate",
        "new_thread",
    ]
    attrs = ingests[0].attributes
    assert attrs["convthread.channel"] == "sms" and attrs["convthread.duplicate"] is False
    assert attrs["convthread.retries"] == 0
    assert attrs["convthread.thread_id"] == first.thread_id
    assert ingests[1].attributes["convthread.duplicate"] is True
    # The first ingest committed once, in a child span; the duplicate wrote nothing.
    commits = [s for s in otel.spans("convthread.store.commit") if s.parent is not None]
    children = [s for s in commits if s.parent.span_id == ingests[0].context.span_id]
    assert len(children) == 1
    assert children[0].attributes["db.system.name"] == "sqlite"
    assert children[0].attributes["convthread.outcome"] == "committed"
    assert children[0].attributes["convthread.events"] >= 1
    assert not [s for s in commits if s.parent.span_id == ingests[1].context.span_id]

    assert otel.span("convthread.request_handoff").attributes["convthread.status"] == "requested"
    assert otel.span("convthread.accept_handoff").attributes["convthread.fencing_token"] == 1
    assert otel.span("convthread.snapshot").attributes["convthread.audience"] == "agent"
    assert otel.span("convthread.erase_customer").attributes["convthread.outcome"] == "erased"
    sends = otel.spans("convthread.send")
    assert [s.status.status_code for s in sends] == [StatusCode.UNSET, StatusCode.ERROR]
    assert sends[1].status.description == "ValidationError"
    assert sends[1].attributes["error.type"] == "ValidationError"
    assert not sends[1].events  # no exception event: its message could quote data

    found = otel.metrics()
    durations = {(a["channel"], a["outcome"]): n for a, n in found["convthread.ingest.duration"]}
    assert durations == {
        ("sms", "new_thread"): 1,
        ("sms", "duplicate"): 1,
        ("email", "new_thread"): 1,
    }
    assert found["convthread.duplicates"] == [({"channel": "sms", "operation": "ingest"}, 1)]
    handoffs = {(a["operation"], a["status"]): n for a, n in found["convthread.handoffs"]}
    assert handoffs == {("request_handoff", "requested"): 1, ("accept_handoff", "accepted"): 1}
    assert found["convthread.snapshot.messages"] == [({"audience": "agent"}, 1)]
    _assert_no_personal_data([str(v) for v in found.values()])


def test_conflicts_and_retries_in_spans_and_counters(
    otel: Telemetry, clock: ct.ManualClock
) -> None:
    store = FlakyStore(conflicts=2)
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds(), max_retries=3)
    convs.ingest(_sms(clock, 1))
    span = otel.span("convthread.ingest")
    assert span.attributes["convthread.retries"] == 2
    commits = otel.spans("convthread.store.commit")
    assert [c.attributes["convthread.outcome"] for c in commits] == [
        "conflict",
        "conflict",
        "committed",
    ]
    assert all(c.parent is not None and c.parent.span_id == span.context.span_id for c in commits)
    store.conflicts = 10
    with pytest.raises(Contention):
        convs.ingest(_sms(clock, 2))
    spent = otel.spans("convthread.ingest")[-1]
    assert spent.status.status_code is StatusCode.ERROR
    assert spent.attributes["convthread.outcome"] == "contention"
    assert spent.attributes["convthread.retries"] == 4
    found = otel.metrics()
    assert found["convthread.conflicts"] == [({"operation": "ingest"}, 6)]
    assert found["convthread.retries"] == [({"operation": "ingest"}, 5)]
    outcomes = {a["outcome"]: n for a, n in found["convthread.ingest.duration"]}
    assert outcomes == {"new_thread": 1, "contention": 1}
    _assert_no_personal_data(_span_values(otel.spans()))


def test_the_async_facade_is_traced_the_same_way(otel: Telemetry, clock: ct.ManualClock) -> None:
    async def run() -> ct.IngestResult:
        async with ct.AsyncConversations(
            FlakyStore(conflicts=1), clock=clock, ids=ct.SequentialIds()
        ) as convs:
            first = await convs.ingest(_sms(clock, 1))
            await convs.ingest(_sms(clock, 1))
            h = await convs.request_handoff(first.thread_id, to="queue:billing", reason=REASON)
            await convs.accept_handoff(h.id, by=AGENT)
            await convs.snapshot(first.thread_id)
            await convs.erase_customer(first.customer_id)
            return first

    first = asyncio.run(run())
    ingests = otel.spans("convthread.ingest")
    assert [s.attributes["convthread.outcome"] for s in ingests] == ["new_thread", "duplicate"]
    assert ingests[0].attributes["convthread.retries"] == 1
    assert ingests[0].attributes["convthread.thread_id"] == first.thread_id
    commits = [
        s
        for s in otel.spans("convthread.store.commit")
        if s.parent is not None and s.parent.span_id == ingests[0].context.span_id
    ]
    assert [c.attributes["convthread.outcome"] for c in commits] == ["conflict", "committed"]
    assert commits[0].attributes["db.system.name"] == "memory"
    for name in ("request_handoff", "accept_handoff", "snapshot", "erase_customer"):
        assert otel.span(f"convthread.{name}").attributes["convthread.retries"] == 0
    found = otel.metrics()
    assert found["convthread.duplicates"] == [({"channel": "sms", "operation": "ingest"}, 1)]
    assert found["convthread.conflicts"] == [({"operation": "ingest"}, 1)]
    _assert_no_personal_data(_span_values(otel.spans()))


def test_an_application_span_is_the_parent(otel: Telemetry, clock: ct.ManualClock) -> None:
    convs = ct.Conversations(MemoryStore(), clock=clock)
    with trace.get_tracer("app").start_as_current_span("webhook") as outer:
        convs.ingest(_sms(clock, 1))
    ingest = otel.span("convthread.ingest")
    assert ingest.parent is not None and ingest.parent.span_id == outer.get_span_context().span_id


def test_without_opentelemetry_nothing_is_imported_and_logging_still_works(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys
        sys.modules["opentelemetry"] = None  # as if not installed: import fails
        from datetime import datetime, timezone
        import convthread as ct
        from convthread import _telemetry
        assert _telemetry.OTEL is False
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger("convthread").addHandler(Keep())
        logging.getLogger("convthread").setLevel(logging.DEBUG)
        clock = ct.ManualClock(datetime(2026, 3, 2, 9, tzinfo=timezone.utc))
        convs = ct.Conversations("sqlite:///{tmp_path / "plain.db"}", clock=clock)
        inbound = ct.Inbound(channel="sms", provider_message_id="SM1",
            sender=(ct.SenderIdentifier(ct.phone("{PHONE}"), ct.Trust.ASSERTED),),
            content=ct.Content(text="hi"), sent_at=clock.now())
        r = convs.ingest(inbound)
        assert convs.ingest(inbound).duplicate
        h = convs.request_handoff(r.thread_id, to="queue:billing")
        assert not [m for m in sys.modules if m.startswith("opentelemetry.")]
        outcomes = [(x.operation, x.outcome) for x in records if hasattr(x, "operation")]
        assert outcomes == [
            ("ingest", "new_thread"), ("ingest", "duplicate"),
            ("request_handoff", "requested"),
        ], outcomes
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr


def test_opentelemetry_is_found_when_installed() -> None:
    assert _telemetry.OTEL is True


@pytest.mark.postgres
def test_postgres_logs_migrations_and_refused_commits_without_personal_data(
    logs: pytest.LogCaptureFixture, otel: Telemetry, clock: ct.ManualClock
) -> None:
    require_postgres()
    from convthread.stores.postgres import PostgresStore

    schema = f"obs_{os.getpid()}_{random.randrange(10**6)}"
    store = PostgresStore(POSTGRES_URL, schema=schema, max_size=4)
    try:
        convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
        journey(convs, clock)
        stale = Put(ns="ident", key=f"tel:{PHONE}", value=b"x", expected=3)
        with pytest.raises(ConflictError):
            store.commit(Batch(puts=(stale,)))
        records = [r for r in logs.records if r.name == "convthread.stores.postgres"]
        assert {r.outcome for r in records} == {"migrated", "conflict"}
        (refused,) = [r for r in records if r.outcome == "conflict"]
        assert (refused.levelno, refused.error, refused.during) == (
            logging.DEBUG,
            "ConflictError",
            "commit",
        )
        for record in logs.records:
            _assert_no_personal_data(_values(record))
        commits = otel.spans("convthread.store.commit")
        assert commits and {c.attributes["db.system.name"] for c in commits} == {"postgresql"}
        _assert_no_personal_data(_span_values(otel.spans()))
    finally:
        store.drop_schema()
        store.close()
