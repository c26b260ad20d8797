"""Logging and OpenTelemetry hooks shared by every layer (see docs/observability.md).

Logging: each layer logs to its own stdlib logger under ``convthread`` (the package puts
a :class:`logging.NullHandler` on that one, so nothing is printed unless the application
configures logging). Records carry ids and outcome codes in ``extra`` fields, never
personal data: no message text, identifier values, names, or error messages (those can
quote an identifier).

OpenTelemetry: when ``opentelemetry-api`` is importable (the ``convthread[otel]`` extra),
:data:`OTEL` is true and the service opens spans and records the metrics below through
the API's global providers (no-ops until the application installs an SDK). When it is
not, :data:`OTEL` is false, nothing here touches OpenTelemetry, and the hot paths test
that one flag only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from convthread._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Tracer

__all__ = [
    "CONFLICTS",
    "DUPLICATES",
    "HANDOFFS",
    "INGEST_DURATION",
    "OTEL",
    "RETRIES",
    "SNAPSHOT_MESSAGES",
    "TRACER",
    "logger",
]

#: The instrumentation scope's name (tracer and meter).
SCOPE: Final = "convthread"


def logger(layer: str) -> logging.Logger:
    """The logger of one layer: ``convthread.<layer>``."""
    return logging.getLogger(f"{SCOPE}.{layer}")


def _load() -> tuple[bool, Any, Any, Any, Any, Any, Any, Any]:
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return False, None, None, None, None, None, None, None
    tracer = trace.get_tracer(SCOPE, __version__)
    meter = metrics.get_meter(SCOPE, __version__)
    return (
        True,
        tracer,
        meter.create_histogram(
            "convthread.ingest.duration",
            unit="s",
            description="Time to ingest one inbound message, retries included.",
        ),
        meter.create_counter(
            "convthread.duplicates",
            unit="{message}",
            description="Redelivered messages recognised and stored once.",
        ),
        meter.create_counter(
            "convthread.conflicts",
            unit="{conflict}",
            description="Commits that lost to another writer (each one retried or spent).",
        ),
        meter.create_counter(
            "convthread.retries",
            unit="{retry}",
            description="Operations run again after a conflicting commit.",
        ),
        meter.create_counter(
            "convthread.handoffs",
            unit="{transition}",
            description="Handoff transitions: requested, offered, accepted, released, ...",
        ),
        meter.create_histogram(
            "convthread.snapshot.messages",
            unit="{message}",
            description="Messages in a context snapshot.",
        ),
    )


(
    _otel,
    _tracer,
    _ingest_duration,
    _duplicates,
    _conflicts,
    _retries,
    _handoffs,
    _snapshot_messages,
) = _load()

#: Whether ``opentelemetry-api`` is importable: the one flag the hot paths test.
OTEL: Final[bool] = _otel
TRACER: Final[Tracer] = _tracer
INGEST_DURATION: Final[Histogram] = _ingest_duration
DUPLICATES: Final[Counter] = _duplicates
CONFLICTS: Final[Counter] = _conflicts
RETRIES: Final[Counter] = _retries
HANDOFFS: Final[Counter] = _handoffs
SNAPSHOT_MESSAGES: Final[Histogram] = _snapshot_messages
