"""How the service's writing operations are observed: one place for logs, spans, metrics.

Every public method that writes (an operation defined with ``retries=True``, and the
procedures) runs through :func:`observed_sync` or :func:`observed_async` with the
:class:`Watch` of its name. A watch turns the operation's result into *fields*: ids,
outcome codes, counts, never personal data (no message text, identifier values, party
names, or error messages, which can quote an identifier). The fields are the ``extra``
of the operation's log record on the ``convthread.service`` logger and, prefixed with
``convthread.``, the attributes of its span (for ingest, the hot path, a few of them).
Conflicts and retries are reported by the driver to the watch (:meth:`Watch.conflicted`)
as they happen.

Without OpenTelemetry (:data:`~convthread._telemetry.OTEL` false) an operation costs one
flag test and one ``isEnabledFor`` more than the bare driver; the fields are built only
when the log record is wanted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, TypeVar

from convthread import _telemetry as tm
from convthread._telemetry import OTEL
from convthread.errors import Contention
from convthread.service._drivers import Observer

if TYPE_CHECKING:
    from opentelemetry.trace import Span

if OTEL:
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

T = TypeVar("T")

log: Final = tm.logger("service")

#: A field's value: what both a log record's ``extra`` and a span attribute can hold.
Value = str | int | bool
Fields = dict[str, Value]
#: Builds an operation's fields from its public arguments and its result.
Describe = Callable[[tuple[Any, ...], Mapping[str, Any], Any], Fields]
#: Records an operation's metrics from its result and its duration (seconds).
Record = Callable[[Any, float], None]


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str) -> Any:
    return args[0] if args else kwargs.get(name)


def _code(decision: Any) -> str:
    return str(decision.code or decision.rule)


# --------------------------------------------------------------------------- fields


def _ingest(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    fields: Fields = {
        "channel": r.event.channel,
        "outcome": "duplicate" if r.duplicate else "new_thread" if r.new_thread else "continued",
        "duplicate": r.duplicate,
        "thread_id": r.thread_id,
        "customer_id": r.customer_id,
        "seq": r.seq,
        "decision": _code(r.decision),
        "resolution": _code(r.resolution),
        "new_customer": r.new_customer,
    }
    if r.handoff is not None:
        fields["handoff_id"] = r.handoff.handoff_id
    return fields


def _ingest_many(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    duplicates = sum(1 for one in r if one.duplicate)
    return {"outcome": "ingested", "messages": len(r), "duplicates": duplicates}


def _apply(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    fields: Fields = {
        "channel": str(getattr(_arg(args, kwargs, "result"), "channel", "")),
        "kind": r.kind,
        "outcome": r.outcome,
        "duplicate": r.outcome == "duplicate",
    }
    if r.thread_id is not None:
        fields["thread_id"] = r.thread_id
    if r.seq is not None:
        fields["seq"] = r.seq
    if r.ingest is not None:
        fields["customer_id"] = r.ingest.customer_id
        fields["decision"] = _code(r.ingest.decision)
    return fields


def _send(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {
        "channel": r.event.channel,
        "outcome": "duplicate" if r.duplicate else "sent",
        "duplicate": r.duplicate,
        "thread_id": r.thread_id,
        "seq": r.seq,
    }


def _handoff_fields(r: Any) -> Fields:
    record = r.record
    fields: Fields = {
        "outcome": "repeat" if r.repeat else record.status.value,
        "handoff_id": record.handoff_id,
        "thread_id": record.thread_id,
        "kind": record.kind.value,
        "status": record.status.value,
        "repeat": r.repeat,
        "fencing_token": record.fencing_token,
    }
    if record.target is not None:
        fields["target_kind"] = record.target.kind.value
    return fields


def _handoff(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return _handoff_fields(r)


def _expire(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {"outcome": "expired" if r else "none_due", "expired": len(r)}


def _snapshot(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {
        "outcome": "ok",
        "thread_id": r.thread_id,
        "seq": r.seq,
        "audience": r.audience,
        "messages": len(r.messages),
    }


def _erase(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    changed = bool(r.events_rewritten or r.entries_deleted)
    return {
        "outcome": "erased" if changed else "already_erased",
        "customer_id": str(_arg(args, kwargs, "customer_id")),
        "customers": len(r.customer_ids),
        "threads": len(r.thread_ids),
        "events_rewritten": r.events_rewritten,
        "entries_deleted": r.entries_deleted,
    }


def _merge(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {
        "outcome": "merged",
        "merge_id": r.merge_id,
        "survivor": r.survivor,
        "absorbed": r.absorbed,
        "threads": len(r.threads),
    }


def _unmerge(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {
        "outcome": "unmerged",
        "merge_id": r.merge_id,
        "survivor": r.survivor,
        "restored": r.restored,
        "threads": len(r.threads),
    }


def _verified(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    fields: Fields = {
        "outcome": "verified",
        "customer_id": r.customer_id,
        "decision": _code(r.decision),
        "merged": r.merge is not None,
    }
    if r.merge is not None:
        fields["merge_id"] = r.merge.merge_id
    return fields


def _redeemed(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {
        "outcome": "redeemed",
        "channel": str(kwargs.get("channel", "")),
        "token_id": r.token_id,
        "thread_id": r.thread_id,
        "customer_id": r.customer_id,
        "linked": r.linked,
        "seq": r.seq,
    }


def _done(args: tuple[Any, ...], kwargs: Mapping[str, Any], r: Any) -> Fields:
    return {"outcome": "ok"}


# --------------------------------------------------------------------------- metrics
# From the result itself, not the fields: a span that is not recording (no SDK, or
# sampled out) and a log record nobody wants cost no fields.


def _record_ingest(r: Any, seconds: float) -> None:
    channel = r.event.channel
    outcome = "duplicate" if r.duplicate else "new_thread" if r.new_thread else "continued"
    tm.INGEST_DURATION.record(seconds, {"channel": channel, "outcome": outcome})
    if r.duplicate:
        tm.DUPLICATES.add(1, {"channel": channel, "operation": "ingest"})


def _record_ingest_many(r: Any, seconds: float) -> None:
    for one in r:
        if one.duplicate:
            tm.DUPLICATES.add(1, {"channel": one.event.channel, "operation": "ingest_many"})


def _record_apply(r: Any, seconds: float) -> None:
    if r.outcome == "duplicate" and r.ingest is not None:
        tm.DUPLICATES.add(1, {"channel": r.ingest.event.channel, "operation": "apply"})


def _record_send(r: Any, seconds: float) -> None:
    if r.duplicate:
        tm.DUPLICATES.add(1, {"channel": r.event.channel, "operation": "send"})


def _record_handoff(operation: str) -> Record:
    def record(r: Any, seconds: float) -> None:
        if not r.repeat:
            tm.HANDOFFS.add(1, {"operation": operation, "status": r.record.status.value})

    return record


def _record_expired(r: Any, seconds: float) -> None:
    if r:
        tm.HANDOFFS.add(len(r), {"operation": "expire_handoffs", "status": "expired"})


def _record_snapshot(r: Any, seconds: float) -> None:
    tm.SNAPSHOT_MESSAGES.record(len(r.messages), {"audience": r.audience})


def _record_nothing(r: Any, seconds: float) -> None:
    return None


# --------------------------------------------------------------------------- watches


class Watch:
    """How one public operation is observed: its span name, how its result becomes
    fields, the level its log record is written at, and the metrics it records."""

    __slots__ = ("describe", "level", "operation", "record", "span_keys", "span_name")

    def __init__(
        self,
        operation: str,
        describe: Describe = _done,
        *,
        level: int = logging.DEBUG,
        record: Record = _record_nothing,
        span_keys: frozenset[str] | None = None,
    ) -> None:
        self.operation = operation
        self.span_name = f"convthread.{operation}"
        self.describe = describe
        self.level = level
        self.record = record
        #: the fields that become span attributes (None: all); an SDK span's attribute
        #: costs microseconds, and ingest is the hot path
        self.span_keys = span_keys

    # What the driver calls (see run_sync): a commit of this operation conflicted.
    def conflicted(self, attempt: int, spent: bool) -> None:
        if spent:
            log.info(
                "%s: conflicts spent the retry budget after %d attempts",
                self.operation,
                attempt,
                extra={"operation": self.operation, "outcome": "contention", "attempts": attempt},
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: commit conflicted, retrying (attempt %d)",
                self.operation,
                attempt,
                extra={"operation": self.operation, "outcome": "conflict", "attempts": attempt},
            )

    def logged(self, fields: Fields) -> None:
        log.log(
            self.level,
            "%s: %s",
            self.operation,
            fields.get("outcome", "ok"),
            extra={"operation": self.operation, **fields},
        )

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, Contention):
            return  # reported by conflicted(spent=True)
        if log.isEnabledFor(logging.DEBUG):
            error = type(exc).__name__
            log.debug(
                "%s: failed (%s)",
                self.operation,
                error,
                extra={"operation": self.operation, "outcome": "error", "error": error},
            )


class _Call:
    """One observed call: counts its conflicts for the span and the metrics."""

    __slots__ = ("conflicts", "watch")

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.conflicts = 0

    def conflicted(self, attempt: int, spent: bool) -> None:
        self.conflicts += 1
        attributes = {"operation": self.watch.operation}
        tm.CONFLICTS.add(1, attributes)
        if not spent:
            tm.RETRIES.add(1, attributes)
        self.watch.conflicted(attempt, spent)


def _handoffs(*names: str) -> dict[str, Watch]:
    return {
        name: Watch(name, _handoff, level=logging.INFO, record=_record_handoff(name))
        for name in names
    }


WATCHES: Final[dict[str, Watch]] = {
    "ingest": Watch(
        "ingest",
        _ingest,
        record=_record_ingest,
        span_keys=frozenset({"channel", "outcome", "duplicate", "thread_id", "decision"}),
    ),
    "ingest_many": Watch("ingest_many", _ingest_many, record=_record_ingest_many),
    "apply": Watch("apply", _apply, record=_record_apply),
    "send": Watch("send", _send, record=_record_send),
    **_handoffs(
        "request_handoff",
        "offer_handoff",
        "accept_handoff",
        "decline_handoff",
        "release_control",
        "transfer_control",
    ),
    "expire_handoffs": Watch(
        "expire_handoffs", _expire, level=logging.INFO, record=_record_expired
    ),
    "snapshot": Watch("snapshot", _snapshot, record=_record_snapshot),
    "erase_customer": Watch("erase_customer", _erase, level=logging.INFO),
    "merge": Watch("merge", _merge, level=logging.INFO),
    "accept_suggestion": Watch("accept_suggestion", _merge, level=logging.INFO),
    "unmerge": Watch("unmerge", _unmerge, level=logging.INFO),
    "confirm_verification": Watch("confirm_verification", _verified),
    "redeem_continuation": Watch("redeem_continuation", _redeemed),
}


def watch_for(operation: str) -> Watch:
    """The watch of a public operation (a plain one where none is defined)."""
    return WATCHES.get(operation) or Watch(operation)


# --------------------------------------------------------------------------- running
# Spans are started and made current by hand: the API's start_as_current_span costs
# several times more, even as a no-op. A span that is not recording (no SDK installed,
# or sampled out) is not made current, so the driver opens no commit span under it.


def _finished(
    span: Span, recording: bool, watch: Watch, call: _Call, result: Any, args: Any, kwargs: Any
) -> None:
    wanted = log.isEnabledFor(watch.level)
    if not (recording or wanted):
        return
    fields = watch.describe(args, kwargs, result)
    if recording:
        keys = watch.span_keys
        attributes = {
            f"convthread.{key}": value
            for key, value in fields.items()
            if keys is None or key in keys
        }
        attributes["convthread.retries"] = call.conflicts
        span.set_attributes(attributes)
    if wanted:
        watch.logged(fields)


def _failed(
    span: Span, recording: bool, watch: Watch, call: _Call, exc: BaseException, seconds: float
) -> None:
    error = type(exc).__name__
    outcome = "contention" if isinstance(exc, Contention) else "error"
    if watch.operation == "ingest":
        tm.INGEST_DURATION.record(seconds, {"channel": "", "outcome": outcome})
    if recording:
        span.set_attributes(
            {
                "convthread.retries": call.conflicts,
                "convthread.outcome": outcome,
                "error.type": error,
            }
        )
        # The class name only: an error's message can quote an identifier.
        span.set_status(Status(StatusCode.ERROR, error))
    watch.failed(exc)


def observed_sync(
    watch: Watch, run: Callable[[Observer], T], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> T:
    """Call ``run`` (a driver, given the observer it reports conflicts to) for the public
    operation of ``watch``, called with ``args`` and ``kwargs``: log, span, metrics."""
    if not OTEL:
        try:
            result = run(watch)
        except Exception as exc:
            watch.failed(exc)
            raise
        if log.isEnabledFor(watch.level):
            watch.logged(watch.describe(args, kwargs, result))
        return result
    span = tm.TRACER.start_span(watch.span_name)
    recording = span.is_recording()
    token = attach(set_span_in_context(span)) if recording else None
    call = _Call(watch)
    start = perf_counter()
    try:
        result = run(call)
    except Exception as exc:
        _failed(span, recording, watch, call, exc, perf_counter() - start)
        raise
    else:
        watch.record(result, perf_counter() - start)
        _finished(span, recording, watch, call, result, args, kwargs)
        return result
    finally:
        if token is not None:
            detach(token)
        span.end()


async def observed_async(
    watch: Watch,
    run: Callable[[Observer], Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> T:
    """The asyncio twin of :func:`observed_sync`: ``run`` returns an awaitable."""
    if not OTEL:
        try:
            result = await run(watch)
        except Exception as exc:
            watch.failed(exc)
            raise
        if log.isEnabledFor(watch.level):
            watch.logged(watch.describe(args, kwargs, result))
        return result
    span = tm.TRACER.start_span(watch.span_name)
    recording = span.is_recording()
    token = attach(set_span_in_context(span)) if recording else None
    call = _Call(watch)
    start = perf_counter()
    try:
        result = await run(call)
    except Exception as exc:
        _failed(span, recording, watch, call, exc, perf_counter() - start)
        raise
    else:
        watch.record(result, perf_counter() - start)
        _finished(span, recording, watch, call, result, args, kwargs)
        return result
    finally:
        if token is not None:
            detach(token)
        span.end()
