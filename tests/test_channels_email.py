"""E-mail adapter: raw RFC 5322 (CPython's corpus too), Postmark JSON, threading, trust."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from convthread.channels import email
from convthread.channels.base import Outbound, QuickReply
from convthread.channels.email import EmailAdapter, message_ids, strip_quoted
from convthread.domain.model import Inbound, Trust
from convthread.domain.updates import Unsupported
from convthread.errors import ParseError
from convthread.testing.channel_conformance import ChannelAdapterConformance
from tests.conftest import cpython_email_corpus

CORPUS = Path(__file__).parent / "corpora" / "email"
CPYTHON = cpython_email_corpus()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
POSTMARK = json.loads((CORPUS / "postmark-inbound-test-payload.json").read_text())


def _mime(**headers: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    body = headers.pop("body", "Hello")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


@pytest.mark.skipif(
    not CPYTHON.is_dir(), reason="this Python has no test suite (Lib/test/test_email/data)"
)
def test_cpython_email_corpus_parses_without_unhandled_exceptions() -> None:
    files = sorted(CPYTHON.glob("msg_*.txt"))
    assert len(files) >= 48
    inbound = unsupported = errors = 0
    for path in files:
        try:
            results = email.parse(path.read_bytes(), received_at=NOW)
        except ParseError:
            errors += 1
            continue
        (result,) = results
        if isinstance(result, Inbound):
            inbound += 1
            assert result.sender[0].trust is Trust.CLAIMED
        else:
            assert isinstance(result, Unsupported) and result.kind == "no-sender", path
            unsupported += 1
    # 39 messages have a sender; the 9 without a From/Sender are kept as Unsupported;
    # none is so broken that it cannot be parsed at all.
    assert (inbound, unsupported, errors) == (39, len(files) - 39, 0)


def test_sample_email_from_anymail() -> None:
    (msg,) = email.parse((CORPUS / "sample_email.txt").read_bytes(), received_at=NOW)
    assert isinstance(msg, Inbound)
    assert msg.provider_message_id == "20130503182626.18666.16540@example.com"
    assert msg.subject == "Test email"
    assert msg.content.text == "Hi Bob, This is a message. Thanks!"
    assert msg.sender[0].identifier.value == "someone@example.com"
    assert msg.sender[0].trust is Trust.CLAIMED
    assert msg.sent_at == datetime(2013, 5, 3, 18, 26, 27, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "name", ["postmark-inbound-test-payload.json", "postmark-inbound-test-payload-with-raw.json"]
)
def test_postmark_payloads_parse(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    (msg,) = email.parse(raw, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert msg.sender[0].identifier.value == "support@postmarkapp.com"
    assert msg.sender[0].trust is Trust.CLAIMED
    assert msg.subject == "Test subject"
    assert msg.content.text == "This is a test text body."
    assert msg.recipient == "mailbox+SampleHash@inbound.postmarkapp.com"
    (att,) = msg.content.attachments
    assert (att.filename, att.mime_type, att.size) == ("test.txt", "text/plain", 45)
    assert email.parse(json.loads(raw), received_at=NOW) == [msg]


def test_threading_through_references_and_in_reply_to() -> None:
    raw = (
        b"From: Ann <ann@example.com>\r\nTo: help@acme.example\r\n"
        b"Subject: Re: Order 8812\r\nMessage-ID: <c3@mail.example.com>\r\n"
        b"In-Reply-To: <b2@acme.example>\r\n"
        b"References: <a1@acme.example>\r\n <b2@acme.example>\r\n"
        b"Date: Mon, 02 Mar 2026 09:00:00 +0100\r\n\r\nWhere is it?\r\n"
    )
    (msg,) = email.parse(raw)
    assert isinstance(msg, Inbound)
    assert msg.provider_message_id == "c3@mail.example.com"
    assert msg.reply_to == "b2@acme.example"
    assert msg.references == ("a1@acme.example", "b2@acme.example")
    assert msg.sent_at == datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def test_rendered_reply_threads_back() -> None:
    first = email.render(
        Outbound(
            to="ann@example.com",
            sender="help@acme.example",
            text="We are on it.",
            subject="Re: Order 8812",
            message_id="m2@acme.example",
            reply_to="m1@mail.example.com",
            thread_ref="m0@mail.example.com",
        )
    )
    (raw,) = first.payloads
    assert b"In-Reply-To: <m1@mail.example.com>" in raw
    assert b"References: <m0@mail.example.com> <m1@mail.example.com>" in raw
    (msg,) = email.parse(raw, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert msg.provider_message_id == "m2@acme.example"
    assert msg.references == ("m0@mail.example.com", "m1@mail.example.com")


def test_postmark_headers_carry_threading() -> None:
    payload = dict(
        POSTMARK,
        Headers=[
            {"Name": "Message-ID", "Value": "<x9@mail.example.com>"},
            {"Name": "In-Reply-To", "Value": "<x8@acme.example>"},
            {"Name": "References", "Value": "<x7@acme.example> <x8@acme.example>"},
        ],
    )
    (msg,) = email.parse(payload, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert msg.provider_message_id == "x9@mail.example.com"
    assert (msg.reply_to, msg.references) == (
        "x8@acme.example",
        ("x7@acme.example", "x8@acme.example"),
    )


def test_sender_is_asserted_only_on_a_trusted_passing_verdict() -> None:
    trusting = EmailAdapter(trusted_authserv_ids=["mx.acme.example"])
    passing = "mx.acme.example; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com"
    raw = _mime(From="ann@mail.example.com", To="help@acme.example", Authentication_Results=passing)
    (msg,) = trusting.parse(raw, received_at=NOW)
    assert isinstance(msg, Inbound)
    assert (msg.sender[0].trust, msg.sender[0].method) == (Trust.ASSERTED, "dkim")
    # The default adapter trusts no authentication service: claimed.
    (claimed,) = email.parse(raw, received_at=NOW)
    assert isinstance(claimed, Inbound) and claimed.sender[0].trust is Trust.CLAIMED
    # A header written by someone else (forged authserv-id) does not count.
    forged = _mime(
        From="ann@example.com",
        To="h@acme.example",
        Authentication_Results="evil.example; dmarc=pass header.from=example.com",
    )
    (f,) = trusting.parse(forged, received_at=NOW)
    assert isinstance(f, Inbound) and f.sender[0].trust is Trust.CLAIMED
    # SPF alone, and DKIM for an unaligned domain, do not count.
    for verdict in (
        "mx.acme.example; spf=pass smtp.mailfrom=example.com",
        "mx.acme.example; dkim=pass header.d=other.example",
        "mx.acme.example; dmarc=fail header.from=example.com",
    ):
        (m,) = trusting.parse(
            _mime(From="ann@example.com", To="h@acme.example", Authentication_Results=verdict),
            received_at=NOW,
        )
        assert isinstance(m, Inbound) and m.sender[0].trust is Trust.CLAIMED, verdict
    # Postmark: the verdict comes in Headers.
    payload = dict(
        POSTMARK,
        Headers=[
            {
                "Name": "Authentication-Results",
                "Value": "mx.acme.example; dmarc=pass header.from=postmarkapp.com",
            }
        ],
    )
    (p,) = trusting.parse(payload, received_at=NOW)
    assert isinstance(p, Inbound) and (p.sender[0].trust, p.sender[0].method) == (
        Trust.ASSERTED,
        "dmarc",
    )


def test_quoted_replies_and_signatures_are_stripped() -> None:
    assert (
        strip_quoted(
            "Thanks, that works.\n\nOn Mon, 2 Mar 2026 at 09:00, Acme <h@acme"
            ".example> wrote:\n> Did it work?\n> -- \n> Acme"
        )
        == "Thanks, that works."
    )
    assert (
        strip_quoted(
            "Yes please.\n\nOn Mon, 2 Mar 2026, Acme Support\n<h@acme.example> wrote:\n> old"
        )
        == "Yes please."
    )
    assert strip_quoted("Answer one\n> q1\nAnswer two\n> q2") == "Answer one\nAnswer two"
    assert strip_quoted("Hi\n-- \nAnn Example\nCEO") == "Hi"
    assert strip_quoted("See below\n\n-----Original Message-----\nFrom: x") == "See below"
    assert (
        strip_quoted("Ok\n\nFrom: Acme <h@acme.example>\nSent: Monday\nTo: Ann\nSubject: Re\n\nold")
        == "Ok"
    )
    assert strip_quoted("From: here I start\nwith my text") == "From: here I start\nwith my text"
    # Stripping that would leave nothing keeps the text.
    (msg,) = email.parse(_mime(From="a@example.com", body="> only a quote\n"), received_at=NOW)
    assert isinstance(msg, Inbound) and msg.content.text == "> only a quote"


def test_html_only_body_becomes_text() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg.set_content(
        "<html><head><style>p{}</style></head><body><p>Hello &amp; bye</p>"
        "<script>x()</script></body></html>",
        subtype="html",
    )
    (m,) = email.parse(msg.as_bytes(), received_at=NOW)
    assert isinstance(m, Inbound) and m.content.text == "Hello & bye"


def test_message_without_message_id_gets_a_stable_content_id() -> None:
    raw = _mime(From="a@example.com", body="hi")
    (one,) = email.parse(raw, received_at=NOW)
    (two,) = email.parse(raw, received_at=NOW)
    assert one.provider_message_id == two.provider_message_id
    assert one.provider_message_id.startswith("sha256:")


def test_message_ids_helper() -> None:
    assert message_ids("<a@b> <c@d>") == ("a@b", "c@d")
    assert message_ids("bare@id") == ("bare@id",)
    assert message_ids("") == ()


@pytest.mark.parametrize("payload", [b"", b"   ", b"{", b'{"From": 1}', [], 3, None])
def test_malformed_payloads_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        email.parse(payload, received_at=NOW)


def test_render_degrades_options_to_numbered_text() -> None:
    r = email.render(
        Outbound(
            to="a@example.com",
            sender="h@acme.example",
            text="Choose:",
            quick_replies=(QuickReply(title="Refund"), QuickReply(title="Replace")),
        )
    )
    assert r.text == "Choose:\n\n1. Refund\n2. Replace"


class TestEmailConformance(ChannelAdapterConformance):
    adapter = email.adapter
    samples = [
        (CORPUS / "sample_email.txt").read_bytes(),
        (CORPUS / "postmark-inbound-test-payload.json").read_bytes(),
        (CORPUS / "postmark-inbound-test-payload-with-raw.json").read_bytes(),
        *(p.read_bytes() for p in sorted(CPYTHON.glob("msg_*.txt"))[:12]),
    ]
    parse_options = {"received_at": NOW}
    outbound_to = "ann@example.com"
    outbound_sender = "help@acme.example"

    def echo(self, payload: Any) -> Any:
        return payload  # the MIME bytes are what the recipient's server receives
