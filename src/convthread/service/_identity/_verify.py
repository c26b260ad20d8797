"""Verification by one-time code: :func:`start_verification` and
:func:`confirm_verification`.

The code comes from :mod:`secrets` and is never stored: the record keeps a salted HMAC,
compared in constant time. A wrong code uses up an attempt; an expired or used-up
verification is deleted. A right code verifies (or links as verified) the identifier; if
the requesting session belongs to another customer, the identifier is taken over from a
mere claimant, or the merge policy decides between merge and suggestion.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

import msgspec

from convthread.domain.events import (
    CustomerEvent,
    Decision,
    Evidence,
    IdentifierLinked,
    IdentifierVerified,
    MergeSuggested,
)
from convthread.domain.merge import MergeAction
from convthread.domain.model import Identifier, Trust
from convthread.domain.reasons import nest
from convthread.domain.thread import evolve_customer
from convthread.errors import NotFound, PolicyViolation, ValidationError, VerificationError
from convthread.ports import ABSENT
from convthread.service import _core as core
from convthread.service._core import (
    NS_IDENT,
    NS_SUGGEST,
    NS_SUGGEST_PAIR,
    NS_VERIFY,
    Config,
    IdentRef,
    Op,
)
from convthread.service._core import Writes as _Writes
from convthread.service._identity._links import _take_over
from convthread.service._identity._merge import merge
from convthread.service._identity._records import (
    SuggestionRef,
    VerificationRecord,
    _load_live,
    _owner,
    _pair_key,
    _taken_detail,
    _verification,
)
from convthread.service._identity._results import (
    MergeResult,
    VerificationResult,
    VerificationStarted,
)


def _digest(salt: bytes, code: str) -> bytes:
    return hmac.new(salt, code.encode("ascii"), hashlib.sha256).digest()


def start_verification(
    config: Config,
    identifier: Identifier,
    *,
    customer_id: str | None = None,
    session_trust: Trust = Trust.CLAIMED,
    channel: str = "",
    by: str = "",
    ttl: timedelta = timedelta(minutes=10),
    attempts: int = 5,
    digits: int = 6,
) -> Op[VerificationStarted]:
    """Start verifying ``identifier``: a one-time code (from :mod:`secrets`) that
    expires after ``ttl`` and allows ``attempts`` tries. Only its HMAC is stored.

    ``customer_id`` is the customer the requesting session belongs to (tied to it at
    ``session_trust``); when the identifier is not linked yet it is linked to that
    customer on confirmation, and when it belongs to another customer the merge policy
    decides about the two on confirmation.
    """
    if not 4 <= digits <= 10:
        raise ValidationError("a one-time code has 4 to 10 digits")
    if attempts < 1 or ttl <= timedelta(0):
        raise ValidationError("a verification needs at least one attempt and a positive ttl")
    ident = config.identifiers.renormalize(identifier)
    if config.merge_policy.is_blocked(ident):
        raise PolicyViolation(f"{ident} is blocklisted; it cannot be verified for a customer")
    owner, _item = yield from _owner(ident)
    if owner is None and customer_id is None:
        raise ValidationError(f"{ident} is not linked; pass the customer_id it is for")
    if customer_id is not None:
        yield from _load_live(customer_id)
    now = config.clock.now()
    code = f"{secrets.randbelow(10**digits):0{digits}d}"
    salt = secrets.token_bytes(16)
    vid = config.ids.new_id("vf")
    record = VerificationRecord(
        identifier=ident,
        customer_id=customer_id,
        salt=salt,
        digest=_digest(salt, code),
        expires_at=now + ttl,
        attempts_left=attempts,
        session_trust=session_trust,
        channel=channel,
        by=by,
    )
    w = _Writes()
    w.put(NS_VERIFY, vid, record, ABSENT)
    yield from core.commit(w.batch())
    return VerificationStarted(
        verification_id=vid,
        code=code,
        identifier=ident,
        customer_id=customer_id,
        expires_at=record.expires_at,
        attempts=attempts,
    )


def confirm_verification(
    config: Config, verification_id: str, code: str, *, by: str = ""
) -> Op[VerificationResult]:
    """Check ``code``. Wrong: one attempt is used up (VerificationError). Right: the
    identifier becomes verified (IdentifierVerified, or a verified link), the code is
    spent, and if the session's customer differs from the identifier's owner the merge
    policy decides: merge, or record a suggestion."""
    item = yield from core.get(NS_VERIFY, verification_id)
    if item is None:
        raise NotFound("verification", verification_id)
    record = _verification(item.value)
    now = config.clock.now()
    w = _Writes()
    if now >= record.expires_at:
        w.delete(NS_VERIFY, verification_id, item.version)
        yield from core.commit(w.batch())
        raise VerificationError(f"verification {verification_id!r} expired")
    presented = code.strip() if isinstance(code, str) else ""
    if not (
        presented.isascii() and hmac.compare_digest(_digest(record.salt, presented), record.digest)
    ):
        left = record.attempts_left - 1
        if left <= 0:
            w.delete(NS_VERIFY, verification_id, item.version)
        else:
            w.put(
                NS_VERIFY,
                verification_id,
                msgspec.structs.replace(record, attempts_left=left),
                item.version,
            )
        yield from core.commit(w.batch())
        if left <= 0:
            raise VerificationError(f"wrong code; verification {verification_id!r} is used up")
        raise VerificationError(f"wrong code; {left} attempt(s) left")
    w.delete(NS_VERIFY, verification_id, item.version)
    ident = record.identifier
    policy = config.merge_policy
    owner, ident_item = yield from _owner(ident)
    target = owner or record.customer_id
    assert target is not None
    state, version = yield from _load_live(target)
    previous = state.trust_of(ident)
    evidence = Evidence(
        channel=record.channel,
        method="otp",
        by=by or record.by,
        at=now,
        detail=f"one-time code {verification_id}",
    )
    requester = record.customer_id
    if (
        previous is Trust.CLAIMED
        and requester is not None
        and requester != target
        and record.session_trust >= Trust.ASSERTED
        and ident_item is not None
    ):
        # A claim never captures a holder: the session that proved the code (tied to
        # its customer at asserted or better) takes the identifier over from the
        # customer who only claimed it, instead of verifying the claim.
        holder, holder_version = yield from _load_live(requester)
        taken = yield from _take_over(
            config,
            holder,
            holder_version,
            state,
            version,
            ident_item,
            ident,
            Trust.VERIFIED,
            msgspec.structs.replace(evidence, detail=_taken_detail(evidence.detail, target)),
            w,
        )
        suggested = next(
            (e.suggestion_id for e in reversed(taken[1]) if isinstance(e, MergeSuggested)),
            None,
        )
        return VerificationResult(
            identifier=ident,
            customer_id=requester,
            previous=None,
            decision=Decision(
                rule="verified",
                code="identity.verified.taken_over",
                params={
                    "identifier": str(ident),
                    "customer": requester,
                    **({"suggested": True} if suggested else {}),
                },
                evidence={"verification": verification_id, "taken_over_from": target},
            ),
            suggestion_id=suggested,
        )
    if previous is not Trust.VERIFIED:
        why = policy.link_refusal(state.identifiers, ident, Trust.VERIFIED)
        if why is not None:
            raise PolicyViolation(why)
    events: list[CustomerEvent] = []
    if previous is None:
        events.append(
            IdentifierLinked(at=now, identifier=ident, trust=Trust.VERIFIED, evidence=evidence)
        )
        w.put(NS_IDENT, ident.key, IdentRef(target), ABSENT)
    elif previous is not Trust.VERIFIED:
        events.append(
            IdentifierVerified(at=now, identifier=ident, previous=previous, evidence=evidence)
        )
    decision = Decision(
        rule="verified",
        code="identity.verified",
        params={"identifier": str(ident), "customer": target},
        evidence={"verification": verification_id},
    )
    verdict = None
    if requester is not None and requester != target:
        other_state, _over = yield from _load_live(requester)
        new_target = state
        for i, ev in enumerate(events, start=state.version + 1):
            new_target = evolve_customer(new_target, target, i, ev)
        verdict = policy.evaluate(
            new_target,
            other_state,
            trust_a=Trust.VERIFIED,
            trust_b=record.session_trust,
            via=(ident,),
        )
        decision = decision.followed_by(
            "identity.then.session",
            {"requester": requester, **nest("v", verdict.decision)},
            merge=verdict.action.value,
        )
    suggestion_id: str | None = None
    if verdict is not None and verdict.action is MergeAction.SUGGEST and requester is not None:
        pair = _pair_key(target, requester)
        exists = yield from core.get(NS_SUGGEST_PAIR, pair)
        if exists is None:
            suggestion_id = config.ids.new_id("ms")
            events.append(
                MergeSuggested(
                    at=now,
                    suggestion_id=suggestion_id,
                    other=requester,
                    identifier=ident,
                    decision=verdict.decision,
                )
            )
            ref = SuggestionRef(
                customer_id=target,
                other=requester,
                identifier=ident,
                decision=verdict.decision,
                at=now,
            )
            w.put(NS_SUGGEST, suggestion_id, ref, ABSENT)
            w.put(NS_SUGGEST_PAIR, pair, suggestion_id.encode(), ABSENT)
    if events:
        w.customer(target, state, version, events)
    yield from core.commit(w.batch())
    merged: MergeResult | None = None
    if verdict is not None and verdict.action is MergeAction.MERGE and requester is not None:
        merged = yield from merge(
            config, target, requester, by="policy:verification", decision=verdict.decision
        )
    return VerificationResult(
        identifier=ident,
        customer_id=merged.survivor if merged is not None else target,
        previous=previous,
        decision=decision,
        merge=merged,
        suggestion_id=suggestion_id,
    )
