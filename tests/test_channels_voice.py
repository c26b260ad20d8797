"""Voice adapter: call events, transcripts, Twilio Voice webhooks, TwiML rendering."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import pytest

from convthread.channels import voice
from convthread.channels.base import Card, Outbound, QuickReply
from convthread.domain.model import Inbound, Trust
from convthread.domain.updates import Unsupported
from convthread.errors import ParseError, SignatureError
from convthread.testing.channel_conformance import ChannelAdapterConformance

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
RINGING = {
    "type": "call.ringing",
    "call_id": "CA1",
    "from": "+14155550100",
    "to": "+18005550199",
    "at": "2026-03-02T09:00:00Z",
}
SEGMENT = {
    "type": "transcript",
    "call_id": "CA1",
    "segment_id": "3",
    "speaker": "caller",
    "text": "my order never arrived",
    "is_final": True,
    "confidence": 0.92,
    "from": "+14155550100",
    "at": "2026-03-02T09:00:41Z",
}
TWILIO_GATHER = {
    "CallSid": "CA1234567890ABCDE",
    "From": "+14155550100",
    "To": "+18005551212",
    "CallStatus": "in-progress",
    "SpeechResult": "I want a refund",
    "Confidence": "0.87",
    "SequenceNumber": "2",
}


def test_call_start_is_an_inbound_contact() -> None:
    (call,) = voice.parse(RINGING)
    assert isinstance(call, Inbound)
    assert call.provider_message_id == "CA1" and call.content.text == ""
    assert call.content.metadata["call"]["event"] == "call.ringing"
    (sender,) = call.sender
    assert (sender.identifier.value, sender.trust) == ("+14155550100", Trust.ASSERTED)


def test_final_caller_transcript_is_a_message_in_the_call() -> None:
    (seg,) = voice.parse(SEGMENT)
    assert isinstance(seg, Inbound)
    assert seg.provider_message_id == "CA1:3"
    assert (seg.reply_to, seg.references) == ("CA1", ("CA1",))
    assert seg.content.text == "my order never arrived"
    assert seg.content.metadata["confidence"] == 0.92


def test_interim_agent_and_lifecycle_events_are_unsupported() -> None:
    events = {
        "events": [
            {**SEGMENT, "is_final": False},
            {**SEGMENT, "speaker": "agent"},
            {**RINGING, "type": "call.completed", "duration": 42},
            {**RINGING, "type": "call.hold_music"},
        ]
    }
    interim, agent, completed, unknown = voice.parse(events)
    assert isinstance(interim, Unsupported) and interim.kind == "transcript.interim"
    assert isinstance(agent, Unsupported) and agent.kind == "transcript.agent"
    assert isinstance(completed, Unsupported) and completed.kind == "call.completed"
    assert completed.raw["duration"] == 42
    assert isinstance(unknown, Unsupported) and "not modelled" in unknown.reason


def test_withheld_caller_id_becomes_the_call_session() -> None:
    (call,) = voice.parse({**RINGING, "from": "anonymous"})
    assert isinstance(call, Inbound)
    (sender,) = call.sender
    assert (sender.identifier.kind, sender.identifier.value) == ("session", "call:CA1")


def test_twilio_voice_webhooks() -> None:
    (said,) = voice.parse(urlencode(TWILIO_GATHER).encode(), received_at=NOW)
    assert isinstance(said, Inbound)
    assert said.provider_message_id == "CA1234567890ABCDE:2"
    assert said.content.text == "I want a refund" and said.sent_at == NOW
    (ringing,) = voice.parse(
        {"CallSid": "CA9", "From": "+14155550100", "CallStatus": "ringing"}, received_at=NOW
    )
    assert isinstance(ringing, Inbound) and ringing.provider_message_id == "CA9"
    (done,) = voice.parse({"CallSid": "CA9", "CallStatus": "completed"}, received_at=NOW)
    assert isinstance(done, Unsupported) and done.kind == "call.completed"


def test_twilio_voice_signature_vector() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    voice.adapter.verify_signature(url, params, "GvWf1cFY/Q7PnoempGyD5oXAezc=", "12345")
    with pytest.raises(SignatureError):
        voice.adapter.verify_signature(url, params, "GvWf1cFY/Q7PnoempGyD5oXAezd=", "12345")


@pytest.mark.parametrize(
    "payload",
    [
        {k: v for k, v in RINGING.items() if k != "call_id"},
        {k: v for k, v in SEGMENT.items() if k != "segment_id"},
        {k: v for k, v in SEGMENT.items() if k != "text"},
        {**SEGMENT, "is_final": "yes"},
        {**RINGING, "at": "noon"},
        {"From": "+14155550100"},
        b"\xff",
        None,
    ],
)
def test_malformed_events_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        voice.parse(payload, received_at=NOW)


def test_render_speaks_options_and_drops_links() -> None:
    r = voice.render(
        Outbound(
            text="How can I help?",
            quick_replies=(QuickReply(title="orders"), QuickReply(title="billing")),
            card=Card(title="Your order", url="https://shop/o/1"),
        )
    )
    assert r.text == "How can I help? Your order Press 1 for orders. Press 2 for billing."
    (twiml,) = r.payloads
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Gather')
    assert "https://" not in twiml
    assert any("dropped" in note for note in r.degraded)
    plain = voice.render(Outbound(text="Fish & chips <now>"))
    assert "<Say>Fish &amp; chips &lt;now&gt;</Say>" in plain.payloads[0]


class TestVoiceConformance(ChannelAdapterConformance):
    adapter = voice.adapter
    samples = [RINGING, SEGMENT, TWILIO_GATHER, {"events": [RINGING, SEGMENT]}]
    parse_options = {"received_at": NOW}
    required_fields = [("type",), ("call_id",)]
