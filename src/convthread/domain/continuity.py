"""Continuity: does an inbound message continue a thread or start a new one, and why.

A :class:`ContinuityPolicy` is an ordered list of rules. Each rule looks at a
:class:`ContinuityContext` (everything the service has loaded for this message) and
either returns a :class:`Choice` with its :class:`~convthread.domain.events.Decision`
(rule name, a sentence, the evidence) or passes. The first rule that decides wins; the
last rule always decides (a new thread).

Default order: explicit reference (reply to a known message, e-mail ``In-Reply-To`` /
``References``), topic key, recency across channels, new thread. A thread that was
resolved reopens when the message falls within the reopen window; otherwise the new
thread records it as its predecessor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from convthread.domain.events import Decision, ThreadStatus
from convthread.domain.model import Inbound
from convthread.domain.thread import ThreadState

__all__ = [
    "Choice",
    "ContinuityContext",
    "ContinuityPolicy",
    "ContinuityRule",
    "TopicExtractor",
    "explicit_reference",
    "new_thread",
    "recency",
    "topic_key",
]

#: ``(inbound) -> topic or None``: e.g. an order number found in the text.
TopicExtractor = Callable[[Inbound], "str | None"]


@dataclass(frozen=True)
class ContinuityContext:
    """What a rule may look at. Loaded by the service before the policy runs."""

    inbound: Inbound
    customer_id: str
    topic: str | None
    #: reference (provider message id) -> the thread holding that message, for references
    #: that resolve to a thread of *this* customer.
    referenced: dict[str, ThreadState] = field(default_factory=dict)
    #: the customer's live (open, pending or snoozed) thread for ``topic``, if any.
    live: ThreadState | None = None
    #: the customer's most recently active thread for ``topic`` when none is live.
    latest: ThreadState | None = None


@dataclass(frozen=True)
class Choice:
    """The outcome: continue ``thread`` (reopening it if ``reopen``) or start a new one."""

    decision: Decision
    thread: ThreadState | None = None
    reopen: bool = False
    predecessor: str | None = None
    #: a live thread to resolve first because the new one replaces it (stale recency).
    supersede: ThreadState | None = None

    @property
    def is_new(self) -> bool:
        return self.thread is None


class ContinuityRule(Protocol):
    """A rule: decide (return a Choice) or pass (return None)."""

    def __call__(self, ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None: ...


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _continue(
    thread: ThreadState, policy: ContinuityPolicy, ctx: ContinuityContext, decision: Decision
) -> Choice:
    """Continue ``thread``; reopen it, or start a successor, if it was resolved/closed."""
    if thread.is_open:
        return Choice(decision=decision, thread=thread)
    if thread.status is ThreadStatus.RESOLVED and policy.within_reopen(thread, ctx.inbound):
        reason = f"{decision.reason}; it was resolved and reopens (within the reopen window)"
        return Choice(
            decision=Decision(rule=decision.rule, reason=reason, evidence=decision.evidence),
            thread=thread,
            reopen=True,
        )
    reason = (
        f"{decision.reason}, but that thread is {thread.status.value} "
        "beyond the reopen window, so a new thread follows it"
    )
    return Choice(
        decision=Decision(rule=decision.rule, reason=reason, evidence=decision.evidence),
        predecessor=thread.id,
    )


def explicit_reference(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the thread of a message this one replies to or references."""
    inbound = ctx.inbound
    refs: list[tuple[str, str]] = []
    if inbound.reply_to is not None:
        refs.append(("reply_to", inbound.reply_to))
    refs.extend(("references", r) for r in reversed(inbound.references))
    for how, ref in refs:
        thread = ctx.referenced.get(ref)
        if thread is None:
            continue
        what = "replies to" if how == "reply_to" else "references"
        decision = Decision(
            rule="explicit_reference",
            reason=f"the message {what} {ref!r}, a message of thread {thread.id}",
            evidence={"reference": ref, "via": how, "thread": thread.id},
        )
        return _continue(thread, policy, ctx, decision)
    return None


def topic_key(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the customer's live thread for the message's topic (e.g. an order number)."""
    if ctx.topic is None:
        return None
    if ctx.live is not None:
        decision = Decision(
            rule="topic_key",
            reason=f"the message is about {ctx.topic!r}, the topic of open thread {ctx.live.id}",
            evidence={"topic": ctx.topic, "thread": ctx.live.id},
        )
        return Choice(decision=decision, thread=ctx.live)
    if ctx.latest is not None:
        decision = Decision(
            rule="topic_key",
            reason=f"the message is about {ctx.topic!r}, the topic of thread {ctx.latest.id}",
            evidence={"topic": ctx.topic, "thread": ctx.latest.id},
        )
        return _continue(ctx.latest, policy, ctx, decision)
    return None


def recency(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the customer's live thread when its last activity is within the window."""
    thread = ctx.live
    if thread is None:
        if ctx.latest is not None and ctx.latest.status is ThreadStatus.RESOLVED:
            if policy.within_reopen(ctx.latest, ctx.inbound):
                decision = Decision(
                    rule="recency",
                    reason=(
                        f"thread {ctx.latest.id} was resolved "
                        f"{_ago(ctx.inbound.sent_at, ctx.latest.status_changed_at)} ago, "
                        "within the reopen window, so it reopens"
                    ),
                    evidence={
                        "thread": ctx.latest.id,
                        "resolved_at": _iso(ctx.latest.status_changed_at),
                        "reopen_window": str(policy.reopen_window),
                    },
                )
                return Choice(decision=decision, thread=ctx.latest, reopen=True)
        return None
    window = policy.window_for(thread.last_channel, ctx.inbound.channel)
    last = thread.last_activity or thread.created_at
    gap = ctx.inbound.sent_at - last
    if gap <= window:
        across = (
            f"on {ctx.inbound.channel} after {thread.last_channel}"
            if thread.last_channel != ctx.inbound.channel
            else f"on {ctx.inbound.channel}"
        )
        decision = Decision(
            rule="recency",
            reason=(
                f"open thread {thread.id} was last active {_fmt(gap)} ago, within the "
                f"{_fmt(window)} window; continuing {across}"
            ),
            evidence={
                "thread": thread.id,
                "last_activity": _iso(last),
                "gap_seconds": str(int(gap.total_seconds())),
                "window_seconds": str(int(window.total_seconds())),
            },
        )
        return Choice(decision=decision, thread=thread)
    decision = Decision(
        rule="recency",
        reason=(
            f"open thread {thread.id} was last active {_fmt(gap)} ago, beyond the "
            f"{_fmt(window)} window; it is resolved and a new thread follows it"
        ),
        evidence={
            "previous": thread.id,
            "last_activity": _iso(last),
            "gap_seconds": str(int(gap.total_seconds())),
            "window_seconds": str(int(window.total_seconds())),
        },
    )
    return Choice(decision=decision, predecessor=thread.id, supersede=thread)


def new_thread(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """The last rule: a new thread."""
    if ctx.latest is not None:
        reason = (
            f"no open thread for this customer"
            f"{' and topic ' + repr(ctx.topic) if ctx.topic else ''}; "
            f"new thread after {ctx.latest.id} ({ctx.latest.status.value})"
        )
        return Choice(
            decision=Decision(
                rule="new_thread", reason=reason, evidence={"previous": ctx.latest.id}
            ),
            predecessor=ctx.latest.id,
        )
    reason = "first conversation of this customer" + (
        f" about {ctx.topic!r}" if ctx.topic else ""
    )
    return Choice(decision=Decision(rule="new_thread", reason=reason))


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"-{_fmt(-delta)}"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def _ago(now: datetime, then: datetime | None) -> str:
    return "?" if then is None else _fmt(now - then)


@dataclass(frozen=True)
class ContinuityPolicy:
    """The rules, in order, and their settings.

    * ``window``: how long after a thread's last activity a message on any channel still
      continues it (default 24 hours).
    * ``channel_windows``: overrides per (previous channel, new channel) pair, e.g.
      ``{("webchat", "voice"): timedelta(minutes=30)}``.
    * ``reopen_window``: how long after a thread is resolved a message reopens it instead
      of starting a successor (default 7 days).
    * ``topic_extractor``: finds a topic key (e.g. an order number) in an inbound message.
    """

    window: timedelta = timedelta(hours=24)
    channel_windows: dict[tuple[str, str], timedelta] = field(default_factory=dict)
    reopen_window: timedelta = timedelta(days=7)
    topic_extractor: TopicExtractor | None = None
    rules: Sequence[ContinuityRule] = (explicit_reference, topic_key, recency, new_thread)

    def window_for(self, previous: str, current: str) -> timedelta:
        return self.channel_windows.get((previous, current), self.window)

    def within_reopen(self, thread: ThreadState, inbound: Inbound) -> bool:
        changed = thread.status_changed_at
        return changed is not None and inbound.sent_at - changed <= self.reopen_window

    def topic_of(self, inbound: Inbound) -> str | None:
        if self.topic_extractor is None:
            return None
        topic = self.topic_extractor(inbound)
        return topic or None

    def decide(self, ctx: ContinuityContext) -> Choice:
        for rule in self.rules:
            choice = rule(ctx, self)
            if choice is not None:
                return choice
        return new_thread(ctx, self) or Choice(
            decision=Decision(rule="new_thread", reason="no rule decided")
        )
