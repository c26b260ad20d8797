"""Web chat: a documented JSON format for a web or mobile widget, and identity tokens.

Inbound format (one event object, or ``{"events": [...]}``)::

    {
      "type": "message",                  # message | read | delivered | edit | delete
                                          # | reaction | typing (and others: Unsupported)
      "id": "m-123",                      # the widget's id for this event's message
      "session_id": "s-9f2c",             # required: the widget session
      "sent_at": "2026-03-02T09:00:00Z",  # ISO 8601 with offset, or Unix seconds
      "text": "Where is my order?",
      "email": "ann@example.com",         # optional: typed by the visitor (claimed)
      "account_id": "u-42",               # optional: the signed-in user's account id
      "identity_token": "<token>",        # optional: proves account_id (see below)
      "device_id": "d-77",                # optional (asserted: the widget's own device id)
      "reply_to": "m-100",                # optional
      "attachments": [{"kind": "image", "url": "...", "mime_type": "image/png",
                       "filename": "a.png", "size": 1234}],
      "quick_reply": {"id": "yes", "title": "Yes"},   # optional: a tapped quick reply
      "page_url": "https://shop.example/cart",         # optional, kept in metadata
      "target_id": "m-7",                 # read/delivered/edit/delete/reaction: the message
      "emoji": "👍"                       # reaction (empty removes it)
    }

Trust: ``session_id`` and ``device_id`` are **asserted** (the widget issued them);
``email`` is **claimed**; ``account_id`` is **claimed** unless ``identity_token`` proves
it, then **verified** (method ``"signed-token"``). A token that is present but forged,
expired, for another tenant or another account raises
:class:`~convthread.errors.SignatureError` (the whole payload is refused).

Identity token (the user's back end signs it with a secret shared with convthread)::

    body    = base64url(payload_json)
    token   = body + "." + base64url(HMAC-SHA256(secret, body))
    payload = {"sub": "<account id>", "tenant": "<tenant>", "exp": <Unix seconds>,
               "iat": <Unix seconds, optional>}

base64url is RFC 4648 section 5 without padding. :func:`sign_identity_token` makes one;
:meth:`WebChatAdapter.verify_identity_token` checks one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any, Final

from convthread.channels.base import (
    Capabilities,
    Outbound,
    Rendered,
    arr,
    clip,
    degrade,
    fail,
    fragment,
    guard,
    iso_time,
    load_json,
    obj,
    opt_str,
    received,
    req_str,
)
from convthread.domain.identifiers import account, device, session
from convthread.domain.identifiers import email as email_identifier
from convthread.domain.model import (
    MAX_TEXT,
    Attachment,
    Channel,
    Content,
    DeliveryStatus,
    Inbound,
    SenderIdentifier,
    TimeSource,
    Trust,
    ensure_utc,
)
from convthread.domain.updates import (
    ChannelResult,
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import ConvthreadError, SignatureError, ValidationError
from convthread.ports import Clock

__all__ = [
    "CAPABILITIES",
    "IdentityClaims",
    "WebChatAdapter",
    "adapter",
    "parse",
    "render",
    "sign_identity_token",
]

CHANNEL: Final = Channel.WEBCHAT
CAPABILITIES: Final = Capabilities(
    channel=CHANNEL,
    max_text=10_000,
    rich_content=True,
    attachments=True,
    quick_replies=10,
    list_items=50,
    threading=True,
    links=True,
)
_STATUS: Final = {"read": DeliveryStatus.READ, "delivered": DeliveryStatus.DELIVERED}
_MAX_EVENTS: Final = 100


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not text or any(
        c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text
    ):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_identity_token(
    secret: bytes,
    *,
    account_id: str,
    tenant: str,
    expires_at: datetime,
    issued_at: datetime | None = None,
) -> str:
    """An identity token for ``account_id`` in ``tenant``, valid until ``expires_at``.

    Run this in the back end that knows who is signed in, and hand the token to the widget.
    """
    if not secret:
        raise ValidationError("the identity secret must not be empty")
    claims: dict[str, Any] = {
        "sub": account_id,
        "tenant": tenant,
        "exp": int(ensure_utc(expires_at, "expires_at").timestamp()),
    }
    if issued_at is not None:
        claims["iat"] = int(ensure_utc(issued_at, "issued_at").timestamp())
    body = _b64e(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64e(mac)}"


class IdentityClaims:
    """The verified content of an identity token."""

    __slots__ = ("account_id", "expires_at", "tenant")

    def __init__(self, account_id: str, tenant: str, expires_at: int) -> None:
        self.account_id = account_id
        self.tenant = tenant
        self.expires_at = expires_at


class WebChatAdapter:
    """The web chat adapter.

    ``identity_secrets``: the HMAC keys the back end signs identity tokens with (several
    while a key is rotated); ``tenant``: the tenant accounts belong to (the account
    identifier's scope, and the token's required ``tenant``). Without secrets, tokens
    cannot be checked and a payload carrying one is refused.
    """

    channel: Final = CHANNEL
    capabilities: Final = CAPABILITIES

    def __init__(
        self, *, identity_secrets: tuple[bytes, ...] | list[bytes] = (), tenant: str = "default"
    ) -> None:
        self.identity_secrets = tuple(identity_secrets)
        self.tenant = tenant

    # ------------------------------------------------------------------ identity

    def verify_identity_token(self, token: str, *, now: datetime) -> IdentityClaims:
        """Check ``token`` (signature, tenant, expiry); raise SignatureError if it fails."""
        if not self.identity_secrets:
            raise SignatureError(CHANNEL, "an identity token was sent but no secret is set")
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
            raise SignatureError(CHANNEL, "the identity token is malformed")
        body, mac_text = token.split(".")
        try:
            mac = _b64d(mac_text)
            claims = json.loads(_b64d(body))
        except (ValueError, binascii.Error, UnicodeError, RecursionError):
            raise SignatureError(CHANNEL, "the identity token is malformed") from None
        ok = False
        for secret in self.identity_secrets:
            expected = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
            ok |= hmac.compare_digest(expected, mac)
        if not ok:
            raise SignatureError(CHANNEL, "the identity token's signature does not verify")
        if not isinstance(claims, dict):
            raise SignatureError(CHANNEL, "the identity token's payload is not an object")
        sub, tenant, exp = claims.get("sub"), claims.get("tenant"), claims.get("exp")
        if not isinstance(sub, str) or not sub:
            raise SignatureError(CHANNEL, "the identity token names no account (sub)")
        if tenant != self.tenant:
            raise SignatureError(CHANNEL, f"the identity token is for tenant {tenant!r}")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise SignatureError(CHANNEL, "the identity token has no expiry (exp)")
        if exp <= ensure_utc(now, "now").timestamp():
            raise SignatureError(CHANNEL, "the identity token has expired")
        return IdentityClaims(sub, tenant, exp)

    # ------------------------------------------------------------------ parse

    def parse(
        self,
        payload: Any,
        *,
        received_at: datetime | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> list[ChannelResult]:
        """Parse one widget event or ``{"events": [...]}``. Token expiry is checked
        against ``received_at``, else ``clock.now()``, else the system clock; an event
        without ``sent_at`` is stamped with that time (``TimeSource.RECEIVED``)."""
        now = received(received_at, clock)
        data = load_json(CHANNEL, payload)
        with guard(CHANNEL):
            root = obj(CHANNEL, data, "payload")
            if "events" in root:
                events = arr(CHANNEL, root["events"], "events")
                if not events or len(events) > _MAX_EVENTS:
                    fail(CHANNEL, f"events must hold 1 to {_MAX_EVENTS} events")
            else:
                events = [root]
            return [
                self._event(obj(CHANNEL, e, f"events[{i}]"), f"events[{i}]", now)
                for i, e in enumerate(events)
            ]

    def _sender(
        self, ev: dict[str, Any], where: str, now: datetime
    ) -> tuple[SenderIdentifier, ...]:
        ids = [
            SenderIdentifier(
                session(req_str(CHANNEL, ev, "session_id", where)), Trust.ASSERTED, "channel"
            )
        ]
        device_id = opt_str(CHANNEL, ev, "device_id", where)
        if device_id:
            ids.append(SenderIdentifier(device(device_id), Trust.ASSERTED, "channel"))
        account_id = opt_str(CHANNEL, ev, "account_id", where)
        token = opt_str(CHANNEL, ev, "identity_token", where)
        if token:
            claims = self.verify_identity_token(token, now=now)
            if account_id and account_id != claims.account_id:
                raise SignatureError(
                    CHANNEL, "the identity token is for another account than account_id"
                )
            ids.append(
                SenderIdentifier(
                    account(self.tenant, claims.account_id), Trust.VERIFIED, "signed-token"
                )
            )
        elif account_id:
            ids.append(SenderIdentifier(account(self.tenant, account_id), Trust.CLAIMED))
        address = opt_str(CHANNEL, ev, "email", where)
        if address:
            # a mistyped address is not a reason to lose the message: it is left out
            with contextlib.suppress(ConvthreadError):
                ids.append(SenderIdentifier(email_identifier(address), Trust.CLAIMED))
        return tuple(ids)

    def _event(self, ev: dict[str, Any], where: str, now: datetime) -> ChannelResult:
        etype = req_str(CHANNEL, ev, "type", where)
        sender = self._sender(ev, where, now)
        at = iso_time(CHANNEL, ev["sent_at"], f"{where}.sent_at") if ev.get("sent_at") else now
        if etype == "message":
            msg_id = clip(req_str(CHANNEL, ev, "id", where), 512)
            return Inbound(
                channel=CHANNEL,
                provider_message_id=msg_id,
                sender=sender,
                content=self._content(ev, where),
                sent_at=at,
                reply_to=clip(opt_str(CHANNEL, ev, "reply_to", where), 512) or None,
                time_source=TimeSource.PROVIDER if ev.get("sent_at") else TimeSource.RECEIVED,
            )
        if etype in _STATUS:
            return StatusReport(
                channel=CHANNEL,
                provider_message_id=clip(req_str(CHANNEL, ev, "target_id", where), 512),
                status=_STATUS[etype],
                at=at,
            )
        if etype == "edit":
            return EditReport(
                channel=CHANNEL,
                provider_message_id=clip(req_str(CHANNEL, ev, "target_id", where), 512),
                content=self._content(ev, where),
                at=at,
                sender=sender,
            )
        if etype == "delete":
            return DeletionReport(
                channel=CHANNEL,
                provider_message_id=clip(req_str(CHANNEL, ev, "target_id", where), 512),
                at=at,
                sender=sender,
            )
        if etype == "reaction":
            return ReactionReport(
                channel=CHANNEL,
                provider_message_id=clip(req_str(CHANNEL, ev, "target_id", where), 512),
                emoji=opt_str(CHANNEL, ev, "emoji", where),
                at=at,
                sender=sender,
                reaction_id=clip(opt_str(CHANNEL, ev, "id", where), 512),
            )
        return Unsupported(
            channel=CHANNEL,
            reason=f"web chat event type {etype!r} is not modelled",
            kind=etype[:64],
            provider_message_id=clip(opt_str(CHANNEL, ev, "id", where), 512),
            at=at,
            raw=fragment({k: v for k, v in ev.items() if k != "identity_token"}),
        )

    def _content(self, ev: dict[str, Any], where: str) -> Content:
        metadata: dict[str, Any] = {}
        text = opt_str(CHANNEL, ev, "text", where)
        quick = ev.get("quick_reply")
        if quick is not None:
            quick = obj(CHANNEL, quick, f"{where}.quick_reply")
            title = req_str(CHANNEL, quick, "title", f"{where}.quick_reply")
            metadata["reply"] = {"id": opt_str(CHANNEL, quick, "id", "quick_reply"), "title": title}
            text = text or title
        page = opt_str(CHANNEL, ev, "page_url", where)
        if page:
            metadata["page_url"] = clip(page, 2048)
        attachments = []
        for i, att in enumerate(arr(CHANNEL, ev.get("attachments", []), f"{where}.attachments")):
            att = obj(CHANNEL, att, f"{where}.attachments[{i}]")
            size = att.get("size")
            attachments.append(
                Attachment(
                    kind=req_str(CHANNEL, att, "kind", f"{where}.attachments[{i}]"),
                    url=opt_str(CHANNEL, att, "url", "attachment"),
                    media_id=clip(opt_str(CHANNEL, att, "id", "attachment"), 512),
                    mime_type=opt_str(CHANNEL, att, "mime_type", "attachment"),
                    filename=opt_str(CHANNEL, att, "filename", "attachment"),
                    size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                    caption=opt_str(CHANNEL, att, "caption", "attachment"),
                )
            )
        if len(text) > MAX_TEXT:
            fail(CHANNEL, f"{where}.text is longer than {MAX_TEXT} characters")
        return Content(text=text, attachments=tuple(attachments), metadata=metadata)

    # ------------------------------------------------------------------ render

    def render(self, outbound: Outbound) -> Rendered:
        """Render one widget event: ``{"type": "message", "id", "session_id", "text",
        "quick_replies", "options", "card", "attachments", "reply_to"}``. The widget shows
        every rich part natively, so nothing degrades; only the text is cut to 10,000
        characters."""
        if not outbound.to:
            raise ValidationError("a web chat message needs 'to' (the session id)")
        body, options, notes = degrade(outbound, CAPABILITIES)
        text = "\n\n".join(p for p in (body, options) if p)
        if len(text) > (CAPABILITIES.max_text or MAX_TEXT):
            text = text[: CAPABILITIES.max_text]
            notes.append("text cut to 10000 characters")
        event: dict[str, Any] = {"type": "message", "session_id": outbound.to, "text": text}
        if outbound.message_id:
            event["id"] = outbound.message_id
        if outbound.reply_to:
            event["reply_to"] = outbound.reply_to
        if outbound.quick_replies and len(outbound.quick_replies) <= CAPABILITIES.quick_replies:
            event["quick_replies"] = [
                {"id": q.payload or q.title, "title": q.title} for q in outbound.quick_replies
            ]
        if outbound.options is not None and len(outbound.options.items) <= CAPABILITIES.list_items:
            event["options"] = {
                "button": outbound.options.button,
                "title": outbound.options.title,
                "items": [
                    {"id": it.id or it.title, "title": it.title, "description": it.description}
                    for it in outbound.options.items
                ],
            }
        if outbound.card is not None:
            card = outbound.card
            event["card"] = {
                "title": card.title,
                "text": card.text,
                "image_url": card.image_url,
                "url": card.url,
                "buttons": [
                    {"title": b.title, "payload": b.payload, "url": b.url} for b in card.buttons
                ],
            }
        if outbound.attachments:
            event["attachments"] = [
                {
                    k: v
                    for k, v in (
                        ("kind", a.kind),
                        ("url", a.url),
                        ("id", a.media_id),
                        ("mime_type", a.mime_type),
                        ("filename", a.filename),
                        ("caption", a.caption),
                    )
                    if v
                }
                for a in outbound.attachments
            ]
        return Rendered(channel=CHANNEL, payloads=(event,), text=text, degraded=tuple(notes))


#: The default adapter: no identity secret (tokens are refused), tenant ``"default"``.
adapter: Final = WebChatAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
