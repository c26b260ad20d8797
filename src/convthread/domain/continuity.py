"""Continuity: does an inbound message continue a thread or start a new one, and why.

A :class:`ContinuityPolicy` is an ordered list of rules. Each rule looks at a
:class:`ContinuityContext` (everything the service has loaded for this message) and
either returns a :class:`Choice` with its :class:`~convthread.domain.events.Decision`
(rule name, a sentence, the evidence) or passes. The first rule that decides wins; the
last rule always decides (a new thread).

Default order: explicit reference (reply to a known message, e-mail ``In-Reply-To`` /
``References``), a thread reference token (``[#th_...]``, which ``send`` can embed, found
in the subject or the text), topic key, recency across channels, new thread.

A resolved thread reopens when the message falls within the reopen window and names no
topic or the thread's own topic; a message that names another topic (one the resolved
thread did not have) goes to the customer's live thread for that topic, or starts one.
Beyond the reopen window, and always for a closed thread (closed is final), the new
thread records the old one as its predecessor.

Invariants :meth:`ContinuityPolicy.decide` keeps whatever the rules say:

* one live thread per customer and topic: a new thread for a topic that has a live
  thread supersedes it (the live one is resolved in the same transaction);
* a reopened thread never collides with another live thread of its topic: the message
  continues that live thread instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Protocol

from convthread.domain.events import Decision, ThreadStatus
from convthread.domain.model import Inbound
from convthread.domain.reasons import Render, Scalar, _register_builtin
from convthread.domain.thread import ThreadState

__all__ = [
    "DEFAULT_RULES",
    "MAX_TOKENS",
    "Choice",
    "ContinuityContext",
    "ContinuityPolicy",
    "ContinuityRule",
    "TopicExtractor",
    "explicit_reference",
    "find_reference_tokens",
    "new_thread",
    "recency",
    "reference_token",
    "thread_reference",
    "topic_key",
]

#: ``(inbound) -> topic or None``: e.g. an order number found in the text.
TopicExtractor = Callable[[Inbound], "str | None"]

#: Most reference tokens looked at in one message (subject first, then text).
MAX_TOKENS: Final = 5
# A thread reference token: "[#" + a thread id + "]". Thread ids are "th_" followed by
# letters, digits, "_" or "-" (RandomIds and SequentialIds both fit).
_TOKEN_RE: Final = re.compile(r"\[#(th_[0-9A-Za-z_-]{1,64})\]")


def reference_token(thread_id: str) -> str:
    """The token that names ``thread_id`` in a subject or text: ``[#th_0001]``.

    ``send(..., embed_reference=True)`` appends it to the outbound text; a reply that
    quotes it (or keeps it in the subject) continues the thread on any channel.
    """
    if not _TOKEN_RE.fullmatch(f"[#{thread_id}]"):
        raise ValueError(f"{thread_id!r} is not a thread id that a token can carry")
    return f"[#{thread_id}]"


def find_reference_tokens(inbound: Inbound) -> list[str]:
    """Thread ids named by tokens in the subject, then the text (first seen first)."""
    found: list[str] = []
    for source in (inbound.subject, inbound.content.text):
        if not source or "[#th_" not in source:
            continue
        for match in _TOKEN_RE.finditer(source):
            tid = match.group(1)
            if tid not in found:
                found.append(tid)
                if len(found) >= MAX_TOKENS:
                    return found
    return found


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
    #: thread id named by a reference token -> that thread, for tokens naming a thread of
    #: *this* customer (a token for someone else's thread is ignored).
    tokens: dict[str, ThreadState] = field(default_factory=dict)
    #: topic key ("" for none) -> the customer's live thread for it, for the topics of
    #: the threads above (so a resolved thread never reopens beside a live one).
    live_by_topic: dict[str, ThreadState] = field(default_factory=dict)


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
    """Continue ``thread``; reopen it, or start a successor, if it was resolved/closed.

    When ``thread`` is no longer live and the customer has a live thread (for its topic,
    or for the message's topic), the message continues that live thread: the customer
    has one conversation about it going on already.
    """
    if thread.is_open:
        return Choice(decision=decision, thread=thread)
    sibling = ctx.live_by_topic.get(thread.topic_key)
    if sibling is not None and sibling.id != thread.id and sibling.is_open:
        return Choice(
            decision=_follow(
                decision, "continuity.then.sibling", {"was": thread.status.value}, live=sibling.id
            ),
            thread=sibling,
        )
    if (
        thread.status is ThreadStatus.RESOLVED
        and policy.within_reopen(thread, ctx.inbound)
        and _same_topic(thread, ctx)
    ):
        return Choice(
            decision=_follow(decision, "continuity.then.reopens"), thread=thread, reopen=True
        )
    why = _not_reopened(thread, ctx, policy, decision.evidence)
    live = ctx.live
    if live is not None and live.is_open:
        return Choice(
            decision=_follow(decision, "continuity.then.live", why, live=live.id), thread=live
        )
    return Choice(
        decision=_follow(decision, "continuity.then.successor", why), predecessor=thread.id
    )


def _same_topic(thread: ThreadState, ctx: ContinuityContext) -> bool:
    """May the message reopen ``thread``? Only if it names no topic or the thread's own."""
    return ctx.topic is None or ctx.topic == thread.topic


def _not_reopened(
    thread: ThreadState,
    ctx: ContinuityContext,
    policy: ContinuityPolicy,
    evidence: dict[str, str],
) -> dict[str, Scalar]:
    """Why the message does not reopen ``thread``, which is not live, as the params
    :func:`_why` reads: it is closed, it was resolved too long ago, or the message is
    about another topic (a value ``evidence`` holds already is not repeated)."""
    if thread.status is ThreadStatus.CLOSED:
        return {"why": "closed"}
    if thread.status is not ThreadStatus.RESOLVED:
        return {"why": "status", "was": thread.status.value}
    if not policy.within_reopen(thread, ctx.inbound):
        out: dict[str, Scalar] = {
            "why": "old",
            "reopen": int(policy.reopen_window.total_seconds()),
        }
        if thread.status_changed_at is not None:
            out["ago"] = int((ctx.inbound.sent_at - thread.status_changed_at).total_seconds())
        return out
    out = {"why": "topic"}
    if thread.topic:
        out["had"] = thread.topic
    if evidence.get("topic") != ctx.topic:
        out["topic"] = ctx.topic
    return out


def _why(m: Mapping[str, Any]) -> str:
    """The clause that follows "that thread was" (see :func:`_not_reopened`)."""
    why = m["why"]
    if why == "closed":
        return "closed, and a closed thread never reopens"
    if why == "status":
        return str(m["was"])
    if why == "old":
        ago = _fmt_seconds(int(m["ago"])) if "ago" in m else "?"
        return f"resolved {ago} ago, beyond the {_fmt_seconds(int(m['reopen']))} reopen window"
    had = f"about {m['had']!r}" if "had" in m else "about no topic in particular"
    return f"resolved {had}, and the message is about {m['topic']!r}, a new topic"


def _follow(
    decision: Decision,
    clause: str,
    params: Mapping[str, Scalar] | None = None,
    **evidence: str,
) -> Decision:
    return decision.followed_by(clause, params, **evidence)


def explicit_reference(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the thread of a message this one replies to or references."""
    inbound = ctx.inbound
    if inbound.reply_to is None and not inbound.references:
        return None
    refs: list[tuple[str, str]] = []
    if inbound.reply_to is not None:
        refs.append(("reply_to", inbound.reply_to))
    refs.extend(("references", r) for r in reversed(inbound.references))
    for how, ref in refs:
        thread = ctx.referenced.get(ref)
        if thread is None:
            continue
        decision = Decision(
            rule="explicit_reference",
            code="continuity.explicit_reference",
            evidence={"reference": ref, "via": how, "thread": thread.id},
        )
        return _continue(thread, policy, ctx, decision)
    return None


def thread_reference(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the thread a reference token (``[#th_...]``) in the subject or text names."""
    if not ctx.tokens:
        return None
    for tid in find_reference_tokens(ctx.inbound):
        thread = ctx.tokens.get(tid)
        if thread is None:
            continue
        where = "subject" if f"[#{tid}]" in ctx.inbound.subject else "text"
        decision = Decision(
            rule="thread_reference",
            code="continuity.thread_reference",
            evidence={"token": f"[#{tid}]", "in": where, "thread": thread.id},
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
            code="continuity.topic_key.open",
            evidence={"topic": ctx.topic, "thread": ctx.live.id},
        )
        return Choice(decision=decision, thread=ctx.live)
    if ctx.latest is not None:
        decision = Decision(
            rule="topic_key",
            code="continuity.topic_key.latest",
            evidence={"topic": ctx.topic, "thread": ctx.latest.id},
        )
        return _continue(ctx.latest, policy, ctx, decision)
    return None


def recency(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """Continue the customer's live thread when its last activity is within the window."""
    thread = ctx.live
    if thread is None:
        if (
            ctx.latest is not None
            and ctx.latest.status is ThreadStatus.RESOLVED
            and policy.within_reopen(ctx.latest, ctx.inbound)
            and _same_topic(ctx.latest, ctx)
        ):
            decision = Decision(
                rule="recency",
                code="continuity.recency.reopens",
                params=_ago_params(ctx.inbound.sent_at, ctx.latest.status_changed_at),
                evidence={
                    "thread": ctx.latest.id,
                    "resolved_at": _iso(ctx.latest.status_changed_at),
                    "reopen_window": str(policy.reopen_window),
                },
            )
            return Choice(decision=decision, thread=ctx.latest, reopen=True)
        return None
    channel = ctx.inbound.channel
    window = policy.window_for(thread.last_channel, channel)
    last = thread.last_activity or thread.created_at
    gap = ctx.inbound.sent_at - last
    # the gap in whole seconds, worked out once for the sentence and the evidence
    seconds = int(gap.total_seconds())
    params: dict[str, Scalar] = {"on": channel, **_late(gap, seconds)}
    if thread.status is not ThreadStatus.OPEN:
        # Pending (waiting on the customer) or snoozed: the business expects this
        # conversation to go on, however long the customer takes.
        decision = Decision(
            rule="recency",
            code="continuity.recency.expected",
            params=params,
            evidence={
                "thread": thread.id,
                "status": thread.status.value,
                "last_activity": _iso(last),
                "gap_seconds": str(seconds),
            },
        )
        return Choice(decision=decision, thread=thread)
    window_seconds = _window_seconds(window)
    if gap <= window:
        if thread.last_channel != channel:
            params["after"] = thread.last_channel
        decision = Decision(
            rule="recency",
            code="continuity.recency.within_window",
            params=params,
            evidence={
                "thread": thread.id,
                "last_activity": _iso(last),
                "gap_seconds": str(seconds),
                "window_seconds": window_seconds,
            },
        )
        return Choice(decision=decision, thread=thread)
    decision = Decision(
        rule="recency",
        code="continuity.recency.beyond_window",
        params=params,
        evidence={
            "previous": thread.id,
            "last_activity": _iso(last),
            "gap_seconds": str(seconds),
            "window_seconds": window_seconds,
        },
    )
    return Choice(decision=decision, predecessor=thread.id, supersede=thread)


def new_thread(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """The last rule: a new thread."""
    params: dict[str, Scalar] = {"topic": ctx.topic} if ctx.topic else {}
    if ctx.latest is not None:
        evidence = {"previous": ctx.latest.id}
        params.update(_not_reopened(ctx.latest, ctx, policy, {"topic": ctx.topic or ""}))
        return Choice(
            decision=Decision(
                rule="new_thread",
                code="continuity.new_thread.after",
                params=params,
                evidence=evidence,
            ),
            predecessor=ctx.latest.id,
        )
    return Choice(
        decision=Decision(rule="new_thread", code="continuity.new_thread.first", params=params)
    )


def _fmt(delta: timedelta) -> str:
    return _fmt_seconds(int(delta.total_seconds()))


def _fmt_seconds(seconds: int) -> str:
    """:func:`_fmt` of a duration of ``seconds`` whole seconds (``int(total_seconds())``
    of a negated duration is the negated count: the division is exactly rounded)."""
    if seconds < 0:
        return f"-{_fmt_seconds(-seconds)}"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


@lru_cache(maxsize=256)
def _window_seconds(window: timedelta) -> str:
    """A window as evidence (whole seconds); windows are few (a policy's settings), so
    they are worked out once."""
    return str(int(window.total_seconds()))


_ZERO: Final = timedelta(0)


def _active(gap: timedelta) -> str:
    """How long ago a thread was active, seen from a message ``gap`` after it. A negative
    gap is a late arrival: the message was sent before the thread's last activity."""
    seconds = int(gap.total_seconds())
    return _active_of({"gap_seconds": seconds, **_late(gap, seconds)})


def _late(gap: timedelta, seconds: int) -> dict[str, Scalar]:
    """``late`` when the message was sent less than a second before the last activity
    (``seconds == int(gap.total_seconds())`` is 0 then and does not say so)."""
    return {"late": True} if seconds == 0 and gap < _ZERO else {}


def _ago_params(now: datetime, then: datetime | None) -> dict[str, Scalar]:
    """``ago``: whole seconds from ``then`` to ``now`` (absent when ``then`` is unknown)."""
    return {} if then is None else {"ago": int((now - then).total_seconds())}


def _ago(m: Mapping[str, Any]) -> str:
    return _fmt_seconds(int(m["ago"])) if "ago" in m else "?"


def _active_of(m: Mapping[str, Any]) -> str:
    """:func:`_active` of a decision's ``gap_seconds`` (and ``late``) evidence."""
    seconds = int(m["gap_seconds"])
    if seconds >= 0 and not m.get("late"):
        return f"{_fmt_seconds(seconds)} ago"
    return f"{_fmt_seconds(-seconds)} after this message was sent (a late arrival)"


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
    rules: Sequence[ContinuityRule] = (
        explicit_reference,
        thread_reference,
        topic_key,
        recency,
        new_thread,
    )

    def __post_init__(self) -> None:
        zero = timedelta(0)
        if self.window < zero or self.reopen_window < zero:
            raise ValueError("continuity windows must not be negative")
        if any(w < zero for w in self.channel_windows.values()):
            raise ValueError("continuity windows must not be negative")

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
        """Run the rules in order; the first that decides wins (new thread otherwise).

        The choice is then checked against the invariants in the module docstring.
        """
        choice: Choice | None = None
        for rule in self.rules:
            choice = rule(ctx, self)
            if choice is not None:
                break
        if choice is None:
            choice = new_thread(ctx, self) or Choice(
                decision=Decision(rule="new_thread", code="continuity.new_thread.undecided")
            )
        return _keep_invariants(ctx, choice)


def _keep_invariants(ctx: ContinuityContext, choice: Choice) -> Choice:
    live = ctx.live if ctx.live is not None and ctx.live.is_open else None
    if choice.thread is not None:
        thread = choice.thread
        if choice.reopen:
            sibling = ctx.live_by_topic.get(thread.topic_key)
            if sibling is not None and sibling.id != thread.id and sibling.is_open:
                return Choice(
                    decision=_follow(choice.decision, "continuity.kept.sibling", live=sibling.id),
                    thread=sibling,
                )
        return choice
    if live is not None and (choice.supersede is None or choice.supersede.id != live.id):
        return Choice(
            decision=_follow(choice.decision, "continuity.kept.superseded", superseded=live.id),
            predecessor=choice.predecessor or live.id,
            supersede=live,
        )
    return choice


# --------------------------------------------------------------------------- reasons
# How the codes above read. ``m`` is a decision's params laid over its evidence.


def _across(m: Mapping[str, Any]) -> str:
    return f"on {m['on']} after {m['after']}" if "after" in m else f"on {m['on']}"


def _topic_clause(m: Mapping[str, Any], lead: str) -> str:
    topic = m.get("topic")
    return f"{lead}{topic!r}" if topic else ""


_READS: Final[dict[str, Render]] = {
    "continuity.explicit_reference": lambda m: (
        f"the message {'replies to' if m['via'] == 'reply_to' else 'references'} "
        f"{m['reference']!r}, a message of thread {m['thread']}"
    ),
    "continuity.thread_reference": lambda m: (
        f"the {m['in']} carries the reference token {m['token']} of thread {m['thread']}"
    ),
    "continuity.topic_key.open": lambda m: (
        f"the message is about {m['topic']!r}, the topic of open thread {m['thread']}"
    ),
    "continuity.topic_key.latest": lambda m: (
        f"the message is about {m['topic']!r}, the topic of thread {m['thread']}"
    ),
    "continuity.recency.reopens": lambda m: (
        f"thread {m['thread']} was resolved {_ago(m)} ago, within the reopen window, so it reopens"
    ),
    "continuity.recency.expected": lambda m: (
        f"thread {m['thread']} is {m['status']} (the conversation is expected to go on), "
        f"last active {_active_of(m)}; continuing on {m['on']}"
    ),
    "continuity.recency.within_window": lambda m: (
        f"open thread {m['thread']} was last active {_active_of(m)}, within the "
        f"{_fmt_seconds(int(m['window_seconds']))} window; continuing {_across(m)}"
    ),
    "continuity.recency.beyond_window": lambda m: (
        f"open thread {m['previous']} was last active {_active_of(m)}, beyond the "
        f"{_fmt_seconds(int(m['window_seconds']))} window; it is resolved and a new "
        "thread follows it"
    ),
    "continuity.new_thread.after": lambda m: (
        f"no open thread for this customer{_topic_clause(m, ' and topic ')}; "
        f"new thread after {m['previous']}, which was {_why(m)}"
    ),
    "continuity.new_thread.first": lambda m: (
        f"first conversation of this customer{_topic_clause(m, ' about ')}"
    ),
    "continuity.new_thread.undecided": "no rule decided",
    # follow-up clauses (see _continue and _keep_invariants)
    "continuity.then.sibling": lambda m: (
        f"; that thread is {m['was']} and thread {m['live']} is open for the same topic, "
        "so it continues there"
    ),
    "continuity.then.reopens": "; it was resolved and reopens (within the reopen window)",
    "continuity.then.live": lambda m: (
        f", but that thread was {_why(m)}; the customer's open thread {m['live']} continues"
    ),
    "continuity.then.successor": lambda m: (
        f", but that thread was {_why(m)}, so a new thread follows it"
    ),
    "continuity.kept.sibling": lambda m: (
        f"; but thread {m['live']} is open for the same topic, so it continues there "
        "instead of reopening"
    ),
    "continuity.kept.superseded": lambda m: (
        f"; open thread {m['superseded']} for this customer and topic is resolved, "
        "since the new thread replaces it"
    ),
}
for _code, _read in _READS.items():
    _register_builtin(_code, _read)


#: The default rules, in order.
DEFAULT_RULES: Final[tuple[ContinuityRule, ...]] = (
    explicit_reference,
    thread_reference,
    topic_key,
    recency,
    new_thread,
)
