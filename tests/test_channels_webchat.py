"""Web chat adapter: the widget format, and account ids verified only by identity tokens."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from convthread.channels import webchat
from convthread.channels.base import Card, Outbound, QuickReply
from convthread.channels.webchat import WebChatAdapter, sign_identity_token
from convthread.domain.model import DeliveryStatus, Inbound, Trust
from convthread.domain.updates import (
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import ParseError, SignatureError
from convthread.testing.channel_conformance import ChannelAdapterConformance

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SECRET = b"s3cret-shared-with-the-back-end"
ADAPTER = WebChatAdapter(identity_secrets=[SECRET], tenant="acme")
MESSAGE = {
    "type": "message",
    "id": "m-1",
    "session_id": "s-9f2c",
    "sent_at": "2026-03-02T08:59:00Z",
    "text": "Where is my order?",
    "email": "Ann@Example.com",
    "device_id": "d-77",
    "page_url": "https://shop/cart",
    "attachments": [
        {"kind": "image", "url": "https://cdn/x.png", "mime_type": "image/png", "size": 1200}
    ],
}


def _token(
    account_id: str = "u-42", *, tenant: str = "acme", minutes: int = 5, secret: bytes = SECRET
) -> str:
    return sign_identity_token(
        secret, account_id=account_id, tenant=tenant, expires_at=NOW + timedelta(minutes=minutes)
    )


def _ids(msg: Any) -> dict[str, tuple[str, Trust]]:
    return {s.identifier.kind: (s.identifier.value, s.trust) for s in msg.sender}


def test_message_trust_levels_without_token() -> None:
    (msg,) = ADAPTER.parse({**MESSAGE, "account_id": "u-42"}, received_at=NOW)
    assert isinstance(msg, Inbound)
    ids = _ids(msg)
    assert ids["session"] == ("s-9f2c", Trust.ASSERTED)
    assert ids["device"] == ("d-77", Trust.ASSERTED)
    assert ids["email"] == ("ann@example.com", Trust.CLAIMED)
    assert ids["account"] == ("u-42", Trust.CLAIMED)  # no token: at most claimed
    assert msg.sent_at == datetime(2026, 3, 2, 8, 59, tzinfo=timezone.utc)
    assert msg.content.attachments[0].size == 1200
    assert msg.content.metadata["page_url"] == "https://shop/cart"


def test_identity_token_verifies_the_account() -> None:
    (msg,) = ADAPTER.parse(
        {**MESSAGE, "account_id": "u-42", "identity_token": _token()}, received_at=NOW
    )
    account = [s for s in msg.sender if s.identifier.kind == "account"]  # type: ignore[union-attr]
    assert [(a.identifier.value, a.identifier.scope, a.trust, a.method) for a in account] == [
        ("u-42", "acme", Trust.VERIFIED, "signed-token")
    ]
    # The token alone names the account.
    (alone,) = ADAPTER.parse({**MESSAGE, "identity_token": _token()}, received_at=NOW)
    assert _ids(alone)["account"] == ("u-42", Trust.VERIFIED)


def _forge(token: str, **claims: Any) -> str:
    body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(claims)
    new = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{new}.{mac}"


@pytest.mark.parametrize(
    "token",
    [
        _token(minutes=-1),  # expired
        _token(minutes=0),  # expires exactly now
        _token(tenant="other"),  # another tenant
        _token(secret=b"not-the-secret"),  # forged signature
        _forge(_token(), sub="u-1"),  # payload changed after signing
        _token()[:-2],  # truncated MAC
        "not-a-token",
        "a.b.c",
        ".",
    ],
)
def test_bad_identity_tokens_are_refused(token: str) -> None:
    with pytest.raises(SignatureError):
        ADAPTER.parse({**MESSAGE, "identity_token": token}, received_at=NOW)


def test_token_for_another_account_than_claimed_is_refused() -> None:
    with pytest.raises(SignatureError, match="another account"):
        ADAPTER.parse(
            {**MESSAGE, "account_id": "u-1", "identity_token": _token("u-42")}, received_at=NOW
        )


def test_key_rotation_accepts_either_secret() -> None:
    rotating = WebChatAdapter(identity_secrets=[b"new", SECRET], tenant="acme")
    (msg,) = rotating.parse({**MESSAGE, "identity_token": _token()}, received_at=NOW)
    assert _ids(msg)["account"][1] is Trust.VERIFIED


def test_without_a_secret_tokens_are_refused() -> None:
    with pytest.raises(SignatureError, match="no secret"):
        webchat.parse({**MESSAGE, "identity_token": _token()}, received_at=NOW)


def test_other_event_types() -> None:
    base = {"session_id": "s-1", "sent_at": "2026-03-02T09:00:00Z", "target_id": "a-9"}
    events = {
        "events": [
            {**base, "type": "read"},
            {**base, "type": "delivered"},
            {**base, "type": "edit", "text": "fixed"},
            {**base, "type": "delete"},
            {**base, "type": "reaction", "emoji": "👍", "id": "r1"},
            {**base, "type": "typing"},
        ]
    }
    read, delivered, edit, delete, reaction, typing = ADAPTER.parse(events, received_at=NOW)
    assert isinstance(read, StatusReport) and read.status is DeliveryStatus.READ
    assert isinstance(delivered, StatusReport) and delivered.status is DeliveryStatus.DELIVERED
    assert isinstance(edit, EditReport) and edit.content.text == "fixed"
    assert isinstance(delete, DeletionReport) and delete.provider_message_id == "a-9"
    assert isinstance(reaction, ReactionReport) and reaction.emoji == "👍"
    assert isinstance(typing, Unsupported) and typing.kind == "typing"


def test_quick_reply_tap_is_the_text() -> None:
    (msg,) = ADAPTER.parse(
        {
            "type": "message",
            "id": "m2",
            "session_id": "s",
            "quick_reply": {"id": "refund", "title": "Refund"},
        },
        received_at=NOW,
    )
    assert isinstance(msg, Inbound)
    assert msg.content.text == "Refund" and msg.content.metadata["reply"]["id"] == "refund"


@pytest.mark.parametrize(
    "payload",
    [
        {k: v for k, v in MESSAGE.items() if k != "session_id"},
        {k: v for k, v in MESSAGE.items() if k != "id"},
        {k: v for k, v in MESSAGE.items() if k != "type"},
        {**MESSAGE, "sent_at": "yesterday"},
        {**MESSAGE, "sent_at": "2026-03-02T09:00:00"},
        {**MESSAGE, "attachments": "x"},
        {"events": []},
        b"nope",
        None,
    ],
)
def test_malformed_events_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        ADAPTER.parse(payload, received_at=NOW)


def test_render_keeps_rich_parts_native() -> None:
    r = webchat.render(
        Outbound(
            to="s-1",
            text="Pick one",
            message_id="b-1",
            quick_replies=(QuickReply(title="Yes", payload="y"),),
            card=Card(title="Order 8812", url="https://shop/o/8812"),
        )
    )
    (event,) = r.payloads
    assert event["quick_replies"] == [{"id": "y", "title": "Yes"}]
    assert event["card"]["url"] == "https://shop/o/8812"
    assert r.text == "Pick one" and not r.degraded


class TestWebChatConformance(ChannelAdapterConformance):
    adapter = ADAPTER
    samples = [
        json.dumps(MESSAGE).encode(),
        json.dumps({**MESSAGE, "identity_token": _token(minutes=60 * 24 * 365 * 50)}).encode(),
        json.dumps({"events": [{"type": "read", "session_id": "s", "target_id": "x"}]}),
    ]
    parse_options = {"received_at": NOW}
    required_fields = [("type",), ("id",), ("session_id",)]
    outbound_to = "s-9f2c"

    def echo(self, payload: Any) -> Any:
        return {**payload, "id": "m-echo"}
