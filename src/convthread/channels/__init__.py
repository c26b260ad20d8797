"""Channel adapters: parse provider payloads into normalized results, render outbound
messages within a channel's capabilities.

Reference adapters, one module each, each with a default instance and module-level
``parse`` and ``render``::

    from convthread.channels import whatsapp, email

    results = whatsapp.parse(webhook_json)    # [Inbound | StatusReport | ... | Unsupported]
    results = email.parse(raw_mime_bytes)

* :mod:`~convthread.channels.email`: raw RFC 5322 and Postmark inbound JSON.
* :mod:`~convthread.channels.sms`: Twilio-style form webhooks and request signatures.
* :mod:`~convthread.channels.whatsapp`: WhatsApp Cloud API webhooks.
* :mod:`~convthread.channels.webchat`: a documented widget JSON with HMAC identity tokens.
* :mod:`~convthread.channels.voice`: call events, transcripts, Twilio Voice; TwiML out.
* :mod:`~convthread.channels.social`: Twitter/X mentions and direct messages.

The protocol (:class:`ChannelAdapter`), :class:`Capabilities`, :class:`Outbound` and
:class:`Rendered` live in :mod:`convthread.channels.base`; the conformance kit for new
adapters in :mod:`convthread.testing.channel_conformance`. See docs/channels.md.
"""

from convthread.channels import email, sms, social, voice, webchat, whatsapp
from convthread.channels.base import (
    Button,
    Capabilities,
    Card,
    ChannelAdapter,
    ListItem,
    OptionList,
    Outbound,
    QuickReply,
    Rendered,
    degrade,
    guard,
    numbered_options,
)
from convthread.domain.updates import (
    ChannelResult,
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)

__all__ = [
    "Button",
    "Capabilities",
    "Card",
    "ChannelAdapter",
    "ChannelResult",
    "DeletionReport",
    "EditReport",
    "ListItem",
    "OptionList",
    "Outbound",
    "QuickReply",
    "ReactionReport",
    "Rendered",
    "StatusReport",
    "Unsupported",
    "degrade",
    "email",
    "guard",
    "numbered_options",
    "sms",
    "social",
    "voice",
    "webchat",
    "whatsapp",
]
