"""The public results of the identity operations: what a merge, an unmerge, an explanation,
a merge suggestion, a verification and a disclosure decision return.

They are frozen msgspec Structs, re-exported by :mod:`convthread.service` and the top-level
package; they are answers, never stored, so they may change shape with the API (not with
the storage format). ``Explanation.render`` is the one place identity events are put
into words.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    Decision,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    MergeSuggested,
    PointerChange,
    SuspendedThread,
)
from convthread.domain.model import Identifier, Trust
from convthread.domain.thread import ThreadState
from convthread.service._identity._records import _TAKEN_FROM
from convthread.service._results import ThreadView


class MergeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a merge did (or, with ``dry_run``, would do)."""

    merge_id: str
    survivor: str
    absorbed: str
    #: identifiers moved from the absorbed customer, with their trust
    identifiers: tuple[tuple[Identifier, Trust], ...]
    #: threads moved from the absorbed customer
    threads: tuple[str, ...]
    #: live threads of the absorbed customer resolved because the survivor has a live
    #: thread for the same topic
    suspended: tuple[SuspendedThread, ...]
    #: open/latest pointers changed
    pointers: tuple[PointerChange, ...]
    decision: Decision
    dry_run: bool = False


class UnmergeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an unmerge gave back to the restored customer."""

    merge_id: str
    survivor: str
    restored: str
    identifiers: tuple[tuple[Identifier, Trust], ...]
    threads: tuple[str, ...]
    resumed: tuple[SuspendedThread, ...]
    pointers: tuple[PointerChange, ...]


class ExplainStep(msgspec.Struct, frozen=True):
    """One identity event in the chain: which customer's stream, where, what."""

    customer_id: str
    seq: int
    event: CustomerEvent


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """Why an identifier is where it is: its owner, its trust, and the chain of events
    (links, verifications, merges, unmerges) that put it there, oldest first."""

    identifier: Identifier
    customer_id: str | None
    trust: Trust | None
    steps: tuple[ExplainStep, ...]

    def render(self) -> str:
        """The chain as text, one line per event."""
        head = (
            f"{self.identifier}: not linked to any customer"
            if self.customer_id is None
            else f"{self.identifier}: customer {self.customer_id} "
            f"({self.trust.value if self.trust else '?'})"
        )
        lines = [head]
        for step in self.steps:
            lines.append(f"  {step.customer_id}#{step.seq} {_describe(step.event)}")
        return "\n".join(lines)


class MergeSuggestion(msgspec.Struct, frozen=True, kw_only=True):
    """A merge the policy would not make automatically; an agent accepts or rejects it."""

    id: str
    customer_id: str
    other: str
    identifier: Identifier
    decision: Decision
    at: datetime
    status: str
    by: str = ""


class VerificationStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A started verification. Deliver ``code`` to the identifier (SMS, e-mail); it is
    not stored, only its HMAC."""

    verification_id: str
    code: str
    identifier: Identifier
    customer_id: str | None
    expires_at: datetime
    attempts: int


class VerificationResult(msgspec.Struct, frozen=True, kw_only=True):
    """A confirmed verification: the identifier is verified on ``customer_id``."""

    identifier: Identifier
    customer_id: str
    previous: Trust | None
    decision: Decision
    merge: MergeResult | None = None
    suggestion_id: str | None = None


class Disclosure(msgspec.Struct, frozen=True, kw_only=True):
    """The disclosure policy's answer for a session: ``scope`` ``"history"`` (the
    customer's threads) or ``"current_thread"`` (only ``thread_id``, events with
    sequence number >= ``since``), and why."""

    customer_id: str | None
    thread_id: str | None
    scope: str
    since: int
    decision: Decision
    thread: ThreadState | None = None


class History(msgspec.Struct, frozen=True, kw_only=True):
    """What a session may see under the disclosure policy.

    ``scope`` is ``"history"`` (the customer's threads, oldest first) or
    ``"current_thread"`` (only the session's thread, from ``since`` on), and
    ``decision`` says why.
    """

    customer_id: str | None
    thread_id: str | None
    scope: str
    decision: Decision
    threads: tuple[ThreadView, ...]


def _describe(event: CustomerEvent) -> str:
    if isinstance(event, IdentifierLinked):
        e = event.evidence
        taken = _TAKEN_FROM.search(e.detail)
        return (
            f"linked {event.identifier} as {event.trust.value} "
            f"(method {e.method}{', channel ' + e.channel if e.channel else ''}"
            f"{', by ' + e.by if e.by else ''})"
            + (f", taken over from {taken.group(1)} (it only claimed it)" if taken else "")
        )
    if isinstance(event, IdentifierVerified):
        return (
            f"verified {event.identifier} (was {event.previous.value}, method "
            f"{event.evidence.method})"
        )
    if isinstance(event, IdentifierUnlinked):
        return (
            f"unlinked {event.identifier}"
            + (f": {event.reason}" if event.reason else "")
            + (f" (by {event.by})" if event.by else "")
        )
    if isinstance(event, CustomerMerged):
        why = f": {event.decision.reason}" if event.decision else ""
        return f"merge {event.merge_id}: {event.absorbed} merged into {event.survivor}{why}"
    if isinstance(event, CustomerUnmerged):
        return f"unmerge {event.merge_id}: {event.restored} split from {event.survivor}"
    if isinstance(event, MergeSuggested):
        return f"merge with {event.other} suggested ({event.suggestion_id})"
    return type(event).__name__
