"""SMS adapter: Twilio webhooks, status callbacks, the signature vector, exact segments."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import pytest

from convthread.channels import sms
from convthread.channels.base import Button, Card, ListItem, OptionList, Outbound, QuickReply
from convthread.channels.sms import SmsAdapter, compute_signature, verify_signature
from convthread.domain.model import DeliveryStatus, Inbound, Trust
from convthread.domain.segments import count_segments
from convthread.domain.updates import StatusReport, Unsupported
from convthread.errors import ParseError, SignatureError
from convthread.testing.channel_conformance import ChannelAdapterConformance

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
INBOUND = {
    "ToCountry": "US",
    "ToState": "CA",
    "SmsMessageSid": "SM5b6f2a3c0d",
    "NumMedia": "1",
    "ToCity": "",
    "FromZip": "94105",
    "SmsSid": "SM5b6f2a3c0d",
    "FromState": "CA",
    "SmsStatus": "received",
    "FromCity": "SAN FRANCISCO",
    "Body": "Order 8812 never arrived",
    "FromCountry": "US",
    "To": "+18005550199",
    "ToZip": "",
    "NumSegments": "1",
    "MessageSid": "SM5b6f2a3c0d",
    "AccountSid": "AC00000000000000000000000000000000",
    "From": "+14155550100",
    "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/SM5/Media/ME1",
    "MediaContentType0": "image/jpeg",
    "ApiVersion": "2010-04-01",
}
STATUS = {
    "MessageSid": "SM9",
    "MessageStatus": "undelivered",
    "To": "+14155550100",
    "From": "+18005550199",
    "ErrorCode": "30003",
    "AccountSid": "AC0",
}

# Twilio's documented worked example (twilio.com/docs/usage/security): auth token 12345.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_TOKEN = "12345"


def _doc_params(caller: str) -> dict[str, str]:
    return {
        "CallSid": "CA1234567890ABCDE",
        "Caller": caller,
        "Digits": "1234",
        "From": caller,
        "To": "+18005551212",
    }


@pytest.mark.parametrize(
    ("caller", "signature"),
    [
        # The current documentation's numbers.
        ("+14158675310", "GvWf1cFY/Q7PnoempGyD5oXAezc="),
        # The earlier documentation's numbers.
        ("+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
    ],
)
def test_twilio_signature_known_answer_vectors(caller: str, signature: str) -> None:
    params = _doc_params(caller)
    assert compute_signature(DOC_URL, params, DOC_TOKEN) == signature
    verify_signature(DOC_URL, params, signature, DOC_TOKEN)
    verify_signature(DOC_URL, urlencode(params).encode(), signature, DOC_TOKEN)
    sms.adapter.verify_signature(DOC_URL, params, signature, DOC_TOKEN)


@pytest.mark.parametrize(
    ("url", "params", "signature", "token"),
    [
        (
            DOC_URL,
            {**_doc_params("+14158675310"), "Digits": "9"},
            "GvWf1cFY/Q7PnoempGyD5oXAezc=",
            DOC_TOKEN,
        ),
        (
            DOC_URL.replace("https", "http"),
            _doc_params("+14158675310"),
            "GvWf1cFY/Q7PnoempGyD5oXAezc=",
            DOC_TOKEN,
        ),
        (DOC_URL, _doc_params("+14158675310"), "GvWf1cFY/Q7PnoempGyD5oXAezc=", "54321"),
        (DOC_URL, _doc_params("+14158675310"), "", DOC_TOKEN),
        (DOC_URL, _doc_params("+14158675310"), None, DOC_TOKEN),
        (DOC_URL, _doc_params("+14158675310"), "GvWf1cFY/Q7PnoempGyD5oXAezc=", ""),
    ],
)
def test_bad_signatures_are_refused(url: str, params: Any, signature: Any, token: str) -> None:
    with pytest.raises(SignatureError):
        verify_signature(url, params, signature, token)


def test_inbound_message() -> None:
    (msg,) = sms.parse(INBOUND, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert msg.provider_message_id == "SM5b6f2a3c0d"
    assert msg.content.text == "Order 8812 never arrived"
    assert msg.recipient == "+18005550199"
    assert msg.sent_at == NOW
    (sender,) = msg.sender
    assert (sender.identifier.kind, sender.identifier.value) == ("phone", "+14155550100")
    assert sender.trust is Trust.ASSERTED
    (att,) = msg.content.attachments
    assert (att.kind, att.mime_type) == ("image", "image/jpeg")
    assert sms.parse(urlencode(INBOUND).encode(), received_at=NOW) == [msg]
    assert sms.parse(urlencode(INBOUND), received_at=NOW) == [msg]


def test_short_code_sender_is_an_sms_handle() -> None:
    (msg,) = sms.parse({**INBOUND, "From": "ACMEBANK"}, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert (msg.sender[0].identifier.kind, msg.sender[0].identifier.scope) == ("handle", "sms")


def test_status_callbacks() -> None:
    (st,) = sms.parse(STATUS, received_at=NOW)
    assert isinstance(st, StatusReport)
    assert (st.status, st.error, st.provider_message_id) == (DeliveryStatus.FAILED, "30003", "SM9")
    (delivered,) = sms.parse({**STATUS, "MessageStatus": "delivered"}, received_at=NOW)
    assert isinstance(delivered, StatusReport) and delivered.status is DeliveryStatus.DELIVERED
    (queued,) = sms.parse({**STATUS, "MessageStatus": "queued"}, received_at=NOW)
    assert isinstance(queued, Unsupported) and queued.kind == "status:queued"


@pytest.mark.parametrize(
    "payload",
    [
        {k: v for k, v in INBOUND.items() if k not in ("MessageSid", "SmsSid", "SmsMessageSid")},
        {k: v for k, v in INBOUND.items() if k != "From"},
        {**INBOUND, "NumMedia": "2"},
        {**INBOUND, "NumMedia": "x"},
        {**INBOUND, "From": "has space"},
        b"Body=%ZZ&From=1",
        b"\xff\xfe",
        42,
        None,
    ],
)
def test_malformed_webhooks_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        sms.parse(payload, received_at=NOW)


def test_rendering_counts_segments_exactly() -> None:
    gsm = sms.render(Outbound(to="+14155550100", text="a" * 160))
    assert gsm.text == "a" * 160
    assert (gsm.segments.encoding, gsm.segments.segments, gsm.segments.units) == ("gsm7", 1, 160)
    two = sms.render(Outbound(to="+1", text="a" * 161))
    assert (two.segments.segments, two.segments.units) == (2, 161)
    # An extension character costs two septets: 80 braces are 160 septets, one segment.
    assert sms.render(Outbound(to="+1", text="{" * 80)).segments.segments == 1
    assert sms.render(Outbound(to="+1", text="{" * 81)).segments.segments == 2
    # One non-GSM character makes the whole text UCS-2: 70 per segment, then 67.
    ucs = sms.render(Outbound(to="+1", text="ж" * 70))
    assert (ucs.segments.encoding, ucs.segments.segments) == ("ucs2", 1)
    assert sms.render(Outbound(to="+1", text="ж" * 71)).segments.segments == 2
    # An emoji is two UTF-16 code units.
    assert sms.render(Outbound(to="+1", text="😀" * 35)).segments.units == 70


def test_long_text_is_cut_to_the_segment_budget_keeping_options() -> None:
    one = SmsAdapter(max_segments=1)
    r = one.render(
        Outbound(
            to="+1",
            text="word " * 100,
            quick_replies=(QuickReply(title="Yes"), QuickReply(title="No")),
        )
    )
    assert count_segments(r.text).segments == 1 == r.segments.segments
    assert r.segments.encoding == "gsm7"  # the ASCII ellipsis keeps GSM-7
    assert r.text.endswith("...\n\n1. Yes\n2. No")
    assert any("cut" in note for note in r.degraded)
    three = sms.render(Outbound(to="+1", text="ж" * 500))
    assert three.segments.segments == 3 and three.text.endswith("…")
    assert three.segments.units == 3 * 67


def test_rich_content_degrades_to_numbered_text_and_links() -> None:
    r = sms.render(
        Outbound(
            to="+1",
            text="Your parcel",
            card=Card(
                title="Parcel 8812",
                text="Out for delivery",
                url="https://t.example/8812",
                buttons=(
                    Button(title="Reschedule"),
                    Button(title="Map", url="https://t.example/m"),
                ),
            ),
            options=OptionList(items=(ListItem(title="Leave with neighbour"),)),
        )
    )
    assert "https://t.example/8812" in r.text and "Map: https://t.example/m" in r.text
    assert "1. Reschedule" in r.text and "2. Leave with neighbour" in r.text
    assert r.payloads[0]["Body"] == r.text


class TestSmsConformance(ChannelAdapterConformance):
    adapter = sms.adapter
    samples = [INBOUND, STATUS, urlencode(INBOUND).encode()]
    parse_options = {"received_at": NOW}
    required_fields = [("MessageSid",), ("From",)]
    # MessageSid has two fallbacks (SmsMessageSid, SmsSid): the sample has neither.
    required_sample = {k: v for k, v in INBOUND.items() if k not in ("SmsMessageSid", "SmsSid")}
    outbound_to = "+14155550101"
    outbound_sender = "+18005550199"

    def echo(self, payload: Any) -> Any:
        return {
            "MessageSid": "SMecho",
            "From": payload["To"],
            "To": payload["From"],
            "Body": payload["Body"],
            "NumMedia": "0",
        }


class TestSmsOneSegmentConformance(TestSmsConformance):
    adapter = SmsAdapter(max_segments=1)
