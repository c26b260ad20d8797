"""Continuation tokens as store-call generators (the only place that draws randomness
for them: :mod:`secrets`).

Issue: a token record (NS_TOKEN), the code's keyed HMAC pointing at it (NS_TOKCODE) and a
``continuation_issued`` event on the thread. Redeem: verify (signature, or code lookup
under every key of the ring), refuse expired or used tokens, link the presenting
identifier to the thread's customer (``identifier_linked`` with evidence method
``"token"``; NS_IDENT written with an ABSENT expectation), append
``continuation_redeemed`` to the thread and mark the token used (compare-and-set on its
version: of two concurrent redemptions, one wins). Unknown codes count against the
presenter: after ``MAX_FAILURES`` within ``FAILURE_WINDOW`` every code from that
presenter is refused until the window ends.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta, timezone
from typing import Final

import msgspec

from convthread import codec
from convthread.domain.events import (
    ContinuationIssued,
    ContinuationRedeemed,
    Evidence,
    IdentifierLinked,
    ThreadStatus,
)
from convthread.domain.model import Party, SenderIdentifier
from convthread.domain.thread import evolve, evolve_customer
from convthread.domain.tokens import (
    KeyRing,
    TokenClaims,
    code_from_bytes,
    code_lookup_key,
    format_code,
    normalize_code,
    sign_token,
    verify_token,
)
from convthread.errors import (
    ErasedError,
    InvalidTransition,
    PolicyViolation,
    TokenError,
    ValidationError,
)
from convthread.ports import ABSENT
from convthread.service import _core as core
from convthread.service._core import (
    NS_CUSTOMER,
    NS_IDENT,
    NS_TOKCODE,
    NS_TOKEN,
    NS_TOKFAIL,
    Config,
    IdentRef,
    Op,
)
from convthread.service._results import ContinuationToken, Redemption
from convthread.service._snapshots import Writes

__all__ = ["FAILURE_WINDOW", "MAX_FAILURES", "issue", "redeem"]

#: Unknown codes one presenter may try within FAILURE_WINDOW.
MAX_FAILURES: Final = 5
FAILURE_WINDOW: Final = timedelta(minutes=15)
MAX_TTL: Final = timedelta(days=7)


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    thread_id: str
    customer_id: str
    issued_at: datetime
    expires_at: datetime
    kid: str
    code_mac: str
    used_at: datetime | None = None
    used_channel: str = ""


class TokenFailures(msgspec.Struct, frozen=True, array_like=True):
    count: int
    since: datetime


_record: Final = codec.decoder(TokenRecord)
_failures: Final = codec.decoder(TokenFailures)


def _ring(config: Config) -> KeyRing:
    if config.token_keys is None:
        raise TokenError(
            "no token keys configured: pass token_keys=KeyRing({...}, current=...) to Conversations"
        )
    return config.token_keys


def issue(
    config: Config, thread_id: str, ttl: timedelta, by: Party | None
) -> Op[ContinuationToken]:
    ring = _ring(config)
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise ValidationError("a continuation token lives between 1 second and 7 days")
    state, item_version = yield from core.load_thread(thread_id)
    if state.status is ThreadStatus.CLOSED:
        raise InvalidTransition(f"thread {thread_id!r} is closed; it cannot be continued")
    now = config.clock.now()
    expires = int((now + ttl).timestamp())
    expires_at = datetime.fromtimestamp(expires, tz=timezone.utc)
    token_id = config.ids.new_id("tok")
    code = code_from_bytes(secrets.token_bytes(5))
    lookup = code_lookup_key(ring, ring.current, code)
    record = TokenRecord(
        thread_id=thread_id,
        customer_id=state.customer_id,
        issued_at=now,
        expires_at=expires_at,
        kid=ring.current,
        code_mac=lookup,
    )
    event = ContinuationIssued(at=now, token_id=token_id, expires_at=expires_at, by=by)
    new = evolve(state, state.version + 1, event)
    writes = Writes()
    writes.append(thread_id, state.version, [event])
    writes.thread(state, new, item_version)
    writes.put(NS_TOKEN, token_id, record, ABSENT)
    writes.put(NS_TOKCODE, lookup, token_id.encode(), ABSENT)  # a code collision retries
    yield from core.commit(writes.batch())
    return ContinuationToken(
        token_id=token_id,
        thread_id=thread_id,
        code=format_code(code),
        signed=sign_token(ring, TokenClaims(token_id, thread_id, expires)),
        expires_at=expires_at,
    )


def _fail(
    presenter: str, failures: TokenFailures | None, version: int | None, now: datetime, why: str
) -> Op[None]:
    """Record a failed code for ``presenter`` and raise TokenError (the record commits)."""
    if failures is None or now - failures.since > FAILURE_WINDOW:
        new = TokenFailures(1, now)
    else:
        new = TokenFailures(failures.count + 1, failures.since)
    writes = Writes()
    writes.put(NS_TOKFAIL, presenter, new, ABSENT if version is None else version)
    yield from core.commit(writes.batch())
    raise TokenError(why)


def _token_id_of_code(ring: KeyRing, text: str, presenter: str, now: datetime) -> Op[str]:
    code = normalize_code(text)  # a mistyped code does not count as a guess
    item = yield from core.get(NS_TOKFAIL, presenter)
    failures = _failures(item.value) if item is not None else None
    if failures is not None and now - failures.since > FAILURE_WINDOW:
        pass  # the window is over: start afresh on the next failure
    elif failures is not None and failures.count >= MAX_FAILURES:
        raise TokenError(
            f"too many wrong codes from this sender; try again after "
            f"{(failures.since + FAILURE_WINDOW).isoformat()}"
        )
    keys = [code_lookup_key(ring, kid, code) for kid in ring.ids]
    found = yield from core.get_many(NS_TOKCODE, keys)
    for key in keys:
        entry = found.get(key)
        if entry is not None:
            return entry.value.decode()
    yield from _fail(
        presenter, failures, None if item is None else item.version, now, "unknown code"
    )
    raise AssertionError("unreachable")  # pragma: no cover


def redeem(config: Config, token: str, sender: SenderIdentifier, channel: str) -> Op[Redemption]:
    ring = _ring(config)
    if not isinstance(sender, SenderIdentifier):
        raise ValidationError("redeem needs the SenderIdentifier the customer arrived with")
    ident = config.identifiers.renormalize(sender.identifier)
    # failures are counted per sender, under a keyed hash: no identifier in the index
    presenter = (
        ring.current + ":" + ring.mac(ring.current, b"sender:" + ident.key.encode()).hex()[:32]
    )
    now = config.clock.now()
    if not isinstance(token, str):
        raise TokenError("a token is a string")
    if token.strip().startswith("ct1."):
        claims = verify_token(ring, token, now)
        token_id = claims.token_id
        via_code = False
    else:
        token_id = yield from _token_id_of_code(ring, token, presenter, now)
        via_code = True
    item = yield from core.get(NS_TOKEN, token_id)
    if item is None:
        raise TokenError("unknown token")
    record = _record(item.value)
    if via_code:
        code = normalize_code(token)
        if not hmac.compare_digest(record.code_mac, code_lookup_key(ring, record.kid, code)):
            raise TokenError("unknown code")
    if record.used_at is not None:
        raise TokenError("this token was already used")
    if now >= record.expires_at:
        raise TokenError("this token has expired")

    state, item_version = yield from core.load_thread(record.thread_id)
    if state.status is ThreadStatus.CLOSED:
        raise TokenError(f"thread {record.thread_id!r} is closed")
    customer_id = state.customer_id  # a merge may have moved the thread since issue
    customer, customer_version = yield from core.load_customer(customer_id)
    if customer.erased:
        raise ErasedError(f"customer {customer_id!r} was erased")
    owner_item = yield from core.get(NS_IDENT, ident.key)
    writes = Writes()
    linked = False
    if owner_item is not None:
        owner = core.decode_identref(owner_item.value).customer_id
        if owner != customer_id:
            raise PolicyViolation(
                f"{ident} belongs to another customer; a token does not merge customers"
            )
    else:
        link = IdentifierLinked(
            at=now,
            identifier=ident,
            trust=sender.trust,
            evidence=Evidence(
                channel=channel,
                method="token",
                by=f"token:{token_id}",
                at=now,
                detail=f"continuation token for thread {record.thread_id}",
            ),
        )
        new_customer = evolve_customer(customer, customer_id, customer.version + 1, link)
        writes.append(customer_id, customer.version, [link])
        writes.put(NS_CUSTOMER, customer_id, new_customer, customer_version)
        writes.put(NS_IDENT, ident.key, IdentRef(customer_id), ABSENT)
        linked = True
    event = ContinuationRedeemed(
        at=now,
        token_id=token_id,
        channel=channel,
        identifier_kind=ident.kind,
        customer_id=customer_id,
        linked=linked,
    )
    new = evolve(state, state.version + 1, event)
    writes.append(state.id, state.version, [event])
    writes.thread(state, new, item_version)
    used = msgspec.structs.replace(record, used_at=now, used_channel=channel)
    writes.put(NS_TOKEN, token_id, used, item.version)
    yield from core.commit(writes.batch())
    return Redemption(
        token_id=token_id,
        thread_id=state.id,
        customer_id=customer_id,
        linked=linked,
        seq=new.version,
    )
