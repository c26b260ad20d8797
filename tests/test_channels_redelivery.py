"""Redeliveries of provider payloads: the fingerprint covers what the provider sent, not
when it arrived; adapters take the receive time from the caller's clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convthread import Conversations, ManualClock, codec
from convthread.channels import email, sms, social, voice, webchat, whatsapp
from convthread.channels.base import Outbound
from convthread.domain.events import MessageReceived
from convthread.domain.identifiers import email as email_identifier
from convthread.domain.identifiers import phone
from convthread.domain.model import (
    Attachment,
    Content,
    Inbound,
    SenderIdentifier,
    TimeSource,
    Trust,
)
from convthread.errors import IdempotencyError, ParseError, SignatureError, ValidationError
from convthread.testing.strategies import ProviderPayload, provider_payloads

T1 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
T2 = T1 + timedelta(minutes=7, seconds=3)

SMS_FORM = (
    b"MessageSid=SM5a1b2c3d4e5f60718293a4b5c6d7e8f9&AccountSid=AC00&From=%2B14155550100"
    b"&To=%2B18005550199&Body=Where+is+my+order%3F&NumMedia=0"
)
VOICE_RINGING = {"CallSid": "CA77", "From": "+14155550100", "To": "+18005550199",
                 "CallStatus": "ringing"}  # fmt: skip
VOICE_SPEECH = {**VOICE_RINGING, "CallStatus": "in-progress", "SpeechResult": "my parcel"}
VOICE_EVENT = b'{"type": "call.ringing", "call_id": "CA9", "from": "+14155550100"}'
VOICE_TRANSCRIPT = {"type": "transcript", "call_id": "CA9", "segment_id": "2",
                    "speaker": "caller", "text": "order 8812", "from": "+14155550100"}  # fmt: skip
WEBCHAT_EVENT = {"type": "message", "id": "m-1", "session_id": "s-9", "text": "hi"}
RAW_EMAIL = (
    b"From: Ann <ann@example.com>\r\nTo: help@acme.example\r\nSubject: Order 8812\r\n"
    b"Message-ID: <c3@mail.example.com>\r\n\r\nStill nothing.\r\n"
)
RAW_EMAIL_NO_ID = b"From: ann@example.com\r\nTo: help@acme.example\r\n\r\nHello?\r\n"
POSTMARK = json.dumps(
    {"From": "ann@example.com", "MessageID": "pm-1", "TextBody": "Hello", "Headers": []}
).encode()
WHATSAPP = json.dumps(
    {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "messages": [{
            "from": "16505551234", "id": "wamid.A1", "timestamp": "1772442000",
            "type": "text", "text": {"body": "hi"}}]}}]}]}
).encode()  # fmt: skip
TWEET = {"data": {"id": "1720", "text": "@Acme late", "author_id": "2244",
                  "created_at": "2026-03-02T09:00:00.000Z"}}  # fmt: skip

#: (name, adapter, payload, whether the payload carries the provider's time)
PAYLOADS: list[tuple[str, Any, Any, bool]] = [
    ("sms", sms, SMS_FORM, False),
    ("voice-twilio-ringing", voice, VOICE_RINGING, False),
    ("voice-twilio-speech", voice, VOICE_SPEECH, False),
    ("voice-event-without-at", voice, VOICE_EVENT, False),
    ("voice-transcript-without-at", voice, VOICE_TRANSCRIPT, False),
    ("webchat-without-sent_at", webchat, WEBCHAT_EVENT, False),
    ("email-without-date", email, RAW_EMAIL, False),
    ("email-without-date-or-message-id", email, RAW_EMAIL_NO_ID, False),
    ("postmark-without-date", email, POSTMARK, False),
    ("whatsapp", whatsapp, WHATSAPP, True),
    ("tweet", social, TWEET, True),
]


@pytest.mark.parametrize(
    ("adapter", "payload", "provider_time"),
    [pytest.param(a, p, t, id=name) for name, a, p, t in PAYLOADS],
)
def test_a_payload_received_twice_at_different_times_is_stored_once(
    adapter: Any, payload: Any, provider_time: bool
) -> None:
    clock = ManualClock(T1)
    convs = Conversations("memory://", clock=clock)
    (first,) = adapter.parse(payload, received_at=T1)
    clock.set(T2)
    (again,) = adapter.parse(payload, clock=clock)
    assert isinstance(first, Inbound) and isinstance(again, Inbound)
    expected = TimeSource.PROVIDER if provider_time else TimeSource.RECEIVED
    assert first.time_source is again.time_source is expected
    stored = convs.ingest(first)
    retried = convs.ingest(again)
    assert not stored.duplicate and retried.duplicate
    assert (retried.thread_id, retried.seq) == (stored.thread_id, stored.seq)
    assert retried.event.sent_at == first.sent_at  # the first delivery's time stands
    assert (
        len([e for e in convs.events(stored.thread_id) if isinstance(e.event, MessageReceived)])
        == 1
    )


def test_a_different_payload_under_the_same_id_is_still_refused() -> None:
    convs = Conversations("memory://", clock=ManualClock(T1))
    (first,) = sms.parse(SMS_FORM, received_at=T1)
    (other,) = sms.parse(SMS_FORM.replace(b"Where", b"When"), received_at=T2)
    convs.ingest(first)
    with pytest.raises(IdempotencyError):
        convs.ingest(other)


# ------------------------------------------------------------------- stable fingerprints


def _full_inbound(**changes: Any) -> Inbound:
    inbound = Inbound(
        channel="whatsapp",
        provider_message_id="wamid.HBgL",
        sender=(SenderIdentifier(phone("+14155550100"), Trust.ASSERTED, "channel"),),
        content=Content(
            text="Where is my order?",
            attachments=(Attachment(kind="image", media_id="m1", mime_type="image/jpeg"),),
            metadata={"reply": {"id": "y", "title": "Yes"}},
        ),
        sent_at=datetime(2026, 3, 2, 9, 0, 5, tzinfo=timezone.utc),
        recipient="+15550001",
        reply_to="wamid.prev",
        references=("a", "b"),
    )
    return msgspec.structs.replace(inbound, **changes)


def test_fingerprints_of_payloads_with_a_provider_time_are_unchanged() -> None:
    # digests written by earlier versions: stores that hold them keep deduplicating
    assert codec.fingerprint(_full_inbound()) == "2610ffd287e5ecb02a3b503a644386f9"
    assert codec.fingerprint(_full_inbound(idempotency_key="k1")) == (
        "2610ffd287e5ecb02a3b503a644386f9"
    )
    minimal = Inbound(
        channel="email",
        provider_message_id="abc@example.com",
        sender=(SenderIdentifier(email_identifier("ann@example.com")),),
        sent_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        subject="Re: refund",
    )
    assert codec.fingerprint(minimal) == "1cb48dd33dd2d3b23b1ef923740fbded"


def test_a_receive_time_is_left_out_of_the_fingerprint_and_a_provider_time_is_not() -> None:
    later = _full_inbound().sent_at + timedelta(hours=1)
    received = _full_inbound(time_source=TimeSource.RECEIVED)
    assert codec.fingerprint(received) == codec.fingerprint(
        msgspec.structs.replace(received, sent_at=later)
    )
    assert codec.fingerprint(received) != codec.fingerprint(_full_inbound())
    assert codec.fingerprint(_full_inbound()) != codec.fingerprint(_full_inbound(sent_at=later))


def test_a_payload_first_stored_with_its_receive_time_fingerprinted_still_dedupes() -> None:
    # what earlier versions stored: the receive time as a provider time, in the digest
    convs = Conversations("memory://", clock=ManualClock(T1))
    (now,) = sms.parse(SMS_FORM, received_at=T1)
    stored = convs.ingest(msgspec.structs.replace(now, time_source=TimeSource.PROVIDER))
    (retry,) = sms.parse(SMS_FORM, received_at=T2)
    result = convs.ingest(retry)
    assert result.duplicate and result.seq == stored.seq


def test_time_source_is_validated() -> None:
    assert _full_inbound(time_source="received").time_source is TimeSource.RECEIVED
    with pytest.raises(ValidationError, match="time_source"):
        _full_inbound(time_source="wall")


# ------------------------------------------------------------------- the clock


@pytest.mark.parametrize(
    ("adapter", "payload"),
    [pytest.param(a, p, id=name) for name, a, p, t in PAYLOADS if not t],
)
def test_adapters_stamp_the_clocks_time_not_the_wall_clocks(adapter: Any, payload: Any) -> None:
    clock = ManualClock(datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    (inbound,) = adapter.parse(payload, clock=clock)
    assert inbound.sent_at == clock.now()
    (explicit,) = adapter.parse(payload, clock=clock, received_at=T2)
    assert explicit.sent_at == T2  # an explicit received_at wins


def test_a_clock_without_now_is_refused() -> None:
    with pytest.raises(ValidationError, match="clock"):
        sms.parse(SMS_FORM, clock=object())


# ------------------------------------------------------------------- the property


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(
        provider_payloads(), min_size=1, max_size=5, unique_by=lambda p: (p.adapter, p.message_id)
    ),
    data=st.data(),
)
def test_any_payload_delivered_k_times_interleaved_is_stored_once(
    payloads: list[ProviderPayload], data: st.DataObject
) -> None:
    deliveries = [
        p for p in payloads for _ in range(data.draw(st.integers(1, 3), label="deliveries"))
    ]
    order = data.draw(st.permutations(deliveries), label="order")
    clock = ManualClock(T1)
    convs = Conversations("memory://", clock=clock)
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    for payload in order:
        clock.advance(seconds=data.draw(st.integers(1, 86_400), label="gap"))
        (inbound,) = payload.parse(clock=clock)
        result = convs.ingest(inbound)
        key = (inbound.channel, inbound.provider_message_id)
        if key in seen:
            assert result.duplicate, f"delivery of {key} stored again"
            assert (result.thread_id, result.seq) == seen[key]
        else:
            assert not result.duplicate
            seen[key] = (result.thread_id, result.seq)
    assert len(seen) == len(payloads)


# ------------------------------------------------------------------- webhook handshakes

# X's published example secret and crc_token (its CRC samples in Python, Node and PHP);
# the expected values were computed independently with `openssl dgst -sha256 -hmac`.
X_SECRET = "z3ZX4v7mAAUGykl3EcmkqbartmuW8VFOOzCloLx9Q45P0hLrFu"
X_CRC_TOKEN = "9b4507b3-9040-4669-9ca3-6b94edb50553"
X_BODY = b'{"for_user_id":"2244994945","tweet_create_events":[]}'
X_BODY_SIGNATURE = "sha256=CpOc2dZ+JrkFhzkAW3gWETdo1w8Mx1i/MpqTbkrylcw="


def test_x_crc_response_matches_the_reference_computation() -> None:
    assert social.crc_response(X_CRC_TOKEN, X_SECRET) == {
        "response_token": "sha256=Cytd4Sq+NvEcV3MMrXxWJGJx5A+y/lXzzU2Maartkx8="
    }
    assert social.crc_response(X_CRC_TOKEN, X_SECRET.encode()) == social.crc_response(
        X_CRC_TOKEN, X_SECRET
    )
    for token, secret in (("", X_SECRET), (X_CRC_TOKEN, "")):
        with pytest.raises(SignatureError):
            social.crc_response(token, secret)


def test_x_webhook_signature_is_checked() -> None:
    social.verify_signature(X_BODY, X_BODY_SIGNATURE, X_SECRET)
    social.adapter.verify_signature(X_BODY, X_BODY_SIGNATURE, X_SECRET.encode())
    bad = [
        (X_BODY + b" ", X_BODY_SIGNATURE, X_SECRET),
        (X_BODY, X_BODY_SIGNATURE, X_SECRET + "x"),
        (X_BODY, None, X_SECRET),
        (X_BODY, X_BODY_SIGNATURE.removeprefix("sha256="), X_SECRET),
        (X_BODY, "sha1=" + X_BODY_SIGNATURE.removeprefix("sha256="), X_SECRET),
        (X_BODY, X_BODY_SIGNATURE, ""),
        (X_BODY.decode(), X_BODY_SIGNATURE, X_SECRET),
    ]
    for body, signature, secret in bad:
        with pytest.raises(SignatureError):
            social.verify_signature(body, signature, secret)  # type: ignore[arg-type]


def test_whatsapp_subscription_handshake() -> None:
    # Meta's documented sample verification request
    query = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meatyhamhock"
    assert whatsapp.verify_subscription(query, "meatyhamhock") == "1158201444"
    assert whatsapp.verify_subscription(query.encode(), "meatyhamhock") == "1158201444"
    params = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": "t"}
    assert whatsapp.verify_subscription(params, "t") == "42"
    php = {"hub_mode": "subscribe", "hub_challenge": "42", "hub_verify_token": "t"}
    assert whatsapp.verify_subscription(php, "t") == "42"
    with pytest.raises(SignatureError):
        whatsapp.verify_subscription(query, "another-token")
    with pytest.raises(SignatureError):
        whatsapp.verify_subscription(query, "")
    for broken in (
        {**params, "hub.mode": "unsubscribe"},
        {k: v for k, v in params.items() if k != "hub.mode"},
        {k: v for k, v in params.items() if k != "hub.challenge"},
    ):
        with pytest.raises(ParseError) as info:
            whatsapp.verify_subscription(broken, "t")
        assert not isinstance(info.value, SignatureError)


# ------------------------------------------------------------------- rendering


@pytest.mark.parametrize("reply_to", [":", "a b", "x\r\ny", "<>", "ünï"])
def test_email_render_refuses_ids_a_header_cannot_carry(reply_to: str) -> None:
    message = Outbound(to="ann@example.com", sender="help@acme.example", text="hi")
    if reply_to == ":":
        rendered = email.render(msgspec.structs.replace(message, reply_to=reply_to))
        assert b"In-Reply-To: <:>" in rendered.payloads[0]
        return
    with pytest.raises(ValidationError, match="reply_to"):
        email.render(msgspec.structs.replace(message, reply_to=reply_to))


def test_email_render_folds_a_subject_with_line_breaks() -> None:
    rendered = email.render(
        Outbound(to="ann@example.com", sender="help@acme.example", text="hi", subject="Re: a\r\nb")
    )
    assert b"Subject: Re: a b\r\n" in rendered.payloads[0]


def test_whatsapp_render_refuses_an_empty_message() -> None:
    with pytest.raises(ValidationError, match="nothing to send"):
        whatsapp.render(Outbound(to="16505551234"))
