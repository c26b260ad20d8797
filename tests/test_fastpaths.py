"""Fast paths of ingest's pure parts give exactly what the general code gives.

* ``identity.resolve``: the fast path for the common case (every identifier known, one
  owner, linked at or above the presented trust, nothing blocklisted) returns a
  Resolution equal to the full rules' (same decision text and evidence, in the same
  order), and declines every other case;
* ``identity.proven_claims``, ``codec.fingerprint``, ``continuity.recency`` (and its
  duration texts) agree with the code they replaced, kept here as references;
* ``Resolution.merges`` / ``suggestions`` are unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from convthread import codec
from convthread.domain import continuity
from convthread.domain.continuity import Choice, ContinuityContext, ContinuityPolicy, recency
from convthread.domain.events import Decision, ThreadStatus
from convthread.domain.identity import (
    Resolution,
    _resolve_general,
    _resolve_linked,
    proven_claims,
    resolve,
)
from convthread.domain.merge import MergeAction, MergePolicy, MergeVerdict
from convthread.domain.model import (
    Channel,
    Identifier,
    Inbound,
    SenderIdentifier,
    TimeSource,
    Trust,
    ensure_utc,
)
from convthread.domain.thread import CustomerState, ThreadState
from convthread.errors import ValidationError
from convthread.testing import strategies as cts

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- resolve

#: A small pool, so generated messages share identifiers with generated customers.
POOL = (
    Identifier("phone", "+14155550101"),
    Identifier("phone", "+14155550102"),
    Identifier("email", "ann@example.com"),
    Identifier("email", "noreply@shop.example"),  # blocklisted by the default patterns
    Identifier("handle", "ann", "twitter"),
    Identifier("account", "42", "acme"),
    Identifier("phone", "+12000000000"),  # a junk number (repeated_digit_phone)
)
CUSTOMERS = ("cu_1", "cu_2", "cu_3")
POLICIES = (
    MergePolicy(),
    MergePolicy(blocked=frozenset({POOL[0]})),
    MergePolicy(max_per_kind={"phone": 1, "email": 1}, max_verified_accounts=0),
    MergePolicy(blocked_patterns=(), blocked_if=(), min_auto_trust=Trust.VERIFIED),
    MergePolicy(survivor="most_identifiers"),
)
trusts = st.sampled_from(list(Trust))


class World(msgspec.Struct, frozen=True):
    sender: tuple[SenderIdentifier, ...]
    owners: dict[str, str]
    customers: dict[str, CustomerState]
    policy: int
    suggested: frozenset[frozenset[str]]


def _state(cid: str, minutes: int, held: Mapping[str, tuple[Identifier, Trust]]) -> CustomerState:
    return CustomerState(
        id=cid,
        version=minutes + 1,
        created_at=T0 + timedelta(minutes=minutes),
        identifiers=dict(held),
    )


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Any mix: identifiers owned or not, states that hold them at any trust (or not at
    all, or missing), senders with repeats, any policy, suggestions on record."""
    held: dict[str, dict[str, tuple[Identifier, Trust]]] = {c: {} for c in CUSTOMERS}
    owners: dict[str, str] = {}
    for ident in POOL:
        owner = draw(st.none() | st.sampled_from(CUSTOMERS))
        if owner is None:
            continue
        owners[ident.key] = owner
        if draw(st.integers(0, 9)) > 0:  # rarely: an index entry the state lacks
            held[owner][ident.key] = (ident, draw(trusts))
    for cid in CUSTOMERS:  # identifiers the customer holds that no message presents
        if draw(st.booleans()):
            extra = Identifier("device", f"dev-{cid}")
            held[cid][extra.key] = (extra, draw(trusts))
    present = draw(st.lists(st.sampled_from(CUSTOMERS), unique=True))
    customers = {
        c: _state(c, draw(st.integers(0, 100)), held[c])
        for c in CUSTOMERS
        if c in present or draw(st.integers(0, 9)) > 0
    }
    sender = tuple(
        draw(
            st.lists(
                st.builds(
                    SenderIdentifier,
                    st.sampled_from(POOL),
                    trusts,
                    st.sampled_from(("", "otp", "channel")),
                ),
                max_size=4,
            )
        )
    )
    pairs = [frozenset(p) for p in (("cu_1", "cu_2"), ("cu_1", "cu_3"), ("cu_2", "cu_3"))]
    suggested = frozenset(draw(st.lists(st.sampled_from(pairs), unique=True)))
    return World(sender, owners, customers, draw(st.integers(0, len(POLICIES) - 1)), suggested)


@st.composite
def linked_worlds(draw: st.DrawFn) -> World:
    """The common case: every presented identifier belongs to one customer, linked at
    the presented trust or higher; nothing blocklisted (by the policy drawn)."""
    policy = draw(st.integers(0, len(POLICIES) - 1))
    usable = [i for i in POOL if not POLICIES[policy].is_blocked(i)]
    idents = draw(st.lists(st.sampled_from(usable), min_size=1, max_size=3))
    cid = draw(st.sampled_from(CUSTOMERS))
    held: dict[str, tuple[Identifier, Trust]] = {}
    sender: list[SenderIdentifier] = []
    for ident in idents:
        linked = held[ident.key][1] if ident.key in held else draw(trusts)
        held[ident.key] = (ident, linked)
        presented = draw(st.sampled_from([t for t in Trust if t <= linked]))
        sender.append(SenderIdentifier(ident, presented, draw(st.sampled_from(("", "otp")))))
    if draw(st.booleans()):
        other = Identifier("email", "other@example.com")
        held[other.key] = (other, draw(trusts))
    owners = dict.fromkeys(held, cid)
    customers = {cid: _state(cid, 5, held)}
    if draw(st.booleans()):  # another customer, not involved
        customers["cu_9"] = _state("cu_9", 1, {})
    return World(tuple(sender), owners, customers, policy, frozenset())


def _general(w: World) -> Resolution:
    return _resolve_general(w.sender, w.owners, w.customers, POLICIES[w.policy], w.suggested)


def _same(a: Resolution, b: Resolution) -> None:
    assert a == b
    assert vars(a) == vars(b)
    assert list(vars(a)) == list(vars(b))  # the same fields, in the same order
    # encoded bytes keep the evidence's order: it must match too
    assert codec.encode(a.decision) == codec.encode(b.decision)
    assert repr(a) == repr(b)


@SETTINGS
@given(worlds())
def test_resolve_equals_the_general_rules(w: World) -> None:
    got = resolve(w.sender, w.owners, w.customers, POLICIES[w.policy], w.suggested)
    _same(got, _general(w))


@SETTINGS
@given(worlds())
def test_the_fast_path_agrees_whenever_it_applies(w: World) -> None:
    fast = _resolve_linked(w.sender, w.owners, w.customers, POLICIES[w.policy])
    general = _general(w)
    if fast is None:
        # declined: the general rules do something the fast path does not cover
        policy = POLICIES[w.policy]
        covered = (
            bool(w.sender)
            and not any(policy.is_blocked(s.identifier) for s in w.sender)
            and len({w.owners.get(s.identifier.key) for s in w.sender}) == 1
            and None not in {w.owners.get(s.identifier.key) for s in w.sender}
            and all(
                (state := w.customers.get(w.owners[s.identifier.key])) is not None
                and (linked := state.trust_of(s.identifier)) is not None
                and s.trust <= linked
                for s in w.sender
            )
        )
        assert not covered
    else:
        _same(fast, general)


@SETTINGS
@given(linked_worlds())
def test_the_common_case_takes_the_fast_path(w: World) -> None:
    fast = _resolve_linked(w.sender, w.owners, w.customers, POLICIES[w.policy])
    assert fast is not None
    general = _general(w)
    _same(fast, general)
    assert general.decision.rule == "exact_match"
    assert not (general.links or general.upgrades or general.verdicts or general.takeovers)


def _mutations(w: World, data: st.DataObject) -> World:
    """``w`` (a linked world) changed so that the fast path must decline."""
    i = data.draw(st.integers(0, len(w.sender) - 1))
    s = w.sender[i]
    key = s.identifier.key
    cid = w.owners[key]
    how = data.draw(
        st.sampled_from(
            ["blocked", "unknown", "other_owner", "no_state", "not_held", "presented_higher"]
        )
    )
    owners, customers, policy = dict(w.owners), dict(w.customers), w.policy
    sender = list(w.sender)
    if how == "blocked":
        sender[i] = SenderIdentifier(POOL[3], s.trust, s.method)  # noreply@: blocklisted
        owners[POOL[3].key] = cid
        policy = 0
    elif how == "unknown":
        del owners[key]
    elif how == "other_owner":  # two customers: needs another identifier to stay put
        assume(any(o.identifier.key != key for o in w.sender))
        owners[key] = "cu_other"
        customers["cu_other"] = _state("cu_other", 0, {key: (s.identifier, Trust.VERIFIED)})
    elif how == "no_state":
        del customers[cid]
    elif how == "not_held":
        state = customers[cid]
        customers[cid] = _state(cid, 5, {k: v for k, v in state.identifiers.items() if k != key})
    else:
        state = customers[cid]
        linked = state.identifiers[key][1]
        assume(linked is not Trust.VERIFIED)
        higher = Trust.VERIFIED if linked is Trust.ASSERTED else Trust.ASSERTED
        sender[i] = SenderIdentifier(s.identifier, higher, s.method)
    return World(tuple(sender), owners, customers, policy, w.suggested)


@SETTINGS
@given(linked_worlds(), st.data())
def test_the_fast_path_declines_what_it_does_not_cover(w: World, data: st.DataObject) -> None:
    changed = _mutations(w, data)
    policy = POLICIES[changed.policy]
    assert _resolve_linked(changed.sender, changed.owners, changed.customers, policy) is None
    got = resolve(changed.sender, changed.owners, changed.customers, policy, changed.suggested)
    _same(got, _general(changed))


def test_the_fast_path_declines_an_empty_sender_and_odd_trusts() -> None:
    assert _resolve_linked((), {}, {}, MergePolicy()) is None
    ident = POOL[0]
    state = _state("cu_1", 0, {ident.key: (ident, "asserted")})  # type: ignore[dict-item]
    odd = _resolve_linked(
        (SenderIdentifier(ident, Trust.ASSERTED),),
        {ident.key: "cu_1"},
        {"cu_1": state},
        MergePolicy(),
    )
    assert odd is None


# --------------------------------------------------------------------------- proven_claims


def _proven_claims_reference(
    sender: tuple[SenderIdentifier, ...],
    owners: Mapping[str, str],
    customers: Mapping[str, CustomerState],
) -> list[SenderIdentifier]:
    out: list[SenderIdentifier] = []
    for s in sender:
        if s.trust < Trust.ASSERTED:
            continue
        owner = owners.get(s.identifier.key)
        state = customers.get(owner) if owner is not None else None
        if state is not None and state.trust_of(s.identifier) is Trust.CLAIMED:
            out.append(s)
    return out


@SETTINGS
@given(worlds() | linked_worlds())
def test_proven_claims_is_unchanged(w: World) -> None:
    assert proven_claims(w.sender, w.owners, w.customers) == _proven_claims_reference(
        w.sender, w.owners, w.customers
    )


# --------------------------------------------------------------------------- Resolution


@given(
    st.lists(
        st.builds(
            lambda a, s: MergeVerdict(
                action=a, survivor=s, absorbed="x", decision=Decision(rule="r")
            ),
            st.sampled_from(list(MergeAction)),
            st.sampled_from(CUSTOMERS),
        ),
        max_size=3,
    )
)
def test_merges_and_suggestions_are_unchanged(verdicts: list[MergeVerdict]) -> None:
    r = Resolution(decision=Decision(rule="r"), customer_id=None, verdicts=tuple(verdicts))
    assert r.merges == tuple(v for v in verdicts if v.action is MergeAction.MERGE)
    assert r.suggestions == tuple(v for v in verdicts if v.action is MergeAction.SUGGEST)


# --------------------------------------------------------------------------- fingerprint


class _Identifier(msgspec.Struct, frozen=True):
    kind: str
    value: str
    scope: str = ""


class _Sender(msgspec.Struct, frozen=True):
    identifier: _Identifier
    trust: str
    method: str = ""


class _Attachment(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    url: str = ""
    media_id: str = ""
    mime_type: str = ""
    filename: str = ""
    size: int | None = None
    sha256: str = ""
    caption: str = ""


class _Content(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    attachments: tuple[_Attachment, ...] = ()
    metadata: dict[str, Any] = {}


class _StoredLayout(msgspec.Struct, frozen=True, kw_only=True):
    """``Inbound`` as it was when the first fingerprints were stored (before
    ``time_source``, with every struct a map of its field names, whatever the storage
    layout is now): stored digests are the encoding of this layout."""

    channel: str
    provider_message_id: str
    sender: tuple[_Sender, ...]
    content: _Content = _Content()
    sent_at: datetime | None
    recipient: str = ""
    reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    idempotency_key: str | None = None


def _fingerprint_reference(inbound: Inbound) -> str:
    provider_time = inbound.time_source is TimeSource.PROVIDER
    payload = _StoredLayout(
        channel=inbound.channel,
        provider_message_id=inbound.provider_message_id,
        sender=tuple(
            _Sender(_Identifier(**msgspec.structs.asdict(s.identifier)), s.trust.value, s.method)
            for s in inbound.sender
        ),
        content=_Content(
            text=inbound.content.text,
            attachments=tuple(
                _Attachment(**msgspec.structs.asdict(a)) for a in inbound.content.attachments
            ),
            metadata=inbound.content.metadata,
        ),
        sent_at=inbound.sent_at if provider_time else None,
        recipient=inbound.recipient,
        reply_to=inbound.reply_to,
        references=inbound.references,
        subject=inbound.subject,
    )
    data = codec._inbound_fp_encoder.encode(payload)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@SETTINGS
@given(cts.inbounds(), st.none() | st.text(min_size=1, max_size=20))
def test_fingerprint_is_unchanged(inbound: Inbound, key: str | None) -> None:
    inbound = msgspec.structs.replace(inbound, idempotency_key=key)
    assert codec.fingerprint(inbound) == _fingerprint_reference(inbound)
    # the key never counts
    other = msgspec.structs.replace(inbound, idempotency_key=None if key else "k")
    assert codec.fingerprint(other) == codec.fingerprint(inbound)


def test_fingerprint_of_a_known_message_is_stable() -> None:
    """Stored fingerprints must not change: a fixed message has a fixed digest."""
    inbound = Inbound(
        channel="sms",
        provider_message_id="SM1",
        sender=(SenderIdentifier(POOL[0], Trust.ASSERTED),),
        sent_at=T0,
    )
    expected = _fingerprint_reference(inbound)
    assert codec.fingerprint(inbound) == expected
    keyed = msgspec.structs.replace(inbound, idempotency_key="idem-1")
    assert codec.fingerprint(keyed) == expected


# --------------------------------------------------------------------------- recency


def _fmt_reference(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"-{_fmt_reference(-delta)}"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d"


def _active_reference(gap: timedelta) -> str:
    if gap >= timedelta(0):
        return f"{_fmt_reference(gap)} ago"
    return f"{_fmt_reference(-gap)} after this message was sent (a late arrival)"


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _recency_reference(ctx: ContinuityContext, policy: ContinuityPolicy) -> Choice | None:
    """The open-thread part of ``recency`` as it was (the rest is unchanged)."""
    thread = ctx.live
    assert thread is not None
    window = policy.window_for(thread.last_channel, ctx.inbound.channel)
    last = thread.last_activity or thread.created_at
    gap = ctx.inbound.sent_at - last
    if thread.status is not ThreadStatus.OPEN:
        decision = Decision.text(
            "recency",
            (
                f"thread {thread.id} is {thread.status.value} (the conversation is expected "
                f"to go on), last active {_active_reference(gap)}; continuing on "
                f"{ctx.inbound.channel}"
            ),
            evidence={
                "thread": thread.id,
                "status": thread.status.value,
                "last_activity": _iso(last),
                "gap_seconds": str(int(gap.total_seconds())),
            },
        )
        return Choice(decision=decision, thread=thread)
    if gap <= window:
        across = (
            f"on {ctx.inbound.channel} after {thread.last_channel}"
            if thread.last_channel != ctx.inbound.channel
            else f"on {ctx.inbound.channel}"
        )
        decision = Decision.text(
            "recency",
            (
                f"open thread {thread.id} was last active {_active_reference(gap)}, within "
                f"the {_fmt_reference(window)} window; continuing {across}"
            ),
            evidence={
                "thread": thread.id,
                "last_activity": _iso(last),
                "gap_seconds": str(int(gap.total_seconds())),
                "window_seconds": str(int(window.total_seconds())),
            },
        )
        return Choice(decision=decision, thread=thread)
    decision = Decision.text(
        "recency",
        (
            f"open thread {thread.id} was last active {_active_reference(gap)}, beyond the "
            f"{_fmt_reference(window)} window; it is resolved and a new thread follows it"
        ),
        evidence={
            "previous": thread.id,
            "last_activity": _iso(last),
            "gap_seconds": str(int(gap.total_seconds())),
            "window_seconds": str(int(window.total_seconds())),
        },
    )
    return Choice(decision=decision, predecessor=thread.id, supersede=thread)


durations = st.one_of(
    st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=3)),
    st.integers(-200_000, 200_000).map(lambda s: timedelta(seconds=s)),
    st.integers(-(10**7), 10**7).map(lambda us: timedelta(microseconds=us)),
    st.timedeltas(),
)


@SETTINGS
@given(durations)
@example(timedelta(microseconds=-1))
@example(timedelta(seconds=-120))
@example(timedelta(days=-999_999_999))
@example(timedelta.max)
def test_duration_texts_are_unchanged(delta: timedelta) -> None:
    assert continuity._fmt(delta) == _fmt_reference(delta)
    assert continuity._active(delta) == _active_reference(delta)
    assert continuity._window_seconds(delta) == str(int(delta.total_seconds()))


@SETTINGS
@given(
    cts.thread_states(),
    cts.continuity_policies(),
    st.sampled_from(("sms", "whatsapp", "webchat", "voice")),
    durations,
)
def test_recency_is_unchanged(
    state: ThreadState, policy: ContinuityPolicy, channel: str, gap: timedelta
) -> None:
    last = state.last_activity or state.created_at
    try:
        sent_at = last + gap
    except OverflowError:
        assume(False)
        raise
    inbound = Inbound(
        channel=channel,
        provider_message_id="m1",
        sender=(SenderIdentifier(POOL[0], Trust.ASSERTED),),
        sent_at=sent_at,
    )
    ctx = ContinuityContext(inbound=inbound, customer_id=state.customer_id, topic=None, live=state)
    got, want = recency(ctx, policy), _recency_reference(ctx, policy)
    assert got is not None and want is not None
    # the sentence, rule and evidence read as they did; the code renders the sentence
    assert (got.decision.rule, got.decision.reason, got.decision.evidence) == (
        want.decision.rule,
        want.decision.reason,
        want.decision.evidence,
    )
    assert got.decision.code.startswith("continuity.recency.")
    assert b"last active" not in codec.encode(got.decision)
    assert [(k, v) for k, v in vars(got).items() if k != "decision"] == [
        (k, v) for k, v in vars(want).items() if k != "decision"
    ]


# --------------------------------------------------------------------------- model

_CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


def _outcome(fn: Callable[[], object]) -> object:
    try:
        return ("ok", fn())
    except ValidationError as exc:
        return ("error", str(exc))


def _validate_reference(name: object) -> object:
    if not isinstance(name, str) or not _CHANNEL_RE.match(name):
        raise ValidationError(
            f"channel name must be lowercase letters, digits, '_', '.', '-' "
            f"(1-32, starting with a letter), got {name!r}"
        )
    return name


class _Name(str):
    pass


@SETTINGS
@given(
    st.one_of(
        st.sampled_from(["sms", "sms\n", "SMS", "", "a" * 32, "a" * 33, "web.chat-2", "9x"]),
        st.from_regex(r"[a-z][a-z0-9_.-]{0,33}\n?", fullmatch=True),
        st.text(max_size=6),
        st.builds(_Name, st.sampled_from(["sms", "Sms"])),
        st.integers(),
        st.none(),
    )
)
def test_channel_validation_is_unchanged(name: object) -> None:
    for _ in range(2):  # the second time from the cache of valid names
        got = _outcome(lambda: Channel.validate(name))  # type: ignore[arg-type]
        want = _outcome(lambda: _validate_reference(name))
        assert got == want
        if got[0] == "ok":  # type: ignore[index]
            assert got[1] is name  # type: ignore[index]


def _ensure_utc_reference(value: datetime, what: str = "timestamp") -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise ValidationError(
            f"{what} {value.isoformat()} is naive; pass a timezone-aware datetime"
        )
    if offset == timedelta(0) and value.tzinfo is timezone.utc:
        return value
    return value.astimezone(timezone.utc)


class _Moment(datetime):
    def utcoffset(self) -> timedelta:
        return timedelta(hours=1)


@SETTINGS
@given(
    st.one_of(
        st.datetimes(timezones=st.none() | st.timezones() | st.just(timezone.utc)),
        st.just(_Moment(2026, 3, 2, tzinfo=timezone.utc)),
        st.just(T0.date()),
        st.none(),
    )
)
def test_ensure_utc_is_unchanged(value: datetime) -> None:
    got = _outcome(lambda: ensure_utc(value, "sent_at"))
    want = _outcome(lambda: _ensure_utc_reference(value, "sent_at"))
    assert got == want
    if got[0] == "ok":  # type: ignore[index]
        assert got[1] is want[1] or type(got[1]) is type(want[1])  # type: ignore[index]
