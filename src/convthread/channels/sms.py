"""SMS: Twilio-style form-encoded webhooks in, Messages API form fields out.

Mapping (documented in docs/channels.md):

* An inbound message webhook (``From``, ``To``, ``Body``, ``MessageSid``, ``NumMedia``,
  ``MediaUrl0``/``MediaContentType0`` ...) is an :class:`Inbound`. ``From`` is
  **asserted** (the carrier's caller id, method ``"channel"``) as a phone identifier; a
  sender that is not a phone number (a short code, an alphanumeric sender id) becomes
  ``handle[sms]``. ``MessageSid`` (else ``SmsMessageSid``/``SmsSid``) is the provider id.
  Twilio sends no timestamp: ``sent_at`` is ``received_at`` (else ``clock.now()``, else
  the system clock) and ``time_source`` is ``received``, so a retry of the webhook
  received later fingerprints the same and is a duplicate.
  Media are attachments metadata (URL, MIME type).
* A status callback (it carries ``MessageStatus``) is a :class:`StatusReport`: ``sent``,
  ``delivered``, ``read``; ``failed`` and ``undelivered`` (with ``ErrorCode``) are
  ``failed``; ``canceled`` is ``failed`` with error ``"canceled"``. The intermediate
  states (``queued``, ``accepted``, ``scheduled``, ``sending``, ``receiving``,
  ``received``) and unknown ones are :class:`Unsupported` (``kind="status:<name>"``).
* :func:`verify_signature` checks ``X-Twilio-Signature``: base64 of HMAC-SHA1, keyed by
  the auth token, over the full request URL followed by every POST parameter name and
  value, sorted by name (values of a repeated name in sorted order), compared in constant
  time. Failure raises :class:`~convthread.errors.SignatureError`.
* Render: one Messages API request (``To``, ``From``, ``Body``, ``MediaUrl``...). Quick
  replies, lists and card buttons become numbered lines; links stay as URLs; the text is
  cut to ``max_segments`` segments, counted exactly (GSM-7 or UCS-2), keeping the numbered
  options whole when they fit, and cut with ``"..."`` (stays GSM-7) or ``"…"``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from convthread.channels.base import (
    Capabilities,
    Outbound,
    Rendered,
    clip,
    degrade,
    fail,
    fragment,
    guard,
    load_form,
    received,
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
    TimeSource,
    Trust,
)
from convthread.domain.segments import count_segments, encoding_of, fit_segments
from convthread.domain.updates import ChannelResult, StatusReport, Unsupported
from convthread.errors import ConvthreadError, SignatureError, ValidationError
from convthread.ports import Clock

__all__ = [
    "CAPABILITIES",
    "SmsAdapter",
    "adapter",
    "compute_signature",
    "parse",
    "render",
    "verify_signature",
]

CHANNEL: Final = Channel.SMS
CAPABILITIES: Final = Capabilities(
    channel=CHANNEL, max_segments=3, attachments=False, links=True, threading=False
)
_STATUSES: Final = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
    "undelivered": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}


def compute_signature(url: str, params: Mapping[str, str | list[str]], auth_token: str) -> str:
    """Twilio's request signature for a POST to ``url`` with form ``params``."""
    data = url
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else sorted(value)
        for v in values:
            data += name + v
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    url: str,
    params: Mapping[str, str | list[str]] | bytes | str,
    signature: str | None,
    auth_token: str,
    *,
    channel: str = CHANNEL,
) -> None:
    """Raise SignatureError unless ``signature`` (the ``X-Twilio-Signature`` header) is
    Twilio's signature of ``url`` and ``params`` (a mapping or the raw form body)."""
    if not signature:
        raise SignatureError(channel, "the request has no X-Twilio-Signature")
    if not auth_token:
        raise SignatureError(channel, "no auth token configured to check the signature")
    fields = params if isinstance(params, Mapping) else load_form(channel, params)
    expected = compute_signature(url, fields, auth_token)
    if not hmac.compare_digest(expected.encode("ascii"), signature.strip().encode("utf-8")):
        raise SignatureError(channel, "X-Twilio-Signature does not match the request")


def sender_identifier(raw: str, channel: str) -> SenderIdentifier:
    """The caller id as an asserted phone identifier, else an asserted ``handle[sms]``."""
    try:
        return SenderIdentifier(phone(raw), Trust.ASSERTED, "channel")
    except ConvthreadError:
        pass
    try:
        return SenderIdentifier(handle(channel, raw), Trust.ASSERTED, "channel")
    except ConvthreadError as exc:
        raise ValidationError(
            f"From {raw!r} is neither a phone number nor a sender id: {exc}"
        ) from None


def _one(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""


class SmsAdapter:
    """The SMS adapter. ``max_segments`` bounds rendered messages (default 3);
    ``mms=True`` sends attachments as MMS media instead of links."""

    channel: Final = CHANNEL

    def __init__(self, *, max_segments: int = 3, mms: bool = False) -> None:
        if max_segments < 1:
            raise ValidationError("max_segments must be at least 1")
        self.capabilities = msgspec.structs.replace(
            CAPABILITIES, max_segments=max_segments, attachments=mms
        )

    def parse(
        self,
        payload: Any,
        *,
        received_at: datetime | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> list[ChannelResult]:
        """Parse a webhook form body (bytes, str or a mapping of fields). Twilio sends no
        timestamp: results are stamped with ``received_at``, else ``clock.now()``, else
        the system clock, and inbound messages say so (``TimeSource.RECEIVED``)."""
        now = received(received_at, clock)
        fields = load_form(CHANNEL, payload)
        with guard(CHANNEL):
            return [self._parse(fields, now)]

    def _parse(self, fields: dict[str, list[str]], now: datetime) -> ChannelResult:
        sid = _one(fields, "MessageSid") or _one(fields, "SmsMessageSid") or _one(fields, "SmsSid")
        if not sid:
            fail(CHANNEL, "MessageSid is required")
        sid = clip(sid, 512)
        status_name = _one(fields, "MessageStatus")
        if status_name:
            status = _STATUSES.get(status_name.lower())
            if status is None:
                return Unsupported(
                    channel=CHANNEL,
                    reason=f"message status {status_name!r} is not a delivery status",
                    kind=f"status:{status_name.lower()}"[:64],
                    provider_message_id=sid,
                    at=now,
                    raw=fragment({k: v[0] for k, v in fields.items()}),
                )
            error = _one(fields, "ErrorCode")
            if status_name.lower() == "canceled":
                error = error or "canceled"
            if _one(fields, "ErrorMessage"):
                error = (
                    f"{error}: {_one(fields, 'ErrorMessage')}"
                    if error
                    else _one(fields, "ErrorMessage")
                )
            return StatusReport(
                channel=CHANNEL,
                provider_message_id=sid,
                status=status,
                at=now,
                recipient=clip(_one(fields, "To"), 512),
                error=error,
            )
        sender_raw = _one(fields, "From")
        if not sender_raw:
            fail(CHANNEL, "From is required")
        if "Body" not in fields and "NumMedia" not in fields:
            fail(CHANNEL, "an inbound message needs Body or NumMedia")
        num_media_text = _one(fields, "NumMedia") or "0"
        if not num_media_text.isdigit() or int(num_media_text) > 64:
            fail(CHANNEL, f"NumMedia {num_media_text!r} is not a count from 0 to 64")
        attachments = []
        for i in range(int(num_media_text)):
            url = _one(fields, f"MediaUrl{i}")
            if not url:
                fail(CHANNEL, f"NumMedia is {num_media_text} but MediaUrl{i} is missing")
            mime = _one(fields, f"MediaContentType{i}")
            main = mime.split("/", 1)[0]
            attachments.append(
                Attachment(
                    kind=main if main in ("image", "audio", "video") else "document",
                    url=url,
                    mime_type=mime,
                )
            )
        metadata = {
            key.lower(): _one(fields, key)
            for key in ("FromCountry", "FromCity", "NumSegments")
            if _one(fields, key)
        }
        return Inbound(
            channel=CHANNEL,
            provider_message_id=sid,
            sender=(sender_identifier(sender_raw, CHANNEL),),
            content=Content(
                text=clip(_one(fields, "Body"), MAX_TEXT),
                attachments=tuple(attachments),
                metadata=metadata,
            ),
            sent_at=now,
            recipient=clip(_one(fields, "To"), 512),
            time_source=TimeSource.RECEIVED,
        )

    def verify_signature(
        self,
        url: str,
        params: Mapping[str, str | list[str]] | bytes | str,
        signature: str | None,
        auth_token: str,
    ) -> None:
        """See :func:`verify_signature`."""
        verify_signature(url, params, signature, auth_token)

    def render(self, outbound: Outbound) -> Rendered:
        """Render one Messages API request within ``max_segments`` segments."""
        if not outbound.to:
            raise ValidationError("an SMS needs 'to' (the phone number)")
        caps = self.capabilities
        max_segments = caps.max_segments or 1
        body, options, notes = degrade(outbound, caps)
        text = fit_text(body, options, max_segments, notes)
        payload: dict[str, Any] = {"To": outbound.to, "Body": text}
        if outbound.sender:
            payload["From"] = outbound.sender
        if caps.attachments:
            urls = [a.url for a in outbound.attachments if a.url]
            if urls:
                payload["MediaUrl"] = urls[:10]
        return Rendered(
            channel=CHANNEL,
            payloads=(payload,),
            text=text,
            degraded=tuple(notes),
            segments=count_segments(text),
        )


def fit_text(body: str, options: str, max_segments: int, notes: list[str]) -> str:
    """``body`` and ``options`` joined, within ``max_segments`` SMS segments: the body is
    cut first so that the numbered options stay whole; if they alone do not fit, the whole
    text is cut."""
    full = "\n\n".join(p for p in (body, options) if p)
    if count_segments(full).segments <= max_segments:
        return full
    ellipsis = "..." if encoding_of(full) == "gsm7" else "…"
    if options and body:
        tail = "\n\n" + options
        if count_segments(ellipsis + tail).segments <= max_segments:
            lo, hi = 0, len(body)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if count_segments(body[:mid].rstrip() + ellipsis + tail).segments <= max_segments:
                    lo = mid
                else:
                    hi = mid - 1
            notes.append(f"text cut to fit {max_segments} segment(s)")
            return body[:lo].rstrip() + ellipsis + tail
    notes.append(f"text cut to fit {max_segments} segment(s)")
    return fit_segments(full, max_segments, ellipsis=ellipsis)


#: The default adapter (3 segments, attachments as links).
adapter: Final = SmsAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
