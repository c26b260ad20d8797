"""Voice: call lifecycle events and transcript segments in, TwiML speech out.

Two inbound shapes are accepted:

1. JSON events (a documented, provider-neutral format)::

       {"type": "call.ringing", "call_id": "CA1", "from": "+14155550100",
        "to": "+18005550199", "at": "2026-03-02T09:00:00Z"}
       {"type": "transcript", "call_id": "CA1", "segment_id": "3", "speaker": "caller",
        "text": "my order never arrived", "is_final": true, "confidence": 0.92,
        "from": "+14155550100", "at": "2026-03-02T09:00:41Z"}

   or ``{"events": [...]}``. Lifecycle types: ``call.initiated``, ``call.ringing``,
   ``call.answered``, ``call.completed``, ``call.busy``, ``call.no_answer``,
   ``call.failed``, ``call.canceled``.

2. Twilio Voice webhooks (form-encoded): ``CallSid``, ``From``, ``To``, ``CallStatus``
   and, after a ``<Gather input="speech">``, ``SpeechResult`` (or ``Digits``).

Mapping: the caller id is **asserted** (the carrier's, method ``"channel"``) as a phone
identifier; a withheld or unusable caller id ("anonymous", "restricted") becomes the
asserted session identifier ``call:<call id>`` instead, so anonymous callers are never
lumped together.

* The start of a call (``call.initiated``/``call.ringing``, Twilio ``CallStatus``
  ``ringing``) is an :class:`Inbound` with empty text and ``provider_message_id`` = the
  call id: the call itself is the customer's contact, so it resolves the customer and
  chooses a thread like any message. ``metadata["call"]`` holds the event.
* A final transcript segment spoken by the caller (and Twilio's ``SpeechResult`` or
  ``Digits``) is an :class:`Inbound`: ``provider_message_id`` = ``<call id>:<segment
  id>``, ``reply_to`` and ``references`` = the call id, so continuity keeps the call's
  words in the call's thread; speaker, confidence in metadata.
* Everything else is :class:`Unsupported`, with the event kept: the other lifecycle
  events (answered, completed with its duration, busy, ...; convthread has no call-state
  event), interim transcripts (``is_final`` false: the final one follows), and segments
  spoken by the agent or bot (record those with ``Conversations.send``).

Render: TwiML ``<Response><Gather input="dtmf speech"><Say>...</Say></Gather></Response>``
when there are options (spoken as "Press 1 for ..."), else ``<Say>``. Links cannot be
spoken and are dropped (reported in ``degraded``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from xml.sax.saxutils import escape

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
    load_form,
    load_json,
    obj,
    opt_str,
    received,
    req_str,
)
from convthread.channels.sms import verify_signature as _twilio_verify
from convthread.domain.identifiers import phone, session
from convthread.domain.model import (
    MAX_TEXT,
    Channel,
    Content,
    Inbound,
    SenderIdentifier,
    TimeSource,
    Trust,
)
from convthread.domain.updates import ChannelResult, Unsupported
from convthread.errors import ConvthreadError, ValidationError
from convthread.ports import Clock

__all__ = ["CAPABILITIES", "VoiceAdapter", "adapter", "parse", "render"]

CHANNEL: Final = Channel.VOICE
CAPABILITIES: Final = Capabilities(
    channel=CHANNEL, max_text=2000, links=False, synchronous_voice=True, threading=False
)
_STARTS: Final = frozenset({"call.initiated", "call.ringing"})
_LIFECYCLE: Final = frozenset(
    {
        "call.answered",
        "call.completed",
        "call.busy",
        "call.no_answer",
        "call.failed",
        "call.canceled",
        "call.in_progress",
    }
)


def _caller(raw: str, call_id: str) -> tuple[SenderIdentifier, ...]:
    """The caller id as an asserted phone identifier; a withheld or non-numeric caller id
    ("anonymous", "restricted", "+266696687") identifies nobody, so the call itself does:
    an asserted session identifier ``call:<call id>``."""
    try:
        return (SenderIdentifier(phone(raw), Trust.ASSERTED, "channel"),)
    except ConvthreadError:
        return (SenderIdentifier(session(f"call:{call_id}"), Trust.ASSERTED, "channel"),)


class VoiceAdapter:
    """The voice adapter (JSON events and Twilio Voice webhooks)."""

    channel: Final = CHANNEL
    capabilities: Final = CAPABILITIES

    def parse(
        self,
        payload: Any,
        *,
        received_at: datetime | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> list[ChannelResult]:
        """Parse JSON events (a decoded dict, or text starting with ``{``) or a Twilio Voice
        form body (or a mapping of its fields, recognised by ``CallSid``). Events without
        ``at`` and Twilio webhooks (which carry no timestamp) are stamped with
        ``received_at``, else ``clock.now()``, else the system clock
        (``TimeSource.RECEIVED``)."""
        now = received(received_at, clock)
        # A mapping with CallSid is Twilio's form fields; other mappings are JSON events.
        is_form = isinstance(payload, Mapping) and "CallSid" in payload
        is_json = not is_form and (
            isinstance(payload, (dict, list))
            or (isinstance(payload, (bytes, str)) and payload.lstrip()[:1] in (b"{", "{"))
        )
        if is_json:
            data = load_json(CHANNEL, payload)
            with guard(CHANNEL):
                root = obj(CHANNEL, data, "payload")
                events = arr(CHANNEL, root["events"], "events") if "events" in root else [root]
                if not events or len(events) > 500:
                    fail(CHANNEL, "events must hold 1 to 500 events")
                return [
                    self._event(obj(CHANNEL, e, f"events[{i}]"), f"events[{i}]", now)
                    for i, e in enumerate(events)
                ]
        if isinstance(payload, (Mapping, bytes, str)):
            fields = load_form(CHANNEL, payload)
            with guard(CHANNEL):
                return [self._twilio({k: v[0] for k, v in fields.items() if v}, now)]
        fail(CHANNEL, f"expected JSON or form fields, not {type(payload).__name__}")
        return None

    def _event(self, ev: dict[str, Any], where: str, now: datetime) -> ChannelResult:
        etype = req_str(CHANNEL, ev, "type", where)
        call_id = clip(req_str(CHANNEL, ev, "call_id", where), 400)
        at = iso_time(CHANNEL, ev["at"], f"{where}.at") if ev.get("at") else now
        source = TimeSource.PROVIDER if ev.get("at") else TimeSource.RECEIVED
        caller = opt_str(CHANNEL, ev, "from", where)
        if etype in _STARTS:
            return Inbound(
                channel=CHANNEL,
                provider_message_id=call_id,
                sender=_caller(caller, call_id),
                content=Content(metadata={"call": {"event": etype, "call_id": call_id}}),
                sent_at=at,
                recipient=clip(opt_str(CHANNEL, ev, "to", where), 512),
                time_source=source,
            )
        if etype == "transcript":
            segment = clip(req_str(CHANNEL, ev, "segment_id", where), 100)
            speaker = opt_str(CHANNEL, ev, "speaker", where) or "caller"
            text = req_str(CHANNEL, ev, "text", where)
            final = ev.get("is_final", True)
            if not isinstance(final, bool):
                fail(CHANNEL, f"{where}.is_final must be true or false")
            if speaker != "caller" or not final:
                why = "an interim transcript" if not final else f"spoken by the {speaker}"
                return Unsupported(
                    channel=CHANNEL,
                    reason=f"transcript segment {why}",
                    kind="transcript.interim" if not final else f"transcript.{speaker}"[:64],
                    provider_message_id=f"{call_id}:{segment}",
                    at=at,
                    raw=fragment(ev),
                )
            metadata: dict[str, Any] = {"call_id": call_id, "speaker": speaker}
            confidence = ev.get("confidence")
            if isinstance(confidence, (int, float)) and not isinstance(confidence, bool):
                metadata["confidence"] = confidence
            return Inbound(
                channel=CHANNEL,
                provider_message_id=f"{call_id}:{segment}",
                sender=_caller(caller, call_id),
                content=Content(text=clip(text, MAX_TEXT), metadata=metadata),
                sent_at=at,
                recipient=clip(opt_str(CHANNEL, ev, "to", where), 512),
                reply_to=call_id,
                references=(call_id,),
                time_source=source,
            )
        known = etype in _LIFECYCLE
        return Unsupported(
            channel=CHANNEL,
            reason=(
                f"call event {etype!r} has no convthread equivalent"
                if known
                else f"voice event type {etype!r} is not modelled"
            ),
            kind=etype[:64],
            provider_message_id=call_id,
            at=at,
            raw=fragment(ev),
        )

    def _twilio(self, fields: dict[str, str], now: datetime) -> ChannelResult:
        call_id = clip(fields.get("CallSid", ""), 400)
        if not call_id:
            fail(CHANNEL, "CallSid is required")
        caller = fields.get("From") or fields.get("Caller", "")
        status = fields.get("CallStatus", "")
        spoken = fields.get("SpeechResult") or fields.get("Digits")
        if spoken:
            metadata: dict[str, Any] = {"call_id": call_id, "speaker": "caller"}
            if fields.get("Confidence"):
                metadata["confidence"] = fields["Confidence"]
            if fields.get("Digits") and not fields.get("SpeechResult"):
                metadata["dtmf"] = True
            seq = fields.get("SequenceNumber") or hashlib.sha256(spoken.encode()).hexdigest()[:16]
            return Inbound(
                channel=CHANNEL,
                provider_message_id=f"{call_id}:{seq}",
                sender=_caller(caller, call_id),
                content=Content(text=clip(spoken, MAX_TEXT), metadata=metadata),
                sent_at=now,
                recipient=clip(fields.get("To", ""), 512),
                reply_to=call_id,
                references=(call_id,),
                time_source=TimeSource.RECEIVED,
            )
        if status == "ringing":
            return Inbound(
                channel=CHANNEL,
                provider_message_id=call_id,
                sender=_caller(caller, call_id),
                content=Content(metadata={"call": {"event": "call.ringing", "call_id": call_id}}),
                sent_at=now,
                recipient=clip(fields.get("To", ""), 512),
                time_source=TimeSource.RECEIVED,
            )
        return Unsupported(
            channel=CHANNEL,
            reason=f"Twilio call status {status or '(none)'!r} has no convthread equivalent",
            kind=f"call.{status or 'unknown'}"[:64],
            provider_message_id=call_id,
            at=now,
            raw=fragment(fields),
        )

    def verify_signature(
        self,
        url: str,
        params: Mapping[str, str | list[str]] | bytes | str,
        signature: str | None,
        auth_token: str,
    ) -> None:
        """Twilio's ``X-Twilio-Signature`` check (as :func:`.sms.verify_signature`)."""
        _twilio_verify(url, params, signature, auth_token, channel=CHANNEL)

    def render(self, outbound: Outbound) -> Rendered:
        """Render TwiML to speak now (options as "Press 1 for ...")."""
        body, options, notes = degrade(outbound, CAPABILITIES)
        text = " ".join(p for p in (body, options) if p).strip()
        if not text:
            raise ValidationError("nothing to say: the outbound message has no text")
        limit = CAPABILITIES.max_text or 2000
        if len(text) > limit:
            text = text[: limit - 3].rstrip() + "..."
            notes.append(f"speech cut to {limit} characters")
        say = f"<Say>{escape(text)}</Say>"
        if options:
            count = options.count("Press ")
            twiml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Response>'
                f'<Gather input="dtmf speech" numDigits="{len(str(count))}">{say}'
                f"</Gather></Response>"
            )
        else:
            twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response>{say}</Response>'
        return Rendered(channel=CHANNEL, payloads=(twiml,), text=text, degraded=tuple(notes))


#: The default adapter.
adapter: Final = VoiceAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
