"""Continuation tokens: forged, expired, replayed, guessed, rotated keys; the
redemption links the identifier with evidence "token" and continues the thread.
Service tests run on memory and on SQLite (``store_factory``)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.events import ContinuationRedeemed
from convthread.domain.tokens import (
    ALPHABET,
    KeyRing,
    TokenClaims,
    code_from_bytes,
    format_code,
    normalize_code,
    sign_token,
    verify_token,
)
from convthread.errors import PolicyViolation, TokenError, ValidationError
from convthread.service import _core as core
from convthread.service import _tokens
from tests._thread_util import msg

K1 = b"k1-secret-key-material-32-bytes!!"
K2 = b"k2-secret-key-material-32-bytes!!"
RING = KeyRing({"k1": K1}, current="k1")
CALLER = ct.SenderIdentifier(ct.phone("+14155550177"), ct.Trust.ASSERTED)


@pytest.fixture
def convs(store_factory, clock, ids) -> ct.Conversations:
    return ct.Conversations(store_factory(), clock=clock, ids=ids, token_keys=RING)


def _web_thread(convs: ct.Conversations, clock) -> str:
    inbound = ct.Inbound(
        channel="webchat",
        provider_message_id="w1",
        sender=(ct.SenderIdentifier(ct.session("anon-web-1"), ct.Trust.ASSERTED),),
        content=ct.Content(text="my router is broken"),
        sent_at=clock.now(),
    )
    return convs.ingest(inbound).thread_id


# ----------------------------------------------------------------- pure parts


def test_code_alphabet_and_reading() -> None:
    assert not set("ILOU") & set(ALPHABET) and len(ALPHABET) == 32
    code = code_from_bytes(bytes([0x12, 0x34, 0x56, 0x78, 0x9A]))
    assert len(code) == 9 and set(code) <= set(ALPHABET)
    shown = format_code(code)
    assert shown.count("-") == 2
    assert normalize_code(shown.lower()) == code
    assert normalize_code(" " + shown.replace("-", " ") + " ") == code
    # O reads as 0, I and L as 1
    with_zero = code.replace("0", "O") if "0" in code else code
    assert normalize_code(with_zero) == code


@settings(max_examples=200)
@given(st.binary(min_size=5, max_size=5), st.integers(0, 8), st.sampled_from(ALPHABET))
def test_a_single_typo_is_caught_by_the_check_character(raw: bytes, pos: int, ch: str) -> None:
    code = code_from_bytes(raw)
    typo = code[:pos] + ch + code[pos + 1 :]
    if typo == code:
        return
    with pytest.raises(TokenError):
        normalize_code(typo)


def test_signed_tokens_forged_tampered_expired(clock) -> None:
    now = clock.now()
    claims = TokenClaims("tok_1", "th_1", int((now + timedelta(minutes=5)).timestamp()))
    token = sign_token(RING, claims)
    assert verify_token(RING, token, now) == claims
    prefix, kid, _payload, sig = token.split(".")
    forged_ring = KeyRing({"k1": b"x" * 32}, current="k1")
    with pytest.raises(TokenError, match="signature"):
        verify_token(RING, sign_token(forged_ring, claims), now)
    other = sign_token(RING, TokenClaims("tok_2", "th_9", claims.expires))
    with pytest.raises(TokenError, match="signature"):  # payload swapped in
        verify_token(RING, ".".join([prefix, kid, other.split(".")[2], sig]), now)
    with pytest.raises(TokenError):
        verify_token(RING, token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB"), now)
    with pytest.raises(TokenError, match="expired"):
        verify_token(RING, token, now + timedelta(minutes=5))
    for junk in ["", "ct1", "ct1.k1.x", "ct2.k1.a.b", "ct1.nokey.a.b", "x" * 600]:
        with pytest.raises(TokenError):
            verify_token(RING, junk, now)
    with pytest.raises(ValidationError):
        KeyRing({"k1": b"short"}, current="k1")
    with pytest.raises(ValidationError):
        KeyRing({"k1": K1}, current="k2")


# ----------------------------------------------------------------- service


def test_redeem_by_code_links_the_caller_and_continues_the_thread(convs, clock) -> None:
    tid = _web_thread(convs, clock)
    customer_id = convs.thread_state(tid).customer_id
    token = convs.issue_continuation(tid, ttl=timedelta(minutes=10), by="agent:ann")
    assert token.thread_id == tid and token.expires_at == clock.now() + timedelta(minutes=10)
    # the code is not stored anywhere in clear
    raw = b"".join(it.value for _k, it in convs.store.scan(core.NS_TOKEN))
    assert normalize_code(token.code).encode() not in raw
    clock.advance(minutes=3)
    red = convs.redeem_continuation(token.code.lower(), sender=CALLER, channel="voice")
    assert red.thread_id == tid and red.customer_id == customer_id and red.linked
    assert convs.find_customer(CALLER.identifier) == customer_id
    links = [
        e for _s, e in convs.customer(customer_id).events if isinstance(e, ct.IdentifierLinked)
    ]
    assert links[-1].identifier == CALLER.identifier
    assert links[-1].evidence.method == "token" and links[-1].evidence.channel == "voice"
    events = convs.events(tid)
    assert isinstance(events[-1].event, ContinuationRedeemed)
    snap = convs.snapshot(tid)
    assert [(j.channel, j.via) for j in snap.journey] == [
        ("webchat", "message"),
        ("voice", "token"),
    ]
    # the caller's next message continues the same thread
    call = ct.Inbound(
        channel="voice",
        provider_message_id="call-1",
        sender=(CALLER,),
        content=ct.Content(text="(call transcript) hi, I have the code"),
        sent_at=clock.now(),
    )
    assert convs.ingest(call).thread_id == tid


def test_replayed_and_expired_tokens_are_refused(convs, clock) -> None:
    tid = _web_thread(convs, clock)
    token = convs.issue_continuation(tid)
    convs.redeem_continuation(token.signed, sender=CALLER, channel="voice")
    version = convs.thread_state(tid).version
    for form in (token.signed, token.code):
        with pytest.raises(TokenError, match="already used"):
            convs.redeem_continuation(form, sender=CALLER, channel="voice")
    assert convs.thread_state(tid).version == version
    late = convs.issue_continuation(tid, ttl=timedelta(minutes=1))
    clock.advance(minutes=1)
    with pytest.raises(TokenError, match="expired"):
        convs.redeem_continuation(late.code, sender=CALLER, channel="sms")
    with pytest.raises(TokenError, match="expired"):
        convs.redeem_continuation(late.signed, sender=CALLER, channel="sms")
    with pytest.raises(ValidationError):
        convs.issue_continuation(tid, ttl=timedelta(days=30))


def test_guessing_is_limited_per_sender(convs, clock) -> None:
    tid = _web_thread(convs, clock)
    token = convs.issue_continuation(tid)
    guesser = ct.SenderIdentifier(ct.phone("+14155550111"), ct.Trust.ASSERTED)
    real = normalize_code(token.code)
    guesses = []
    for i in range(40):
        guess = code_from_bytes(i.to_bytes(5, "big"))
        if guess != real:
            guesses.append(guess)
    for guess in guesses[: _tokens.MAX_FAILURES]:
        with pytest.raises(TokenError, match="unknown code"):
            convs.redeem_continuation(guess, sender=guesser, channel="sms")
    # locked out now, even with the right code
    with pytest.raises(TokenError, match="too many"):
        convs.redeem_continuation(token.code, sender=guesser, channel="sms")
    # a mistyped code (bad check character) is not counted as a guess
    typist = ct.SenderIdentifier(ct.phone("+14155550122"), ct.Trust.ASSERTED)
    bad_check = real[:-1] + next(c for c in ALPHABET if c != real[-1])
    for _ in range(_tokens.MAX_FAILURES + 2):
        with pytest.raises(TokenError, match="mistyped"):
            convs.redeem_continuation(bad_check, sender=typist, channel="voice")
    counted = [k for k, _ in convs.store.scan(core.NS_TOKFAIL)]
    assert len(counted) == 1  # the guesser only: the typist's typos were not counted
    assert "+1415" not in counted[0]  # senders are not stored in clear
    # and other senders are not affected by the guesser's lockout
    red = convs.redeem_continuation(token.code, sender=CALLER, channel="voice")
    assert red.thread_id == tid
    # the window passes
    clock.advance(_tokens.FAILURE_WINDOW + timedelta(seconds=1))
    with pytest.raises(TokenError, match="unknown code"):
        convs.redeem_continuation(guesses[-1], sender=guesser, channel="sms")


def test_keys_rotate_without_breaking_live_tokens(store_factory, clock, ids) -> None:
    store = store_factory()
    old = ct.Conversations(store, clock=clock, ids=ids, token_keys=RING)
    tid = _web_thread(old, clock)
    t1 = old.issue_continuation(tid)
    t2 = old.issue_continuation(tid)
    t3 = old.issue_continuation(tid)
    rotated = KeyRing({"k1": K1, "k2": K2}, current="k2")
    new = ct.Conversations(store, clock=clock, ids=ids, token_keys=rotated)
    t4 = new.issue_continuation(tid)
    assert t4.signed.split(".")[1] == "k2"
    new.redeem_continuation(t1.signed, sender=CALLER, channel="voice")  # old key, signed
    new.redeem_continuation(t2.code, sender=CALLER, channel="voice")  # old key, code
    new.redeem_continuation(t4.code, sender=CALLER, channel="voice")  # new key
    retired = ct.Conversations(
        store, clock=clock, ids=ids, token_keys=KeyRing({"k2": K2}, current="k2")
    )
    with pytest.raises(TokenError):
        retired.redeem_continuation(t3.signed, sender=CALLER, channel="voice")
    with pytest.raises(TokenError):
        retired.redeem_continuation(t3.code, sender=CALLER, channel="voice")


def test_a_token_does_not_merge_customers(convs, clock) -> None:
    tid = _web_thread(convs, clock)
    other = convs.ingest(msg("o1", customer=7)).customer_id  # +14155550007 is someone else
    token = convs.issue_continuation(tid)
    them = ct.SenderIdentifier(ct.phone("+14155550007"), ct.Trust.ASSERTED)
    with pytest.raises(PolicyViolation):
        convs.redeem_continuation(token.code, sender=them, channel="voice")
    assert convs.find_customer(them.identifier) == other
    # nothing was consumed: the rightful caller can still use it
    assert convs.redeem_continuation(token.code, sender=CALLER, channel="voice").linked


def test_no_keys_no_tokens(store_factory, clock, ids) -> None:
    convs = ct.Conversations(store_factory(), clock=clock, ids=ids)
    tid = _web_thread(convs, clock)
    with pytest.raises(TokenError, match="no token keys"):
        convs.issue_continuation(tid)


def test_concurrent_redemptions_one_wins(store_factory, clock, ids) -> None:
    a = ct.Conversations(store_factory(), clock=clock, ids=ids, token_keys=RING)
    b = ct.Conversations(store_factory(), clock=clock, ids=ids, token_keys=RING)
    tid = _web_thread(a, clock)
    token = a.issue_continuation(tid)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def go(conv: ct.Conversations, who: ct.SenderIdentifier) -> None:
        barrier.wait()
        try:
            results.append(conv.redeem_continuation(token.code, sender=who, channel="voice"))
        except TokenError as exc:
            results.append(exc)

    callers = [CALLER, ct.SenderIdentifier(ct.phone("+14155550178"), ct.Trust.ASSERTED)]
    threads = [
        threading.Thread(target=go, args=(c, w)) for c, w in zip((a, b), callers, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, TokenError) for r in results) == 1, results
    redeemed = [e for e in a.events(tid) if isinstance(e.event, ContinuationRedeemed)]
    assert len(redeemed) == 1
