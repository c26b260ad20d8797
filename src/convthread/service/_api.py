"""``Conversations`` (sync) and ``AsyncConversations`` (asyncio): the public service.

Each public method is defined once, on their shared base ``_Service``, as the operation
it runs (a store-call generator; see :mod:`convthread.service._operation`); each service
gets a method that runs it through its driver, so they behave identically, and the async
one never blocks the event loop (blocking stores run in worker threads). What differs
is written per service: the constructor (which stores it takes), ``__repr__`` and the
context-manager protocol.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType, UnionType
from typing import TYPE_CHECKING, Final, Union, cast, get_args, get_origin, get_type_hints

from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.events import ThreadStatus
from convthread.domain.feed import Change, Consumer, Tracking
from convthread.domain.handoff import HandoffRecord, HandoffRule
from convthread.domain.identifiers import IdentifierRegistry, default_registry
from convthread.domain.identity import DisclosurePolicy
from convthread.domain.merge import MergePolicy
from convthread.domain.model import (
    Channel,
    Content,
    Identifier,
    Inbound,
    Party,
    SenderIdentifier,
    Trust,
    check_text,
    ensure_utc,
)
from convthread.domain.redaction import RedactionPolicy
from convthread.domain.snapshot import Snapshot
from convthread.domain.thread import CustomerState, LifecyclePolicy, ThreadState
from convthread.domain.timeline import TimelineEntry
from convthread.domain.tokens import KeyRing
from convthread.domain.updates import ChannelResult, Unsupported
from convthread.errors import ValidationError
from convthread.ports import (
    AsyncKVStore,
    AsyncMultiGetHeads,
    AsyncStore,
    Batch,
    Clock,
    IdSource,
    KVStore,
    MultiGetHeads,
    RandomIds,
    Store,
    SystemClock,
)
from convthread.service import (
    _erasure,
    _feed,
    _handoff,
    _identity,
    _import,
    _messages,
    _reads,
    _snapshots,
    _threads,
    _tokens,
)
from convthread.service._core import NS_IDENT, Config, Op
from convthread.service._drivers import InlineAsyncStore, ThreadedAsyncStore, threaded
from convthread.service._erasure import ErasureReport
from convthread.service._feed import AsyncFollower, Follower
from convthread.service._identity import (
    Disclosure,
    Explanation,
    History,
    MergeResult,
    MergeSuggestion,
    UnmergeResult,
    VerificationResult,
    VerificationStarted,
)
from convthread.service._import import HistoryReply, ImportFailure, ImportSummary
from convthread.service._operation import Steps, build_service, operation, procedure
from convthread.service._results import (
    ContinuationToken,
    CustomerView,
    HandoffResult,
    IngestResult,
    Redemption,
    SendResult,
    StoredEvent,
    ThreadView,
)
from convthread.service._threads import (
    ApplyResult,
    MessageLocation,
    SweepResult,
    ThreadPage,
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


#: How long an offer stands unless ``ttl`` says otherwise.
DEFAULT_OFFER_TTL: Final = timedelta(minutes=2)
#: How long a continuation token lives unless ``ttl`` says otherwise.
DEFAULT_TOKEN_TTL: Final = timedelta(minutes=15)


def _party(value: Party | str | None) -> Party | None:
    return None if value is None else Party.parse(value)


def _actor(value: Party | str) -> str:
    """Who made an identity or erasure change, as recorded: ``""`` (nobody named) or a
    party in its ``kind:id`` form, read by the one rule for parties (:meth:`Party.parse`)."""
    return "" if value == "" else str(Party.parse(value))


def _channel(value: str | None) -> str | None:
    return None if value is None else Channel.validate(value)


def _configure_handoff(
    config: Config,
    handoff_rules: Sequence[HandoffRule] | None,
    redaction: Mapping[str, RedactionPolicy] | None,
    token_keys: KeyRing | None,
) -> None:
    if handoff_rules is not None:
        config.handoff_rules = tuple(handoff_rules)
    if redaction is not None:
        config.redaction = dict(redaction)
    if token_keys is not None:
        if not isinstance(token_keys, KeyRing):
            raise ValidationError("token_keys must be a KeyRing")
        config.token_keys = token_keys


def _session(
    session: IngestResult | Identifier,
) -> tuple[IngestResult | None, Identifier | None]:
    """A session is the IngestResult of its message, or the identifier it arrived with."""
    if isinstance(session, IngestResult):
        return session, None
    if isinstance(session, Identifier):
        return None, session
    raise ValidationError("a session is an IngestResult or an Identifier (with its trust)")


def _content(content: str | Content) -> Content:
    if isinstance(content, Content):
        return content
    if isinstance(content, str):
        return Content(text=content)
    raise ValidationError(f"content must be a str or Content, not {type(content).__name__}")


def _open(store: Store | KVStore | str) -> Store:
    """The store a URL names, or ``store``; one without head methods (a store written to
    the protocol of releases up to 0.1) behind the adapter that keeps heads in its index."""
    if isinstance(store, str):
        from convthread.stores import open_store

        store = open_store(store)
    if isinstance(store, Store) or not isinstance(store, KVStore):
        return store  # (not a store at all: its first call says so)
    from convthread.stores._kv import with_heads

    return with_heads(store)


class _Service:
    """What the two services share: their configuration, and every public method,
    defined once as the operation it runs (see :mod:`convthread.service._operation`)."""

    config: Config
    store: Store | AsyncStore

    @operation(retries=False)
    def close(self) -> Op[None]:
        """Close the store."""
        yield "close", ()

    # -- messages

    @operation(retries=True)
    def ingest(self, inbound: Inbound) -> Op[IngestResult]:
        """Store an inbound message: deduplicate, resolve the customer, choose the thread."""
        return _messages.ingest(self.config, inbound)

    @operation(retries=True)
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
        embed_reference: bool = False,
    ) -> Op[SendResult]:
        """Record an outbound message by an agent, a bot or the system.

        ``channel`` defaults to the channel the customer last used. A controller (see
        handoff) passes the ``fencing_token`` it holds; a stale one is rejected.
        ``embed_reference`` appends the thread's reference token (``[#th_...]``) to the
        text, so a reply quoting it continues this thread on any channel.
        """
        return _messages.send(
            self.config,
            thread_id,
            _content(content),
            Party.parse(sender),
            _channel(channel),
            fencing_token,
            provider_message_id,
            idempotency_key,
            reply_to,
            embed_reference,
        )

    @procedure
    def import_history(
        self,
        messages: Iterable[ChannelResult | HistoryReply | ImportFailure],
        *,
        chunk_size: int = _import.DEFAULT_CHUNK,
        progress: Callable[[ImportSummary], None] | None = None,
    ) -> Steps[ImportSummary]:
        """Import history: each message is recorded at its own time (``sent_at``), company
        replies (:class:`HistoryReply`) as outbound messages; ``chunk_size`` messages per
        transaction; a rerun skips what is stored. Results that are not messages are
        counted as ignored; an :class:`ImportFailure` (from a reader of
        :mod:`convthread.importing`) as failed. ``progress`` is called after each chunk
        with the counts so far. See :mod:`convthread.service._import` and
        docs/import.md."""
        importer = _import.Importer(self.config, chunk_size, progress)
        for chunk in importer.chunks(messages):
            importer.start(chunk)
            while (op := importer.next_op()) is not None:
                try:
                    importer.done((yield op, self.config.max_retries))
                except _import.ItemFailed as failure:
                    importer.failed(failure)
        return importer.summary()

    # -- reads

    @operation(retries=False)
    def thread(self, thread_id: str) -> Op[ThreadView]:
        """A thread's state and all its events."""
        return _reads.thread(thread_id)

    @operation(retries=False)
    def thread_state(self, thread_id: str) -> Op[ThreadState]:
        """A thread's current state (without its events)."""
        return _reads.thread_state(thread_id)

    @operation(retries=False)
    def events(self, thread_id: str, *, after: int = 0) -> Op[list[StoredEvent]]:
        """A thread's events with sequence number greater than ``after``."""
        return _reads.events(thread_id, after)

    @operation(retries=False)
    def customer(self, customer_id: str) -> Op[CustomerView]:
        """A customer's identity state, identity events and thread ids."""
        return _reads.customer(customer_id)

    @operation(retries=False)
    def customer_threads(self, customer_id: str) -> Op[list[ThreadState]]:
        """A customer's threads, oldest first."""
        return _reads.customer_threads(customer_id)

    # -- the change feed

    @operation(retries=False)
    def changes(self, *, after: int = 0, limit: int = 100) -> Op[list[Change]]:
        """The changes recorded after position ``after``, at most ``limit`` (1 to
        10,000), in commit order: every event the service stored, as a
        :class:`~convthread.domain.feed.Change`. Page on with the last one's position.
        The store must offer the feed (:class:`~convthread.ports.FeedReader`), else
        :class:`~convthread.errors.FeedUnavailable`. See docs/feed.md."""
        _feed.require_feed(self.store)
        return _feed.changes(_feed.check_position(after), _feed.check_limit(limit))

    @operation(retries=False)
    def last_position(self) -> Op[int]:
        """The position of the feed's last change (0 while it is empty)."""
        _feed.require_feed(self.store)
        return _feed.last_position()

    @operation(retries=True)
    def ack(self, consumer: str, position: int) -> Op[int]:
        """Record that the named ``consumer`` has handled every change up to
        ``position`` (its checkpoint, kept in the store). A position at or below the
        recorded one changes nothing; one beyond the feed's last position is a
        ValidationError. Returns the consumer's position."""
        _feed.require_feed(self.store)
        return _feed.ack(self.config, consumer, position)

    @operation(retries=False)
    def consumer_position(self, consumer: str) -> Op[int]:
        """The last position ``consumer`` acknowledged (0 if it never did)."""
        return _feed.consumer_position(consumer)

    @operation(retries=False)
    def consumers(self) -> Op[list[Consumer]]:
        """Every named consumer of the feed, by name: position, lag and last move."""
        _feed.require_feed(self.store)
        return _feed.consumers()

    @operation(retries=True)
    def commit_tracked(self, batch: Batch, tracking: Tracking) -> Op[bool]:
        """Commit a consumer's own writes and its checkpoint in one transaction.

        ``batch`` holds puts and deletes of index entries in the consumer's own
        namespaces (not the service's); ``tracking`` says the consumer has handled
        every change up to its position. If the checkpoint is already there or beyond,
        nothing is written and the result is False (the change was applied before:
        a redelivery); else both are written together and the result is True. A
        consumer that keeps its results this way applies each change exactly once."""
        _feed.require_feed(self.store)
        _feed.check_tracked_batch(batch)
        return _feed.commit_tracked(self.config, batch, tracking)

    # -- erasure

    @operation(retries=True)
    def erase_customer(self, customer_id: str, *, by: Party | str = "") -> Op[ErasureReport]:
        """Erase a customer: identifiers, message content, attributes, snapshots and every
        index entry that carries personal data, then scrub the store. Idempotent.

        Erasing either side of a merge erases the whole merged customer. See
        :mod:`convthread.service._erasure` for exactly what goes and what remains.
        """
        return _erasure.erase_customer(self.config, customer_id, _actor(by))

    # -- threads (lifecycle, reports, queries, batches)

    @operation(retries=True)
    def ingest_many(self, inbounds: Sequence[Inbound]) -> Op[list[IngestResult]]:
        """Ingest several messages in one store transaction (all or nothing).

        Each message sees the ones before it; a conflict with another writer retries the
        whole batch; a typed error in any message writes nothing.
        """
        return _threads.ingest_many(self.config, list(inbounds))

    @operation(retries=True)
    def apply(self, result: ChannelResult) -> Op[ApplyResult]:
        """Record what a channel adapter produced: an inbound message, a delivery status,
        an edit, a deletion, a reaction, or unsupported content (kept and reported)."""
        return _threads.apply(self.config, result)

    @operation(retries=True)
    def record_provider_id(
        self, thread_id: str, seq: int, provider_message_id: str
    ) -> Op[ApplyResult]:
        """Record the provider's id of outbound message ``seq``, learnt after ``send``;
        statuses the provider reported for it earlier are applied."""
        return _threads.record_provider_id(self.config, thread_id, seq, provider_message_id)

    @operation(retries=True)
    def set_status(
        self,
        thread_id: str,
        status: ThreadStatus | str,
        *,
        until: datetime | None = None,
        by: Party | str | None = None,
        reason: str = "",
    ) -> Op[ThreadState]:
        """Move a thread through its lifecycle; InvalidTransition if the move is not
        allowed (see ``LIFECYCLE``)."""
        return _threads.set_status(
            self.config,
            thread_id,
            status,
            until,
            Party.parse(by) if by is not None else None,
            reason,
        )

    @operation(retries=True)
    def resolve(
        self, thread_id: str, *, by: Party | str | None = None, reason: str = ""
    ) -> Op[ThreadState]:
        """Resolve a thread (it may reopen within the reopen window)."""
        return _threads.set_status(
            self.config, thread_id, ThreadStatus.RESOLVED, None, _party(by), reason
        )

    @operation(retries=True)
    def reopen(
        self, thread_id: str, *, by: Party | str | None = None, reason: str = ""
    ) -> Op[ThreadState]:
        """Reopen a resolved thread (or wake a pending or snoozed one)."""
        return _threads.set_status(
            self.config, thread_id, ThreadStatus.OPEN, None, _party(by), reason
        )

    @operation(retries=True)
    def snooze(
        self,
        thread_id: str,
        until: datetime,
        *,
        by: Party | str | None = None,
        reason: str = "",
    ) -> Op[ThreadState]:
        """Snooze a thread until a time; ``sweep`` wakes it, as does a customer message."""
        return _threads.set_status(
            self.config, thread_id, ThreadStatus.SNOOZED, until, _party(by), reason
        )

    @operation(retries=True)
    def close_thread(
        self, thread_id: str, *, by: Party | str | None = None, reason: str = ""
    ) -> Op[ThreadState]:
        """Close a thread for good (a later message starts a successor)."""
        return _threads.set_status(
            self.config, thread_id, ThreadStatus.CLOSED, None, _party(by), reason
        )

    @operation(retries=True)
    def sweep(self, now: datetime, *, policy: LifecyclePolicy | None = None) -> Op[SweepResult]:
        """Apply the time-based lifecycle moves due at ``now``: wake snoozed threads,
        auto-resolve inactive ones (``policy``, default the service's). Nothing runs in
        the background: call this from your scheduler."""
        return _threads.sweep(self.config, now, policy)

    @operation(retries=False)
    def timeline(self, thread_id: str) -> Op[list[TimelineEntry]]:
        """A thread's messages as they stand now, ordered by the channel's timestamps."""
        return _threads.timeline(thread_id)

    @operation(retries=False)
    def find_message(self, channel: str, provider_message_id: str) -> Op[MessageLocation | None]:
        """Where a provider message id landed (thread and sequence number), or None."""
        return _threads.find_message(channel, provider_message_id)

    @operation(retries=False)
    def threads(
        self,
        *,
        customer: str | None = None,
        status: ThreadStatus | str | None = None,
        channel: str | None = None,
        controller: Party | str | None = None,
        active_after: datetime | None = None,
        active_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Op[ThreadPage]:
        """Threads matching all the filters given, a page at a time (see ThreadPage),
        ordered by last activity, oldest first, thread id breaking ties."""
        return _threads.threads(
            customer=customer,
            status=status,
            channel=channel,
            controller=Party.parse(controller) if controller is not None else None,
            active_after=active_after,
            active_before=active_before,
            limit=limit,
            cursor=cursor,
        )

    @operation(retries=False)
    def unsupported(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> Op[tuple[list[tuple[datetime, Unsupported]], str | None]]:
        """Unsupported content kept by ``apply``, oldest first, and the next cursor."""
        return _threads.unsupported(limit, cursor)

    # -- identity (merge policy, ledger, verification, disclosure)

    @operation(retries=True)
    def link(
        self,
        customer_id: str,
        identifier: Identifier,
        *,
        trust: Trust = Trust.CLAIMED,
        by: Party | str = "",
        method: str = "agent",
        channel: str = "",
        detail: str = "",
    ) -> Op[CustomerState]:
        """Link ``identifier`` to a customer at ``trust`` (or raise its trust), with evidence.

        PolicyViolation when it belongs to another customer, is blocklisted, or would
        break a per-kind limit."""
        return _identity.link(
            self.config,
            customer_id,
            identifier,
            trust,
            by=_actor(by),
            method=method,
            channel=channel,
            detail=detail,
        )

    @operation(retries=True)
    def unlink(self, identifier: Identifier, *, by: Party | str = "", reason: str = "") -> Op[str]:
        """Remove ``identifier`` from its customer (an ``IdentifierUnlinked`` event); returns
        the customer id."""
        return _identity.unlink(self.config, identifier, by=_actor(by), reason=reason)

    @operation(retries=True)
    def merge(
        self, a: str, b: str, *, by: Party | str = "", reason: str = "", dry_run: bool = False
    ) -> Op[MergeResult]:
        """Merge two customers (the merge policy's survivor rule says who survives).

        The hard rules (per-kind limits, verified account ids, blocklist) raise
        PolicyViolation. ``dry_run=True`` returns what would change without writing."""
        return _identity.merge(self.config, a, b, by=_actor(by), reason=reason, dry_run=dry_run)

    @operation(retries=True)
    def unmerge(
        self, merge_id: str, *, by: Party | str = "", reason: str = ""
    ) -> Op[UnmergeResult]:
        """Undo a merge: identifiers, their trust, threads and topic pointers go back."""
        return _identity.unmerge(self.config, merge_id, by=_actor(by), reason=reason)

    @operation(retries=False)
    def explain(self, identifier: Identifier) -> Op[Explanation]:
        """The chain of identity events that put ``identifier`` where it is."""
        return _identity.explain(self.config, identifier)

    @operation(retries=False)
    def merge_suggestions(
        self, *, customer_id: str | None = None, status: str | None = "pending"
    ) -> Op[list[MergeSuggestion]]:
        """Recorded merge suggestions (pending by default), oldest first."""
        return _identity.suggestions(customer_id, status)

    @operation(retries=True)
    def accept_suggestion(
        self, suggestion_id: str, *, by: Party | str = "", dry_run: bool = False
    ) -> Op[MergeResult]:
        """Accept a merge suggestion: the customers merge (hard rules still apply)."""
        return _identity.accept_suggestion(
            self.config, suggestion_id, by=_actor(by), dry_run=dry_run
        )

    @operation(retries=True)
    def reject_suggestion(self, suggestion_id: str, *, by: Party | str = "") -> Op[MergeSuggestion]:
        """Reject a merge suggestion; the pair is not suggested again."""
        return _identity.reject_suggestion(self.config, suggestion_id, by=_actor(by))

    @operation(retries=True)
    def start_verification(
        self,
        identifier: Identifier,
        *,
        customer_id: str | None = None,
        session_trust: Trust = Trust.CLAIMED,
        channel: str = "",
        by: Party | str = "",
        ttl: timedelta = timedelta(minutes=10),
        attempts: int = 5,
    ) -> Op[VerificationStarted]:
        """Start verifying ``identifier`` with a one-time code (deliver ``result.code``)."""
        return _identity.start_verification(
            self.config,
            identifier,
            customer_id=customer_id,
            session_trust=session_trust,
            channel=channel,
            by=_actor(by),
            ttl=ttl,
            attempts=attempts,
        )

    @operation(retries=True)
    def confirm_verification(
        self, verification_id: str, code: str, *, by: Party | str = ""
    ) -> Op[VerificationResult]:
        """Confirm a one-time code: the identifier becomes verified (VerificationError when
        the code is wrong, expired or out of attempts)."""
        return _identity.confirm_verification(self.config, verification_id, code, by=_actor(by))

    @operation(retries=False)
    def history_for(
        self,
        session: IngestResult | Identifier,
        *,
        trust: Trust | None = None,
        thread_id: str | None = None,
        since: int | None = None,
    ) -> Op[History]:
        """What a session may see under the disclosure policy: the customer's threads when
        it arrived with an asserted or verified linked identifier, else only its thread.

        ``session`` is the session's IngestResult, or the identifier it arrived with
        (then pass its ``trust``, and its ``thread_id`` if it has one)."""
        return _identity.history_for(
            self.config,
            *_session(session),
            trust=trust,
            thread_id=thread_id,
            since=since,
        )

    @operation(retries=False)
    def disclosure(
        self,
        session: IngestResult | Identifier,
        *,
        trust: Trust | None = None,
        thread_id: str | None = None,
        since: int | None = None,
    ) -> Op[Disclosure]:
        """What a session may see (the disclosure policy's answer), without reading
        the history: for any read made on a session's behalf. ``session`` as for
        :meth:`history_for`."""
        return _identity.disclosure(
            self.config,
            *_session(session),
            trust=trust,
            thread_id=thread_id,
            since=since,
        )

    # -- handoff and control

    @operation(retries=True)
    def request_handoff(
        self,
        thread_id: str,
        *,
        to: Party | str,
        reason: str = "",
        by: Party | str | None = None,
        fencing_token: int | None = None,
        handoff_id: str | None = None,
    ) -> Op[HandoffResult]:
        """Ask for ``to`` (a queue, an agent or a bot) to take the thread over. At most one
        handoff is pending per thread; the same ``handoff_id`` again is a repeat."""
        return _handoff.request(
            self.config,
            thread_id,
            Party.parse(to),
            reason,
            _party(by),
            fencing_token,
            handoff_id,
        )

    @operation(retries=True)
    def offer_handoff(
        self, handoff_id: str, *, to: Party | str, ttl: timedelta = DEFAULT_OFFER_TTL
    ) -> Op[HandoffResult]:
        """Offer a pending handoff to one party until ``ttl`` from now."""
        return _handoff.offer(self.config, handoff_id, Party.parse(to), ttl)

    @operation(retries=True)
    def accept_handoff(self, handoff_id: str, *, by: Party | str) -> Op[HandoffResult]:
        """Take control: returns the new fencing token and the snapshot handed over (also
        stored with the handoff). Of two parties accepting at once, one wins; the other
        gets HandoffTaken."""
        return _handoff.accept(self.config, handoff_id, Party.parse(by))

    @operation(retries=True)
    def decline_handoff(
        self, handoff_id: str, *, by: Party | str, reason: str = ""
    ) -> Op[HandoffResult]:
        """Decline an offer; the handoff stays pending, to be offered again."""
        return _handoff.decline(self.config, handoff_id, Party.parse(by), reason)

    @operation(retries=True)
    def release_control(
        self,
        thread_id: str,
        *,
        by: Party | str,
        fencing_token: int,
        reason: str = "",
        handoff_id: str | None = None,
    ) -> Op[HandoffResult]:
        """The controller gives control up (the fencing token moves on)."""
        return _handoff.release(
            self.config,
            thread_id,
            Party.parse(by),
            fencing_token,
            reason,
            handoff_id,
        )

    @operation(retries=True)
    def transfer_control(
        self,
        thread_id: str,
        *,
        to: Party | str,
        fencing_token: int,
        by: Party | str | None = None,
        reason: str = "",
        handoff_id: str | None = None,
    ) -> Op[HandoffResult]:
        """Hand control straight to ``to``; ``fencing_token`` must be the current one (0 on
        a thread nobody controlled yet)."""
        return _handoff.transfer(
            self.config,
            thread_id,
            Party.parse(to),
            _party(by),
            fencing_token,
            reason,
            handoff_id,
        )

    @procedure
    def expire_handoffs(self, *, now: datetime | None = None) -> Steps[list[HandoffResult]]:
        """Expire every offer due at ``now`` (default: the clock). Nothing runs in the
        background: call this from your scheduler."""
        when = now or self.config.clock.now()
        due = yield partial(_handoff.due_offers, when), self.config.max_retries
        out: list[HandoffResult] = []
        for handoff_id in due:
            expire = partial(_handoff.expire_offer, self.config, handoff_id, when)
            result = yield expire, self.config.max_retries
            if result is not None:
                out.append(result)
        return out

    @operation(retries=False)
    def handoff(self, handoff_id: str) -> Op[HandoffRecord]:
        """A handoff's record as it stands."""
        return _handoff.get_handoff(handoff_id)

    @operation(retries=False)
    def handed_over_snapshot(self, thread_id: str, handoff_id: str) -> Op[Snapshot]:
        """The snapshot stored with a handoff: exactly what its receiver was given."""
        return _snapshots.handed_over(thread_id, handoff_id)

    @operation(retries=True)
    def set_attribute(
        self,
        thread_id: str,
        name: str,
        value: object,
        *,
        by: Party | str | None = None,
        fencing_token: int | None = None,
    ) -> Op[int]:
        """Set an attribute on the thread (last write wins); returns its sequence number."""
        return _handoff.set_attribute(
            self.config,
            thread_id,
            name,
            value,
            _party(by),
            fencing_token,
        )

    @operation(retries=True)
    def record_intent(
        self,
        thread_id: str,
        name: str,
        *,
        confidence: float = 1.0,
        by: Party | str | None = None,
        fencing_token: int | None = None,
    ) -> Op[int]:
        """Record a detected intent (``"fallback"`` counts a bot failure); returns its
        sequence number."""
        return _handoff.record_intent(
            self.config,
            thread_id,
            name,
            confidence,
            _party(by),
            fencing_token,
        )

    # -- context snapshots

    @operation(retries=True)
    def snapshot(
        self,
        thread_id: str,
        *,
        audience: str = "agent",
        at_seq: int | None = None,
        max_messages: int = 20,
        max_chars: int | None = None,
        session: IngestResult | None = None,
    ) -> Op[Snapshot]:
        """The context snapshot of a thread for ``audience`` (at ``at_seq``, default: now),
        with at most ``max_messages`` recent messages totalling ``max_chars``.

        A ``"customer"`` snapshot is read on a session's behalf: pass ``session`` (the
        IngestResult of the session's message). Under the disclosure policy a session
        that arrived with only a claim sees its own messages, nothing earlier."""
        return _snapshots.snapshot(
            self.config,
            thread_id,
            audience,
            at_seq,
            max_messages,
            max_chars,
            session,
        )

    # -- continuation tokens

    @operation(retries=True)
    def issue_continuation(
        self,
        thread_id: str,
        *,
        ttl: timedelta = DEFAULT_TOKEN_TTL,
        by: Party | str | None = None,
    ) -> Op[ContinuationToken]:
        """A single-use token for the thread: ``code`` to read out, ``signed`` for links."""
        return _tokens.issue(self.config, thread_id, ttl, _party(by))

    @operation(retries=True)
    def redeem_continuation(
        self, token: str, *, sender: SenderIdentifier, channel: str
    ) -> Op[Redemption]:
        """Redeem a code or signed token arriving on ``channel`` with ``sender``: links the
        identifier to the customer (evidence "token") and continues the thread."""
        return _tokens.redeem(self.config, token, sender, channel)


class Conversations(_Service):
    """The synchronous service over a :class:`~convthread.ports.Store`.

    ``store`` is a store object or a URL (``"memory://"``, ``"sqlite:///support.db"``); a
    store without head methods (:class:`~convthread.ports.KVStore`) runs behind the
    adapter that keeps thread heads in its index.
    ``clock`` and ``ids`` are injectable for deterministic tests; ``identifiers`` holds
    the identifier normalizers; ``continuity`` decides which thread a message continues.
    Conflicts between concurrent writers are retried up to ``max_retries`` times (writers
    of one service queue once they conflict); then :class:`~convthread.errors.Contention`
    is raised, with a ``retry_after`` hint.
    """

    def __init__(
        self,
        store: Store | KVStore | str,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        identifiers: IdentifierRegistry | None = None,
        continuity: ContinuityPolicy | None = None,
        max_retries: int = 10,
        lifecycle: LifecyclePolicy | None = None,
        merge_policy: MergePolicy | None = None,
        disclosure: DisclosurePolicy | None = None,
        handoff_rules: Sequence[HandoffRule] | None = None,
        redaction: Mapping[str, RedactionPolicy] | None = None,
        token_keys: KeyRing | None = None,
    ) -> None:
        self.store: Store = _open(store)
        self.config = _config(clock, ids, identifiers, continuity, max_retries)
        self.config.prefetch = isinstance(self.store, MultiGetHeads)
        if lifecycle is not None:
            self.config.lifecycle = lifecycle
        if merge_policy is not None:
            self.config.merge_policy = merge_policy
        if disclosure is not None:
            self.config.disclosure = disclosure
        _configure_handoff(self.config, handoff_rules, redaction, token_keys)

    def __repr__(self) -> str:
        return f"Conversations({self.store!r})"

    # One index read: called directly, not through the driver, which would double
    # its cost (this is the lookup an adapter makes before every message).
    def find_customer(self, identifier: Identifier) -> str | None:
        """The id of the customer an identifier is linked to, or None."""
        return _reads.owner_of(self.store.get(NS_IDENT, _reads.ident_key(self.config, identifier)))

    def follow(
        self,
        *,
        after: int | None = None,
        consumer: str | None = None,
        limit: int = 100,
        poll: float = _feed.DEFAULT_POLL,
        ack_every: int = _feed.ACK_EVERY,
    ) -> Follower:
        """The feed's changes after ``after``, then each new one as it is committed:
        an iterator that waits (use it in a thread of its own; ``close()`` it from
        any thread, or leave its ``with`` block, to stop it).

        With ``consumer``, it starts after the consumer's checkpoint (unless ``after``
        is given) and acknowledges each change once the next one is asked for (in
        batches, and whenever it has caught up): every change is delivered at least
        once, a change being handled when the process died is delivered again, with
        up to ``ack_every`` before it (1: acknowledge every change, one write each).
        It waits on the store's watch (PostgreSQL LISTEN/NOTIFY, SQLite's data
        version, the memory store's condition) and reads again at least every
        ``poll`` seconds whatever the watch says. ``limit`` is the page size."""
        return _feed.Follower(self, after, consumer, limit, poll, ack_every)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncConversations(_Service):
    """The asyncio service. Same operations and results as :class:`Conversations`.

    ``store`` may be an :class:`~convthread.ports.AsyncStore`, or a sync store or URL:
    the memory store is called inline (it never blocks); blocking stores run in a pool
    of worker threads. Conflicting writers queue and retry as in :class:`Conversations`.
    """

    def __init__(
        self,
        store: AsyncStore | AsyncKVStore | Store | KVStore | str,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        identifiers: IdentifierRegistry | None = None,
        continuity: ContinuityPolicy | None = None,
        max_retries: int = 10,
        lifecycle: LifecyclePolicy | None = None,
        merge_policy: MergePolicy | None = None,
        disclosure: DisclosurePolicy | None = None,
        handoff_rules: Sequence[HandoffRule] | None = None,
        redaction: Mapping[str, RedactionPolicy] | None = None,
        token_keys: KeyRing | None = None,
    ) -> None:
        self.store: AsyncStore = _as_async(store)
        self.config = _config(clock, ids, identifiers, continuity, max_retries)
        self.config.prefetch = _has_multi(self.store)
        if lifecycle is not None:
            self.config.lifecycle = lifecycle
        if merge_policy is not None:
            self.config.merge_policy = merge_policy
        if disclosure is not None:
            self.config.disclosure = disclosure
        _configure_handoff(self.config, handoff_rules, redaction, token_keys)

    def __repr__(self) -> str:
        return f"AsyncConversations({self.store!r})"

    async def find_customer(self, identifier: Identifier) -> str | None:
        """The id of the customer an identifier is linked to, or None."""
        key = _reads.ident_key(self.config, identifier)
        return _reads.owner_of(await self.store.get(NS_IDENT, key))

    def follow(
        self,
        *,
        after: int | None = None,
        consumer: str | None = None,
        limit: int = 100,
        poll: float = _feed.DEFAULT_POLL,
        ack_every: int = _feed.ACK_EVERY,
    ) -> AsyncFollower:
        """The asyncio form of :meth:`Conversations.follow`: an async iterator
        (``async for change in convs.follow(...)``); cancel its task or ``aclose()``
        it to stop. Nothing is read before the first ``__anext__``."""
        return _feed.AsyncFollower(self, after, consumer, limit, poll, ack_every)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _has_multi(store: AsyncStore) -> bool:
    if isinstance(store, (InlineAsyncStore, ThreadedAsyncStore)):
        return isinstance(store.sync, MultiGetHeads)
    return isinstance(store, AsyncMultiGetHeads)


def _as_async(store: AsyncStore | AsyncKVStore | Store | KVStore | str) -> AsyncStore:
    from convthread.stores.memory import MemoryStore

    if isinstance(store, str):
        if store.lower().startswith(("postgresql://", "postgres://")):
            from convthread.stores import open_async_store

            return open_async_store(store)  # the native asyncio store
        store = _open(store)
    if isinstance(store, MemoryStore):
        return InlineAsyncStore(store)
    # Store and AsyncStore name the same methods, so isinstance cannot tell them apart:
    # a store whose commit is a coroutine function is already asynchronous.
    if isinstance(store, KVStore) and not inspect.iscoroutinefunction(store.commit):
        return threaded(_open(store))
    if isinstance(store, AsyncKVStore) and not isinstance(store, AsyncStore):
        from convthread.stores._kv import with_heads_async

        return cast("AsyncStore", with_heads_async(store))
    return cast("AsyncStore", store)


# -- argument checks at the public entry points
#
# Every public method of both services checks its arguments against its annotations
# before anything runs: a value of the wrong type, a string with a lone surrogate or a
# naive datetime is a ValidationError naming the method and the argument, and nothing
# is read or written. (Defaults are not checked: they are the library's own.)

_Check = Callable[[object], bool]


def _matcher(tp: object) -> _Check:
    """A predicate: does a value belong to annotation ``tp``? (Unknown forms: yes.)"""
    origin = get_origin(tp)
    if origin is Union or origin is UnionType:
        members = tuple(_matcher(arg) for arg in get_args(tp))
        return lambda v: any(m(v) for m in members)
    if tp is type(None):
        return lambda v: v is None
    if tp is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if origin in (Sequence, list, tuple):
        args = get_args(tp)
        item = _matcher(args[0]) if args else None
        return lambda v: isinstance(v, (list, tuple)) and (item is None or all(map(item, v)))
    if origin is not None:
        origin_cls = origin
        return lambda v: isinstance(v, origin_cls) if isinstance(origin_cls, type) else True
    if isinstance(tp, type) and tp is not object and not getattr(tp, "_is_protocol", False):
        cls = tp
        return lambda v: isinstance(v, cls)
    return lambda v: True


def _describe(tp: object) -> str:
    if get_origin(tp) is Union or get_origin(tp) is UnionType:
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _checked_value(where: str, name: str, tp: object, match: _Check, value: object) -> None:
    if not match(value):
        raise ValidationError(
            f"{where}: {name} must be {_describe(tp)}, not {type(value).__name__} ({value!r:.60})"
        )
    if isinstance(value, str):
        check_text(value, f"{where}: {name}")
    elif isinstance(value, datetime):
        ensure_utc(value, f"{where}: {name}")


def _guard(fn: Callable[..., object], where: str) -> Callable[..., object]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    checks = {p.name: (hints[p.name], _matcher(hints[p.name])) for p in params if p.name in hints}
    positional = [
        (p.name, *checks[p.name])
        for p in params
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name in checks
    ]

    def check(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        for (name, tp, match), value in zip(positional, args, strict=False):
            _checked_value(where, name, tp, match, value)
        for name, value in kwargs.items():
            found = checks.get(name)
            if found is not None:
                _checked_value(where, name, found[0], found[1], value)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def checked_async(self: object, *args: object, **kwargs: object) -> object:
            check(args, kwargs)
            return await fn(self, *args, **kwargs)

        return checked_async

    @functools.wraps(fn)
    def checked(self: object, *args: object, **kwargs: object) -> object:
        check(args, kwargs)
        return fn(self, *args, **kwargs)

    return checked


def _guard_public_methods(cls: type) -> None:
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(fn):
            setattr(cls, name, _guard(fn, f"{cls.__name__}.{name}"))


build_service(Conversations, asynchronous=False)
build_service(AsyncConversations, asynchronous=True)
_guard_public_methods(Conversations)
_guard_public_methods(AsyncConversations)
