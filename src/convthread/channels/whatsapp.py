"""WhatsApp Cloud API: webhook JSON in, send-message JSON out.

Mapping (documented in docs/channels.md):

* Every ``entry[].changes[]`` with ``field == "messages"`` is read; other fields (account,
  template and quality updates) become :class:`Unsupported` with ``kind`` = the field.
* Sender: the message's ``from`` (the wa_id), **asserted** by WhatsApp (method
  ``"channel"``), as a phone identifier (E.164) when libphonenumber accepts it *and* as
  ``handle[whatsapp]`` (digits) always, so a wa_id that is not a valid number (test
  numbers, new ranges) still identifies the sender; the contact's business-scoped user id
  (``user_id``, "BSUID"), when present, as ``handle[whatsapp-user]``, also asserted.
  A message whose sender yields no identifier is a ParseError (an inbound needs one).
* text, image, video, audio (voice notes keep ``voice: true`` in metadata), document,
  sticker: :class:`Inbound`; media are attachments metadata (id, mime type, sha256, url,
  filename, caption); the caption is also the text. location and contacts: an attachment
  of that kind plus the details in ``metadata``. interactive replies (button_reply,
  list_reply, nfm_reply) and template ``button`` replies: the tapped title as text, ids in
  ``metadata["reply"]``. ``context.id`` becomes ``reply_to``; ``forwarded``,
  ``frequently_forwarded`` and ``referral`` go to metadata.
* reaction: :class:`ReactionReport` (no or empty emoji: the reaction was removed).
* edit: :class:`EditReport` of ``edit.original_message_id`` with the new content.
* revoke: :class:`DeletionReport` of ``revoke.original_message_id``.
* unsupported, order, system, request_welcome, an interactive message without a body,
  and any unknown type: :class:`Unsupported` with the provider's errors as the reason.
* statuses: sent, delivered, read, failed are :class:`StatusReport`; ``played`` (a voice
  message was played, which implies it was read) is mapped to ``read``; any other status
  (``deleted``, ``warning``, future ones) becomes :class:`Unsupported` with ``kind``
  ``status:<name>``. Errors of a failed status become the report's ``error``.
* ``value.errors`` (webhook-level errors): one :class:`Unsupported` each, ``kind="error"``.
* :func:`verify_signature` checks Meta's ``X-Hub-Signature-256`` over the raw body.
* :func:`verify_subscription` answers Meta's GET handshake (``hub.mode=subscribe``,
  ``hub.verify_token``, ``hub.challenge``): it returns the challenge to send back as the
  response body when the verify token is the app's, and raises
  :class:`~convthread.errors.SignatureError` (answer 403) when it is not, or
  :class:`~convthread.errors.ParseError` (answer 400) when the request is no handshake.
* Every message and status carries its ``timestamp``: ``parse`` accepts ``received_at=``
  and ``clock=`` like every adapter and never reads a clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Mapping
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
    load_form,
    load_json,
    obj,
    opt_str,
    req_str,
    unix_time,
)
from convthread.domain.identifiers import handle, phone
from convthread.domain.model import (
    MAX_TEXT,
    Attachment,
    Channel,
    Content,
    DeliveryStatus,
    Inbound,
    SenderIdentifier,
    Trust,
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

__all__ = [
    "CAPABILITIES",
    "WhatsAppAdapter",
    "adapter",
    "parse",
    "render",
    "verify_signature",
    "verify_subscription",
]

CHANNEL: Final = Channel.WHATSAPP
CAPABILITIES: Final = Capabilities(
    channel=CHANNEL,
    max_text=4096,
    rich_content=True,
    attachments=True,
    quick_replies=3,
    list_items=10,
    threading=True,
    links=True,
)
_MEDIA: Final = ("image", "video", "audio", "document", "sticker")
_STATUSES: Final = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "played": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
}
_UNMODELLED: Final = frozenset({"unsupported", "order", "system", "request_welcome"})


def _errors_text(errors: Any) -> str:
    """A readable summary of a WhatsApp ``errors`` array (code, title, details)."""
    if not isinstance(errors, list):
        return ""
    out = []
    for err in errors:
        if not isinstance(err, dict):
            continue
        code = err.get("code")
        title = err.get("title") or err.get("message") or ""
        data = err.get("error_data")
        details = data.get("details", "") if isinstance(data, dict) else ""
        text = f"{code}: {title}" if code is not None else str(title)
        if details and details != title:
            text += f" ({details})"
        out.append(text)
    return "; ".join(out)


def verify_signature(body: bytes, signature: str | None, app_secret: bytes) -> None:
    """Check Meta's ``X-Hub-Signature-256`` header: ``sha256=`` followed by the hex
    HMAC-SHA256 of the raw request body, keyed by the app secret. Raise SignatureError
    unless it matches (compared in constant time). Check it before parsing."""
    if not signature:
        raise SignatureError(CHANNEL, "the request has no X-Hub-Signature-256")
    if not app_secret:
        raise SignatureError(CHANNEL, "no app secret configured to check the signature")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise SignatureError(CHANNEL, "the signature is over the raw body bytes")
    scheme, _, digest = signature.strip().partition("=")
    if scheme.lower() != "sha256" or not digest:
        raise SignatureError(CHANNEL, "X-Hub-Signature-256 must look like 'sha256=<hex>'")
    expected = hmac.new(app_secret, bytes(body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), digest.lower().encode("utf-8")):
        raise SignatureError(CHANNEL, "X-Hub-Signature-256 does not match the body")


def verify_subscription(
    params: Mapping[str, str | list[str]] | bytes | str, verify_token: str
) -> str:
    """Answer Meta's webhook verification request (the GET sent when the callback URL is
    configured): ``params`` are its query parameters (a mapping, or the query string).
    Return ``hub.challenge``, the body to answer with (status 200), when ``hub.mode`` is
    ``subscribe`` and ``hub.verify_token`` is ``verify_token`` (compared in constant time).
    Raise :class:`~convthread.errors.SignatureError` when the token is not the app's, and
    :class:`~convthread.errors.ParseError` when the request is not a subscription
    handshake (no or another ``hub.mode``, no ``hub.challenge``)."""
    if not isinstance(verify_token, str) or not verify_token:
        raise SignatureError(CHANNEL, "no verify token configured to check the handshake")
    fields = load_form(CHANNEL, params)

    def one(name: str) -> str:
        values = fields.get(name) or fields.get(name.replace(".", "_")) or [""]
        return values[0]

    mode = one("hub.mode")
    if mode != "subscribe":
        fail(CHANNEL, f"hub.mode must be 'subscribe', got {mode!r}")
    challenge = one("hub.challenge")
    if not challenge:
        fail(CHANNEL, "the verification request has no hub.challenge")
    token = one("hub.verify_token")
    if not hmac.compare_digest(token.encode("utf-8"), verify_token.encode("utf-8")):
        raise SignatureError(CHANNEL, "hub.verify_token is not the app's verify token")
    return challenge


class WhatsAppAdapter:
    """The WhatsApp Cloud API adapter (stateless; one instance serves every number)."""

    channel: Final = CHANNEL
    capabilities: Final = CAPABILITIES

    # ------------------------------------------------------------------ parse

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        """Parse a webhook body (bytes, str or decoded JSON) into results. ``received_at=``
        and ``clock=`` are accepted and not needed: every message and status carries its
        ``timestamp``."""
        data = load_json(CHANNEL, payload)
        with guard(CHANNEL):
            return self._parse(data)

    def _parse(self, data: Any) -> list[ChannelResult]:
        root = obj(CHANNEL, data, "webhook")
        kind = root.get("object")
        if kind != "whatsapp_business_account":
            fail(CHANNEL, f"object must be 'whatsapp_business_account', got {kind!r}")
        results: list[ChannelResult] = []
        for i, entry in enumerate(arr(CHANNEL, root.get("entry"), "entry")):
            entry = obj(CHANNEL, entry, f"entry[{i}]")
            changes = arr(CHANNEL, entry.get("changes"), f"entry[{i}].changes")
            for j, change in enumerate(changes):
                where = f"entry[{i}].changes[{j}]"
                change = obj(CHANNEL, change, where)
                field = req_str(CHANNEL, change, "field", where)
                value = obj(CHANNEL, change.get("value"), f"{where}.value")
                if field != "messages":
                    results.append(
                        Unsupported(
                            channel=CHANNEL,
                            reason=f"webhook field {field!r} is not a message",
                            kind=field,
                            raw=fragment(value),
                        )
                    )
                    continue
                results.extend(self._value(value, f"{where}.value"))
        if not results:
            fail(CHANNEL, "the webhook carries no messages, statuses or errors")
        return results

    def _value(self, value: dict[str, Any], where: str) -> list[ChannelResult]:
        meta = value.get("metadata")
        recipient = ""
        if isinstance(meta, dict):
            recipient = clip(opt_str(CHANNEL, meta, "display_phone_number", "metadata"), 512)
        users: dict[str, str] = {}
        contacts = value.get("contacts", [])
        if isinstance(contacts, list):
            for contact in contacts:
                if isinstance(contact, dict):
                    wa_id = contact.get("wa_id")
                    user_id = contact.get("user_id")
                    if isinstance(wa_id, str) and isinstance(user_id, str):
                        users[wa_id] = user_id
        results: list[ChannelResult] = []
        for k, msg in enumerate(arr(CHANNEL, value.get("messages", []), f"{where}.messages")):
            msg = obj(CHANNEL, msg, f"{where}.messages[{k}]")
            results.append(self._message(msg, f"{where}.messages[{k}]", recipient, users))
        for k, st in enumerate(arr(CHANNEL, value.get("statuses", []), f"{where}.statuses")):
            st = obj(CHANNEL, st, f"{where}.statuses[{k}]")
            results.append(self._status(st, f"{where}.statuses[{k}]"))
        errors = value.get("errors")
        if errors is not None:
            for err in arr(CHANNEL, errors, f"{where}.errors"):
                results.append(
                    Unsupported(
                        channel=CHANNEL,
                        reason=f"WhatsApp reported an error: {_errors_text([err])}",
                        kind="error",
                        raw=fragment(err),
                    )
                )
        return results

    def _sender(self, wa_id: str, users: dict[str, str]) -> tuple[SenderIdentifier, ...]:
        ids: list[SenderIdentifier] = []
        with contextlib.suppress(ConvthreadError):
            ids.append(SenderIdentifier(phone(wa_id), Trust.ASSERTED, "channel"))
        with contextlib.suppress(ConvthreadError):
            ids.append(SenderIdentifier(handle("whatsapp", wa_id), Trust.ASSERTED, "channel"))
        user_id = users.get(wa_id)
        if user_id:
            try:
                ident = handle("whatsapp-user", user_id)
                ids.append(SenderIdentifier(ident, Trust.ASSERTED, "channel"))
            except ConvthreadError:
                pass
        return tuple(ids)

    def _content(
        self, msg: dict[str, Any], mtype: str, where: str
    ) -> tuple[Content, str | None] | None:
        """The content of a message of a modelled type, or None when it is not modelled."""
        metadata: dict[str, Any] = {}
        attachments: list[Attachment] = []
        text = ""
        body = msg.get(mtype)
        if mtype == "text":
            text = req_str(CHANNEL, obj(CHANNEL, body, f"{where}.text"), "body", f"{where}.text")
        elif mtype in _MEDIA:
            media = obj(CHANNEL, body, f"{where}.{mtype}")
            caption = opt_str(CHANNEL, media, "caption", mtype)
            size = media.get("file_size")
            attachments.append(
                Attachment(
                    kind=mtype,
                    media_id=clip(opt_str(CHANNEL, media, "id", mtype), 512),
                    url=opt_str(CHANNEL, media, "url", mtype),
                    mime_type=opt_str(CHANNEL, media, "mime_type", mtype),
                    sha256=opt_str(CHANNEL, media, "sha256", mtype),
                    filename=opt_str(CHANNEL, media, "filename", mtype),
                    size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                    caption=caption,
                )
            )
            text = caption
            if mtype == "audio" and media.get("voice") is True:
                metadata["voice"] = True
            if mtype == "sticker" and isinstance(media.get("animated"), bool):
                metadata["animated"] = media["animated"]
        elif mtype == "location":
            loc = obj(CHANNEL, body, f"{where}.location")
            lat, lon = loc.get("latitude"), loc.get("longitude")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lat, lon)):
                fail(CHANNEL, f"{where}.location needs numeric latitude and longitude")
            details = {"latitude": lat, "longitude": lon}
            for key in ("name", "address", "url"):
                if opt_str(CHANNEL, loc, key, "location"):
                    details[key] = loc[key]
            metadata["location"] = details
            attachments.append(
                Attachment(
                    kind="location",
                    url=opt_str(CHANNEL, loc, "url", "location"),
                    caption=opt_str(CHANNEL, loc, "name", "location"),
                )
            )
            text = opt_str(CHANNEL, loc, "name", "location")
        elif mtype == "contacts":
            shared = arr(CHANNEL, body, f"{where}.contacts")
            metadata["contacts"] = shared
            attachments.append(Attachment(kind="contacts"))
        elif mtype == "interactive":
            if not isinstance(body, dict):
                return None
            itype = req_str(CHANNEL, body, "type", f"{where}.interactive")
            reply = body.get(itype)
            if itype in ("button_reply", "list_reply"):
                reply = obj(CHANNEL, reply, f"{where}.interactive.{itype}")
                text = req_str(CHANNEL, reply, "title", itype)
                metadata["reply"] = {
                    "type": itype,
                    "id": opt_str(CHANNEL, reply, "id", itype),
                    "title": text,
                    "description": opt_str(CHANNEL, reply, "description", itype),
                }
            elif itype == "nfm_reply":
                reply = obj(CHANNEL, reply, f"{where}.interactive.nfm_reply")
                text = opt_str(CHANNEL, reply, "body", itype)
                metadata["reply"] = {"type": itype, "response_json": reply.get("response_json")}
            else:
                return None
        elif mtype == "button":
            button = obj(CHANNEL, body, f"{where}.button")
            text = req_str(CHANNEL, button, "text", f"{where}.button")
            metadata["reply"] = {
                "type": "button",
                "payload": opt_str(CHANNEL, button, "payload", "button"),
                "title": text,
            }
        else:
            return None
        reply_to: str | None = None
        context = msg.get("context")
        if isinstance(context, dict):
            ctx_id = context.get("id")
            if isinstance(ctx_id, str) and ctx_id:
                reply_to = clip(ctx_id, 512)
            if context.get("forwarded") is True:
                metadata["forwarded"] = True
            if context.get("frequently_forwarded") is True:
                metadata["frequently_forwarded"] = True
        referral = msg.get("referral")
        if isinstance(referral, dict):
            metadata["referral"] = referral
        content = Content(
            text=clip(text, MAX_TEXT), attachments=tuple(attachments), metadata=metadata
        )
        return content, reply_to

    def _message(
        self, msg: dict[str, Any], where: str, recipient: str, users: dict[str, str]
    ) -> ChannelResult:
        msg_id = clip(req_str(CHANNEL, msg, "id", where), 512)
        mtype = req_str(CHANNEL, msg, "type", where)
        at = unix_time(CHANNEL, msg.get("timestamp"), f"{where}.timestamp")
        wa_id = req_str(CHANNEL, msg, "from", where)
        sender = self._sender(wa_id, users)
        if mtype == "reaction":
            reaction = obj(CHANNEL, msg.get("reaction"), f"{where}.reaction")
            return ReactionReport(
                channel=CHANNEL,
                provider_message_id=clip(req_str(CHANNEL, reaction, "message_id", where), 512),
                emoji=opt_str(CHANNEL, reaction, "emoji", f"{where}.reaction"),
                at=at,
                sender=sender,
                reaction_id=msg_id,
            )
        if mtype == "revoke":
            revoke = obj(CHANNEL, msg.get("revoke"), f"{where}.revoke")
            original = req_str(CHANNEL, revoke, "original_message_id", f"{where}.revoke")
            return DeletionReport(
                channel=CHANNEL, provider_message_id=clip(original, 512), at=at, sender=sender
            )
        if mtype == "edit":
            edit = obj(CHANNEL, msg.get("edit"), f"{where}.edit")
            original = req_str(CHANNEL, edit, "original_message_id", f"{where}.edit")
            new = obj(CHANNEL, edit.get("message"), f"{where}.edit.message")
            new_type = req_str(CHANNEL, new, "type", f"{where}.edit.message")
            parsed = self._content(new, new_type, f"{where}.edit.message")
            if parsed is None:
                return self._unsupported(new, new_type, msg_id, at, edit_of=original)
            return EditReport(
                channel=CHANNEL,
                provider_message_id=clip(original, 512),
                content=parsed[0],
                at=at,
                sender=sender,
            )
        parsed = None if mtype in _UNMODELLED else self._content(msg, mtype, where)
        if parsed is None:
            return self._unsupported(msg, mtype, msg_id, at)
        if not sender:
            fail(CHANNEL, f"{where}.from {wa_id!r} is neither a phone number nor a wa_id")
        content, reply_to = parsed
        return Inbound(
            channel=CHANNEL,
            provider_message_id=msg_id,
            sender=sender,
            content=content,
            sent_at=at,
            recipient=recipient,
            reply_to=reply_to,
        )

    def _unsupported(
        self, msg: dict[str, Any], mtype: str, msg_id: str, at: datetime, edit_of: str = ""
    ) -> Unsupported:
        detail = _errors_text(msg.get("errors"))
        inner = msg.get("unsupported")
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            mtype = f"{mtype}:{inner['type']}"
        reason = f"WhatsApp message type {mtype!r} is not modelled"
        if edit_of:
            reason = f"an edit of {edit_of} to a type that is not modelled ({mtype!r})"
        if detail:
            reason += f"; WhatsApp says: {detail}"
        return Unsupported(
            channel=CHANNEL,
            reason=reason,
            kind=mtype,
            provider_message_id=msg_id,
            at=at,
            raw=fragment(msg),
        )

    def _status(self, st: dict[str, Any], where: str) -> ChannelResult:
        msg_id = clip(req_str(CHANNEL, st, "id", where), 512)
        name = req_str(CHANNEL, st, "status", where)
        at = unix_time(CHANNEL, st.get("timestamp"), f"{where}.timestamp")
        status = _STATUSES.get(name)
        if status is None:
            return Unsupported(
                channel=CHANNEL,
                reason=f"WhatsApp status {name!r} has no delivery-status equivalent",
                kind=f"status:{name}",
                provider_message_id=msg_id,
                at=at,
                raw=fragment(st),
            )
        return StatusReport(
            channel=CHANNEL,
            provider_message_id=msg_id,
            status=status,
            at=at,
            recipient=clip(opt_str(CHANNEL, st, "recipient_id", where), 512),
            error=_errors_text(st.get("errors")),
        )

    def verify_signature(self, body: bytes, signature: str | None, app_secret: bytes) -> None:
        """See :func:`verify_signature`."""
        verify_signature(body, signature, app_secret)

    # ------------------------------------------------------------------ render

    def render(self, outbound: Outbound) -> Rendered:
        """Render to Cloud API ``/messages`` request bodies.

        Text (with degraded parts) goes as a ``text`` message, or as an ``interactive``
        ``button`` message when there are 1-3 quick replies, or an ``interactive``
        ``list`` when there is an option list of at most 10 rows. A card becomes an
        image message (its image, caption = title and text) followed by its buttons as
        an interactive message. Each attachment is one media message. Titles are cut to
        WhatsApp's limits (20 characters for buttons, 24 for rows).
        """
        if not outbound.to:
            raise ValidationError("a WhatsApp message needs 'to' (the wa_id or phone number)")
        caps = CAPABILITIES
        body, options, notes = degrade(outbound, caps)
        text = "\n\n".join(p for p in (body, options) if p)
        card = outbound.card
        base: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": outbound.to,
        }
        if outbound.reply_to:
            base["context"] = {"message_id": outbound.reply_to}
        payloads: list[dict[str, Any]] = []
        if card is not None:
            caption = "\n".join(p for p in (card.title, card.text, card.url) if p)
            if card.image_url:
                payloads.append(
                    {
                        **base,
                        "type": "image",
                        "image": {"link": card.image_url, "caption": caption[:1024]},
                    }
                )
            else:
                text = "\n\n".join(p for p in (text, caption) if p)
            replies = [b for b in card.buttons if not b.url]
            links = [b for b in card.buttons if b.url]
            if links:
                text = "\n\n".join(
                    [text, *(f"{b.title}: {b.url}" for b in links)]
                    if text
                    else [f"{b.title}: {b.url}" for b in links]
                )
            if replies:
                if len(replies) > caps.quick_replies:
                    notes.append("card buttons beyond 3 dropped")
                payloads.append(
                    {
                        **base,
                        "type": "interactive",
                        "interactive": {
                            "type": "button",
                            "body": {"text": clip(text or card.title, caps.max_text or 4096)},
                            "action": {
                                "buttons": [
                                    {
                                        "type": "reply",
                                        "reply": {
                                            "id": b.payload or b.title,
                                            "title": b.title[:20],
                                        },
                                    }
                                    for b in replies[: caps.quick_replies]
                                ]
                            },
                        },
                    }
                )
                text = text or card.title
        text = clip(text, caps.max_text or 4096)
        if outbound.options is not None and len(outbound.options.items) <= caps.list_items:
            payloads.append(
                {
                    **base,
                    "type": "interactive",
                    "interactive": {
                        "type": "list",
                        "body": {"text": text or outbound.options.title or "Please choose"},
                        "action": {
                            "button": outbound.options.button[:20],
                            "sections": [
                                {
                                    "title": outbound.options.title[:24],
                                    "rows": [
                                        {
                                            "id": it.id or it.title,
                                            "title": it.title[:24],
                                            "description": it.description[:72],
                                        }
                                        for it in outbound.options.items
                                    ],
                                }
                            ],
                        },
                    },
                }
            )
        elif outbound.quick_replies and len(outbound.quick_replies) <= caps.quick_replies:
            payloads.append(
                {
                    **base,
                    "type": "interactive",
                    "interactive": {
                        "type": "button",
                        "body": {"text": text or "Please choose"},
                        "action": {
                            "buttons": [
                                {
                                    "type": "reply",
                                    "reply": {"id": q.payload or q.title, "title": q.title[:20]},
                                }
                                for q in outbound.quick_replies
                            ]
                        },
                    },
                }
            )
        elif text and not any(p.get("type") == "interactive" for p in payloads):
            payloads.append(
                {**base, "type": "text", "text": {"body": text, "preview_url": "http" in text}}
            )
        for att in outbound.attachments:
            kind = (
                att.kind
                if att.kind in ("image", "video", "audio", "document", "sticker")
                else "document"
            )
            media: dict[str, Any] = {"id": att.media_id} if att.media_id else {"link": att.url}
            if att.caption and kind in ("image", "video", "document"):
                media["caption"] = att.caption
            if att.filename and kind == "document":
                media["filename"] = att.filename
            payloads.append({**base, "type": kind, kind: media})
        if not payloads:
            raise ValidationError(
                "nothing to send: the outbound message has no text, options, card or attachments"
            )
        return Rendered(channel=CHANNEL, payloads=tuple(payloads), text=text, degraded=tuple(notes))


#: The default adapter; ``whatsapp.parse(body)`` and ``whatsapp.render(outbound)`` use it.
adapter: Final = WhatsAppAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
