"""WhatsApp Cloud API adapter: every corpus case parses to a typed result."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from convthread.channels import whatsapp
from convthread.channels.base import Button, Card, ListItem, OptionList, Outbound, QuickReply
from convthread.domain.model import Attachment, DeliveryStatus, Inbound, Trust
from convthread.domain.updates import (
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import ParseError, SignatureError
from convthread.testing.channel_conformance import ChannelAdapterConformance

CORPUS = Path(__file__).parent / "corpora" / "whatsapp"


def _load(name: str) -> dict[str, Any]:
    data = json.loads((CORPUS / name).read_text())
    return {"_": data} if "object" in data else data


MESSAGES = _load("message.json")
STATUSES = _load("message_status.json")
ALL_CASES = [
    (f"{file}:{case}", envelope)
    for file in (
        "message.json",
        "message_status.json",
        "edited_message.json",
        "deleted_message.json",
    )
    for case, envelope in _load(file).items()
]


def test_the_corpus_has_every_case() -> None:
    assert len(MESSAGES) == 23
    assert len(ALL_CASES) == 23 + 7 + 1 + 1


@pytest.mark.parametrize(("case", "envelope"), ALL_CASES, ids=[c for c, _ in ALL_CASES])
def test_every_corpus_case_parses_to_a_typed_result(case: str, envelope: dict[str, Any]) -> None:
    from_bytes = whatsapp.parse(json.dumps(envelope).encode())
    assert from_bytes, case
    assert whatsapp.parse(envelope) == from_bytes  # a decoded dict parses the same


def _one(case: str) -> Any:
    results = whatsapp.parse(MESSAGES[case])
    assert len(results) == 1
    return results[0]


def test_text_message_sender_recipient_and_time() -> None:
    msg = _one("text")
    assert isinstance(msg, Inbound)
    assert msg.content.text == "Body Text"
    assert msg.provider_message_id == "wamid.xyzxyz"
    assert msg.recipient == "972123456789"
    assert msg.sent_at == datetime.fromtimestamp(1697043223, tz=timezone.utc)
    kinds = {(s.identifier.kind, s.identifier.scope): s for s in msg.sender}
    # 972987654321 is not an assigned Israeli range: no phone, but the wa_id handle stays.
    assert ("phone", "") not in kinds
    assert kinds[("handle", "whatsapp")].identifier.value == "972987654321"
    assert kinds[("handle", "whatsapp-user")].identifier.value == "US.13491208655302741918"
    assert all(s.trust is Trust.ASSERTED for s in msg.sender)


def test_a_valid_wa_id_is_also_an_asserted_phone() -> None:
    envelope = json.loads(json.dumps(MESSAGES["text"]))
    envelope["entry"][0]["changes"][0]["value"]["messages"][0]["from"] = "16505551234"
    msg = whatsapp.parse(envelope)[0]
    assert isinstance(msg, Inbound)
    phones = [s for s in msg.sender if s.identifier.kind == "phone"]
    assert [p.identifier.value for p in phones] == ["+16505551234"]
    assert phones[0].trust is Trust.ASSERTED


def test_reply_context_becomes_reply_to() -> None:
    msg = _one("reply")
    assert isinstance(msg, Inbound)
    assert msg.reply_to == "wamid.xyzxyz=="
    assert msg.content.text == "replied text"


def test_media_become_attachment_metadata() -> None:
    doc = _one("document")
    assert isinstance(doc, Inbound)
    (att,) = doc.content.attachments
    assert (att.kind, att.filename, att.mime_type, att.media_id) == (
        "document",
        "filename.pdf",
        "application/pdf",
        "1234567890987654321",
    )
    assert doc.content.text == "caption"
    assert doc.content.metadata["forwarded"] is True
    voice = _one("voice")
    assert isinstance(voice, Inbound) and voice.content.metadata["voice"] is True
    url = _one("media_with_url")
    assert isinstance(url, Inbound) and url.content.attachments[0].url.startswith("https://")


def test_location_contacts_and_referral_keep_their_details() -> None:
    loc = _one("chosen_location")
    assert isinstance(loc, Inbound)
    assert loc.content.metadata["location"]["name"] == "Facebook HQ"
    assert loc.content.attachments[0].kind == "location"
    contacts = _one("contacts")
    assert isinstance(contacts, Inbound) and len(contacts.content.metadata["contacts"]) == 3
    referral = _one("referral")
    assert isinstance(referral, Inbound)
    assert referral.content.metadata["referral"]["ctwa_clid"] == "CTWA_CLID"


def test_reactions() -> None:
    r = _one("reaction")
    assert isinstance(r, ReactionReport)
    assert (r.provider_message_id, r.emoji, r.reaction_id) == (
        "wamid.yzxyzx=",
        "😮",
        "wamid.xyzxyz",
    )
    for case in ("unreaction_empty", "unreaction_no_emoji"):
        removed = _one(case)
        assert isinstance(removed, ReactionReport) and removed.emoji == ""


def test_unmodelled_types_are_unsupported_with_whatsapps_reason() -> None:
    for case, kind in (
        ("unsupported", "unsupported"),
        ("unsupported_with_type", "unsupported:pool"),
        ("order", "order"),
    ):
        u = _one(case)
        assert isinstance(u, Unsupported), case
        assert u.kind == kind
        assert u.provider_message_id == "wamid.xyzxyz"
    assert "131051" in _one("unsupported").reason


def test_interactive_without_body_and_webhook_errors() -> None:
    results = whatsapp.parse(MESSAGES["interactive_message_with_err"])
    assert [type(r) for r in results] == [Unsupported, Unsupported]
    assert results[0].kind == "interactive"
    assert results[1].kind == "error"
    assert "131000" in results[1].reason and "Unsupported webhook payload" in results[1].reason


def test_statuses_map_and_unknown_ones_are_unsupported() -> None:
    got = {case: whatsapp.parse(env)[0] for case, env in STATUSES.items()}
    assert isinstance(got["sent"], StatusReport) and got["sent"].status is DeliveryStatus.SENT
    assert isinstance(got["delivered"], StatusReport)
    assert got["delivered"].status is DeliveryStatus.DELIVERED
    assert isinstance(got["played"], StatusReport) and got["played"].status is DeliveryStatus.READ
    failed = got["failed"]
    assert isinstance(failed, StatusReport) and failed.status is DeliveryStatus.FAILED
    assert "130472" in failed.error
    deleted = json.loads(json.dumps(STATUSES["read"]))
    deleted["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    (u,) = whatsapp.parse(deleted)
    assert isinstance(u, Unsupported) and u.kind == "status:deleted"


def test_edit_and_delete() -> None:
    (edit,) = whatsapp.parse(_load("edited_message.json")["image"])
    assert isinstance(edit, EditReport)
    assert edit.provider_message_id.startswith("wamid.HBgLMTQxMjU1NTA4Mjk")
    assert edit.content.text == "Updated image caption"
    (deletion,) = whatsapp.parse(_load("deleted_message.json")["revoke"])
    assert isinstance(deletion, DeletionReport)
    assert deletion.provider_message_id == "<ORIGINAL_WHATSAPP_MESSAGE_ID>"
    assert deletion.sender == ()  # the placeholder sender is no identifier


def test_x_hub_signature_256() -> None:
    body = (CORPUS / "message.json").read_bytes()
    secret = b"app-secret"
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    whatsapp.verify_signature(body, good, secret)
    whatsapp.adapter.verify_signature(body, good.upper().replace("SHA256=", "sha256="), secret)
    for bad in (None, "", good[:-1] + "0", "sha1=" + good[7:], good[7:]):
        with pytest.raises(SignatureError):
            whatsapp.verify_signature(body, bad, secret)
    with pytest.raises(SignatureError):
        whatsapp.verify_signature(body + b" ", good, secret)
    with pytest.raises(SignatureError):
        whatsapp.verify_signature(body, good, b"other-secret")


def test_other_webhook_fields_are_unsupported() -> None:
    env = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}],
            }
        ],
    }
    (u,) = whatsapp.parse(env)
    assert isinstance(u, Unsupported) and u.kind == "account_update"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{}",
        b'{"object": "page"}',
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": []}',
        b"\xff",
        "[1, 2]",
        42,
    ],
)
def test_malformed_webhooks_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        whatsapp.parse(payload)


def test_message_with_an_unusable_sender_is_a_parse_error() -> None:
    env = json.loads(json.dumps(MESSAGES["text"]))
    env["entry"][0]["changes"][0]["value"]["messages"][0]["from"] = "<PHONE>"
    env["entry"][0]["changes"][0]["value"]["contacts"] = []
    with pytest.raises(ParseError, match="neither a phone number nor a wa_id"):
        whatsapp.parse(env)


def test_render_text_buttons_list_card_and_media() -> None:
    text = whatsapp.render(Outbound(to="16505551234", text="Hi", reply_to="wamid.1"))
    (p,) = text.payloads
    assert p["type"] == "text" and p["text"]["body"] == "Hi"
    assert p["context"] == {"message_id": "wamid.1"}
    buttons = whatsapp.render(
        Outbound(
            to="1",
            text="Pick",
            quick_replies=(QuickReply(title="Yes", payload="y"), QuickReply(title="No")),
        )
    )
    assert buttons.payloads[0]["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in buttons.payloads[0]["interactive"]["action"]["buttons"]] == [
        "y",
        "No",
    ]
    many = whatsapp.render(
        Outbound(
            to="1",
            text="Pick",
            quick_replies=tuple(QuickReply(title=f"Option {i}") for i in range(5)),
        )
    )
    assert many.payloads[0]["type"] == "text"
    assert "5. Option 4" in many.text and many.degraded
    listing = whatsapp.render(
        Outbound(
            to="1",
            text="Which order?",
            options=OptionList(
                items=(ListItem(title="#8812", id="o1"), ListItem(title="#8813", id="o2"))
            ),
        )
    )
    assert listing.payloads[0]["interactive"]["type"] == "list"
    card = whatsapp.render(
        Outbound(
            to="1",
            card=Card(
                title="Parcel",
                text="Out for delivery",
                image_url="https://x.example/p.png",
                buttons=(Button(title="Track", url="https://x.example/t"), Button(title="Help")),
            ),
        )
    )
    assert card.payloads[0]["type"] == "image"
    assert card.payloads[1]["type"] == "interactive"
    assert "https://x.example/t" in card.payloads[1]["interactive"]["body"]["text"]
    media = whatsapp.render(
        Outbound(
            to="1",
            text="Invoice",
            attachments=(
                Attachment(kind="document", url="https://x.example/i.pdf", filename="i.pdf"),
            ),
        )
    )
    assert [p["type"] for p in media.payloads] == ["text", "document"]


def _echo(payload: dict[str, Any]) -> Any:
    assert payload["type"] == "text"
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "1",
                            },
                            "messages": [
                                {
                                    "from": payload["to"],
                                    "id": "wamid.echo",
                                    "timestamp": "1700000000",
                                    "type": "text",
                                    "text": {"body": payload["text"]["body"]},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


class TestWhatsAppConformance(ChannelAdapterConformance):
    adapter = whatsapp.adapter
    samples = [json.dumps(env).encode() for _, env in ALL_CASES]
    required_fields = [
        ("object",),
        ("entry",),
        ("entry", 0, "changes"),
        ("entry", 0, "changes", 0, "field"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "id"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "from"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "timestamp"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "type"),
        ("entry", 0, "changes", 0, "value", "messages", 0, "text", "body"),
    ]
    outbound_to = "16505551234"

    def echo(self, payload: Any) -> Any:
        return _echo(payload)
