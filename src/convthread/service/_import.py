"""History import: messages recorded at their own time, in chunked transactions.

Contract of :meth:`Conversations.import_history`:

* **Event time is message time.** Each inbound message (:class:`~convthread.Inbound`) is
  ingested, and each company reply (:class:`HistoryReply`) recorded as an outbound
  message, with the service clock standing at the message's own ``sent_at``: the
  thread's events, the customer's creation, a reopening or a supersession all carry that
  time, so ``as_of``, waiting times and every duration describe the history. The
  continuity policy compares the message's time with the thread's last activity, as it
  always does.
* **The past triggers nothing.** Handoff rules are not applied to imported messages: no
  handoff is requested and no offer (nor its lease) starts. Nothing else runs either;
  a later :meth:`~Conversations.sweep` treats the imported threads by their real ages.
* **Oldest first, per thread.** Messages are recorded in the order given. One older
  than the newest event of the thread it would join is refused with
  :class:`~convthread.errors.OutOfOrderError` (and stores nothing); the import goes on.
  Sort the input by time, replies after what they answer (:func:`history_order`).
* **Chunks are transactions.** Every ``chunk_size`` messages are committed in one store
  transaction, like :meth:`~Conversations.ingest_many`. A message that fails with a
  typed error (a bad payload, a reply to a message not in the store, out of order) is
  left out and reported; the others of its chunk are committed without it.
* **Resumable.** A message already in the store (same channel and provider message id,
  same content) is recognised as a duplicate and counted as ``skipped``: running an
  interrupted import again records only what is missing. Store errors (the database
  went away) stop the import; the chunks committed before it stay.
* Results that are not messages (delivery statuses, edits, unsupported content) are
  counted as ``ignored``, by kind.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

import msgspec

from convthread._heads import state_of
from convthread.domain.model import Channel, Content, Inbound, Party, ensure_utc
from convthread.domain.updates import (
    ChannelResult,
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import (
    ConflictError,
    ConvthreadError,
    NotFound,
    OutOfOrderError,
    StoreError,
    ValidationError,
)
from convthread.service import _core as core
from convthread.service import _load, _messages
from convthread.service._core import Config, Op
from convthread.service._threads import find_message
from convthread.service._write import Overlay as _Overlay
from convthread.service._write import through as _through

__all__ = [
    "HistoryReply",
    "ImportFailure",
    "ImportSummary",
    "history_order",
]

#: Messages per transaction unless ``chunk_size`` says otherwise.
DEFAULT_CHUNK: Final = 200


class HistoryReply(msgspec.Struct, frozen=True, kw_only=True):
    """A reply the company sent, from history: recorded as an outbound message on the
    thread of the message it answers (``reply_to``, a provider message id on
    ``channel``), at its own time ``sent_at``, by ``sender`` (an agent, a bot, a queue)."""

    channel: str
    provider_message_id: str
    reply_to: str
    sender: Party
    content: Content
    sent_at: datetime

    def __post_init__(self) -> None:
        Channel.validate(self.channel)
        for name in ("provider_message_id", "reply_to"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{name} must be a non-empty string")
        if not isinstance(self.sender, Party):
            raise ValidationError("sender must be a Party (e.g. Party.parse('agent:sam'))")
        if not isinstance(self.content, Content):
            raise ValidationError("content must be a Content")
        msgspec.structs.force_setattr(self, "sent_at", ensure_utc(self.sent_at, "sent_at"))


class ImportFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A message the import did not record: where it was in the input (0-based), what it
    was, and the typed error that refused it."""

    index: int
    channel: str
    provider_message_id: str
    error: str  # the error's class name, e.g. "NotFound", "OutOfOrderError"
    reason: str
    #: where a reader found it (``"payloads.jsonl:17"``), when it could not read it
    where: str = ""


class ImportSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What an import did. ``read`` = ``imported`` + ``skipped`` + ``failed`` +
    ``ignored``; ``skipped`` counts messages already in the store (a rerun)."""

    read: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    #: threads the import started
    new_threads: int = 0
    failures: tuple[ImportFailure, ...] = ()
    #: results that are not messages, by kind (``"status"``, ``"unsupported"``, ...)
    ignored_kinds: dict[str, int] = {}


Item = Inbound | HistoryReply
_REPORTS: Final = (StatusReport, EditReport, DeletionReport, ReactionReport, Unsupported)


class _FixedClock:
    """The clock of one imported message: it stands at the message's time."""

    __slots__ = ("_at",)

    def __init__(self, at: datetime) -> None:
        self._at = at

    def now(self) -> datetime:
        return self._at


class ItemFailed(Exception):
    """Raised out of a chunk operation: message ``position`` of the chunk failed."""

    def __init__(self, position: int, error: ConvthreadError) -> None:
        self.position = position
        self.error = error


def _at_message_time(config: Config, item: Item) -> Config:
    return replace(config, clock=_FixedClock(item.sent_at), handoff_rules=())


def _newest(overlay: _Overlay, thread_id: str) -> datetime | None:
    """The newest time among the thread's events as the chunk left it."""
    found, head = overlay.head(thread_id)
    if not found or head is None:
        return None
    state = state_of(head)
    times = [t for t in (state.created_at, state.last_activity, state.status_changed_at) if t]
    return max(times)


def _record(config: Config, overlay: _Overlay, item: Item) -> Op[tuple[bool, bool]]:
    """Record one message through the chunk's overlay: (duplicate, new thread)."""
    cfg = _at_message_time(config, item)
    if isinstance(item, Inbound):
        q = _load.query(cfg, item)
        r, w = yield from _through(overlay, _messages.ingest_in(cfg, q, overlay))
        if w is not None:
            overlay.take(w.batch())
        duplicate, new_thread, thread_id = r.duplicate, r.new_thread, r.thread_id
    else:
        loc = yield from _through(overlay, find_message(item.channel, item.reply_to))
        if loc is None:
            missing = NotFound("message", f"{item.channel}|{item.reply_to}")
            missing.args = (
                f"it answers {item.channel} message {item.reply_to!r}, which is not in the store",
            )
            raise missing
        s = yield from _through(
            overlay,
            _messages.send(
                cfg,
                loc.thread_id,
                item.content,
                item.sender,
                item.channel,
                None,
                item.provider_message_id,
                None,
                item.reply_to,
            ),
        )
        duplicate, new_thread, thread_id = s.duplicate, False, s.thread_id
    if not duplicate:
        newest = _newest(overlay, thread_id)
        if newest is not None and newest > item.sent_at:
            raise OutOfOrderError(thread_id, item.sent_at.isoformat(), newest.isoformat())
    return duplicate, new_thread


def import_chunk(config: Config, items: Sequence[Item]) -> Op[list[tuple[bool, bool]]]:
    """Record ``items`` in one transaction; a message's typed error leaves as
    :class:`ItemFailed` (nothing of the chunk is written)."""
    inbounds = [i for i in items if isinstance(i, Inbound)]
    queries: list[_load.IngestQuery] = []
    for inbound in inbounds:
        try:
            queries.append(_load.query(config, inbound))
        except Exception:
            continue
    cache = (yield from _load.load(config, queries)) if queries else None
    overlay = _Overlay(cache)
    out: list[tuple[bool, bool]] = []
    for position, item in enumerate(items):
        try:
            out.append((yield from _record(config, overlay, item)))
        except (ConflictError, StoreError):
            raise
        except ConvthreadError as exc:
            raise ItemFailed(position, exc) from exc
    batch = overlay.batch()
    if not batch.is_empty:
        yield from core.commit(batch)
    return out


# --------------------------------------------------------------------------- the import


def _describe(item: object) -> tuple[str, str]:
    return (
        str(getattr(item, "channel", "") or ""),
        str(getattr(item, "provider_message_id", "") or ""),
    )


def _kind(result: msgspec.Struct) -> str:
    tag = result.__struct_config__.tag
    return tag if isinstance(tag, str) else type(result).__name__


def _time_key(item: object) -> float:
    at = getattr(item, "sent_at", None) or getattr(item, "at", None)
    return at.timestamp() if isinstance(at, datetime) else float("-inf")


class Importer:
    """The driver-independent part of an import: it splits the input into chunks,
    keeps the counts, and leaves a failed message out of its chunk. The sync and async
    services run each chunk operation it hands out (:meth:`next_op`)."""

    def __init__(
        self,
        config: Config,
        chunk_size: int,
        progress: Callable[[ImportSummary], None] | None,
    ) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValidationError("chunk_size must be a positive integer")
        self.config = config
        self.chunk_size = chunk_size
        self.progress = progress
        self.read = 0
        self.imported = 0
        self.skipped = 0
        self.new_threads = 0
        self.failures: list[ImportFailure] = []
        self.ignored: Counter[str] = Counter()
        self._queue: list[list[tuple[int, Item]]] = []

    def chunks(
        self, items: Iterable[ChannelResult | HistoryReply | ImportFailure]
    ) -> Iterator[list[tuple[int, Item]]]:
        """The input in chunks of messages, with their input positions."""
        if isinstance(items, str | bytes | bytearray | Mapping) or not isinstance(items, Iterable):
            raise ValidationError(
                "messages must be an iterable of channel results or HistoryReply values, "
                f"not {type(items).__name__}"
            )
        chunk: list[tuple[int, Item]] = []
        for item in items:
            index = self.read
            self.read += 1
            if isinstance(item, Inbound | HistoryReply):
                chunk.append((index, item))
                if len(chunk) >= self.chunk_size:
                    yield chunk
                    chunk = []
            elif isinstance(item, _REPORTS):
                self.ignored[_kind(item)] += 1
            elif isinstance(item, ImportFailure):
                self.failures.append(msgspec.structs.replace(item, index=index))
            else:
                channel, pid = _describe(item)
                self.failures.append(
                    ImportFailure(
                        index=index,
                        channel=channel,
                        provider_message_id=pid,
                        error="ValidationError",
                        reason=f"not a channel result or a HistoryReply: {type(item).__name__}",
                    )
                )
        if chunk:
            yield chunk

    def start(self, chunk: list[tuple[int, Item]]) -> None:
        """Queue a chunk: :meth:`next_op` hands out its operation."""
        self._queue.append(chunk)
        self._settle()

    def next_op(self) -> Callable[[], Op[list[tuple[bool, bool]]]] | None:
        """The next chunk operation to run (then report :meth:`done` or :meth:`failed`),
        or None when the queued chunks are all done."""
        if not self._queue:
            return None
        items = [item for _i, item in self._queue[-1]]
        return lambda: import_chunk(self.config, items)

    def failed(self, failure: ItemFailed) -> None:
        """The running chunk failed on one message: record it, then run the messages
        before it (they committed nothing), then those after it."""
        part = self._queue.pop()
        index, item = part[failure.position]
        channel, pid = _describe(item)
        self.failures.append(
            ImportFailure(
                index=index,
                channel=channel,
                provider_message_id=pid,
                error=type(failure.error).__name__,
                reason=str(failure.error),
            )
        )
        self._queue.append(part[failure.position + 1 :])
        self._queue.append(part[: failure.position])
        self._settle()

    def done(self, outcomes: Sequence[tuple[bool, bool]]) -> None:
        """The running chunk committed."""
        self._queue.pop()
        for duplicate, new_thread in outcomes:
            if duplicate:
                self.skipped += 1
            else:
                self.imported += 1
                self.new_threads += new_thread
        self._settle()

    def _settle(self) -> None:
        """Drop finished parts; when the chunk is done, report progress."""
        while self._queue and not self._queue[-1]:
            self._queue.pop()
        if not self._queue and self.progress is not None:
            self.progress(self.summary())

    def summary(self) -> ImportSummary:
        return ImportSummary(
            read=self.read,
            imported=self.imported,
            skipped=self.skipped,
            failed=len(self.failures),
            ignored=sum(self.ignored.values()),
            new_threads=self.new_threads,
            failures=tuple(sorted(self.failures, key=lambda f: f.index)),
            ignored_kinds=dict(sorted(self.ignored.items())),
        )


# --------------------------------------------------------------------------- ordering


def history_order(items: Iterable[Any]) -> list[Any]:
    """``items`` (messages with ``channel``, ``provider_message_id``, ``sent_at`` and
    ``reply_to``) oldest first, each reply after the message it answers when both are
    there, whatever their timestamps say; equal times keep the input order. Results
    without a time come first. Holds the whole input in memory."""
    listed = list(items)
    where: dict[tuple[str, str], int] = {}
    for i, item in enumerate(listed):
        channel, pid = _describe(item)
        if pid:
            where.setdefault((channel, pid), i)
    children: dict[int, list[int]] = defaultdict(list)
    heap: list[tuple[float, int]] = []
    for i, item in enumerate(listed):
        parent_id = getattr(item, "reply_to", None)
        parent = where.get((_describe(item)[0], parent_id)) if parent_id else None
        if parent is not None and parent != i:
            children[parent].append(i)
        else:
            heap.append((_time_key(item), i))
    heapq.heapify(heap)
    out: list[Any] = []
    placed = [False] * len(listed)
    while heap:
        _at, i = heapq.heappop(heap)
        placed[i] = True
        out.append(listed[i])
        for child in children.pop(i, ()):
            heapq.heappush(heap, (_time_key(listed[child]), child))
    # replies in a cycle (each answering another) keep their input order, at the end
    out.extend(item for item, done in zip(listed, placed, strict=True) if not done)
    return out
