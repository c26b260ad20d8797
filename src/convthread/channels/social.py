"""Social: Twitter/X-style public mentions and direct messages (shapes of the API v2).

Inbound shapes:

* Mentions, as a v2 tweet lookup/stream response::

      {"data": {"id": "1720", "text": "@Acme my parcel is late", "author_id": "2244",
                "created_at": "2026-03-02T09:00:00.000Z", "conversation_id": "1700",
                "referenced_tweets": [{"type": "replied_to", "id": "1719"}]},
       "includes": {"users": [{"id": "2244", "username": "ann_b", "name": "Ann"}]}}

  ``data`` may also be a list. A flat ``in_reply_to_tweet_id`` on the tweet is accepted
  too (as in the public customer-support corpus), and ``created_at`` may be in the v1.1
  form ``Wed Oct 11 06:55:44 +0000 2017``.
* Direct messages, as v2 DM events (``data`` holds events with ``event_type``)::

      {"data": [{"id": "9001", "event_type": "MessageCreate", "text": "order 8812",
                 "sender_id": "2244", "dm_conversation_id": "2244-1000",
                 "created_at": "2026-03-02T09:05:00.000Z"}],
       "includes": {"users": [{"id": "2244", "username": "ann_b"}]}}

Mapping: mentions are channel ``twitter`` (public), DMs channel ``twitter.dm`` (private:
a reply there may say what a public reply must not). The author is **asserted** by the
platform (method ``"channel"``): ``handle[twitter]`` = the username when ``includes.users``
names it, and always ``handle[twitter.id]`` = the numeric user id (usernames change, ids
do not). ``reply_to`` is the replied-to tweet id; ``references`` the conversation id
(tweets) or the DM conversation id. Media keys become attachments. Retweets, quotes
without text, DM ``ParticipantsJoin``/``ParticipantsLeave`` and unknown event types are
:class:`Unsupported`.

Webhooks (the Account Activity API): X checks the endpoint with a GET carrying
``crc_token``; answer with :func:`crc_response` (``{"response_token": "sha256=<base64
HMAC-SHA256 of the token, keyed by the consumer secret>"}``). Every POST carries
``x-twitter-webhooks-signature``, the same HMAC over the raw body; :func:`verify_signature`
checks it in constant time and raises :class:`~convthread.errors.SignatureError` unless
it matches. Check it before parsing.

Every tweet and DM event carries ``created_at``, so ``parse`` needs no receive time; it
accepts ``received_at=`` and ``clock=`` like every adapter and never reads a clock.

Render: a mention reply is a ``POST /2/tweets`` body (``text`` within 280 weighted
characters, ``reply.in_reply_to_tweet_id``); a DM is a ``POST
/2/dm_conversations/:id/messages`` body (10,000 characters). Options become numbered text
(X has no quick replies in v2); links stay links.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
from datetime import datetime
from email.utils import parsedate_to_datetime
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
    req_str,
)
from convthread.domain.identifiers import handle
from convthread.domain.model import (
    MAX_TEXT,
    Attachment,
    Content,
    Inbound,
    SenderIdentifier,
    Trust,
    ensure_utc,
)
from convthread.domain.updates import ChannelResult, Unsupported
from convthread.errors import ConvthreadError, SignatureError, ValidationError

__all__ = [
    "CAPABILITIES",
    "DM_CAPABILITIES",
    "SocialAdapter",
    "adapter",
    "crc_response",
    "parse",
    "render",
    "verify_signature",
    "weighted_length",
]

CHANNEL: Final = "twitter"
DM_CHANNEL: Final = "twitter.dm"
CAPABILITIES: Final = Capabilities(channel=CHANNEL, max_text=280, threading=True, links=True)
DM_CAPABILITIES: Final = Capabilities(
    channel=DM_CHANNEL, max_text=10_000, threading=False, links=True, attachments=False
)
_URL_RE: Final = re.compile(r"https?://\S+")
_V11_RE: Final = re.compile(
    r"^[A-Z][a-z]{2} ([A-Z][a-z]{2}) (\d{2}) (\d{2}:\d{2}:\d{2}) ([+-]\d{4}) (\d{4})$"
)


def _secret(consumer_secret: str | bytes) -> bytes:
    if isinstance(consumer_secret, str):
        consumer_secret = consumer_secret.encode("utf-8")
    if not isinstance(consumer_secret, (bytes, bytearray)) or not consumer_secret:
        raise SignatureError(CHANNEL, "no consumer secret configured for X webhooks")
    return bytes(consumer_secret)


def _x_signature(consumer_secret: bytes, message: bytes) -> str:
    digest = hmac.new(consumer_secret, message, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode("ascii")


def crc_response(crc_token: str, consumer_secret: str | bytes) -> dict[str, str]:
    """The answer to X's challenge-response check (a GET with ``crc_token``): the JSON
    body ``{"response_token": "sha256=<base64 HMAC-SHA256 of crc_token>"}``, keyed by the
    app's consumer secret (the API secret key, not a bearer token). A missing token or
    secret raises :class:`~convthread.errors.SignatureError`."""
    if not isinstance(crc_token, str) or not crc_token:
        raise SignatureError(CHANNEL, "the challenge request has no crc_token")
    return {"response_token": _x_signature(_secret(consumer_secret), crc_token.encode("utf-8"))}


def verify_signature(body: bytes, signature: str | None, consumer_secret: str | bytes) -> None:
    """Check X's ``x-twitter-webhooks-signature`` header: ``sha256=`` followed by the
    base64 HMAC-SHA256 of the raw request body, keyed by the consumer secret. Raise
    SignatureError unless it matches (compared in constant time)."""
    if not signature:
        raise SignatureError(CHANNEL, "the request has no x-twitter-webhooks-signature")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise SignatureError(CHANNEL, "the signature is over the raw body bytes")
    expected = _x_signature(_secret(consumer_secret), bytes(body))
    scheme, _, digest = signature.strip().partition("=")
    if scheme.lower() != "sha256" or not digest:
        raise SignatureError(CHANNEL, "x-twitter-webhooks-signature must look like 'sha256=...'")
    given = ("sha256=" + digest).encode("utf-8")
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise SignatureError(CHANNEL, "x-twitter-webhooks-signature does not match the body")


def weighted_length(text: str) -> int:
    """Length as X counts it (twitter-text v3): a URL counts 23; characters in the Latin
    and general punctuation ranges count 1; everything else (CJK, emoji) counts 2."""
    total = 0
    pos = 0
    for m in _URL_RE.finditer(text):
        total += _weigh(text[pos : m.start()]) + 23
        pos = m.end()
    return total + _weigh(text[pos:])


def _weigh(text: str) -> int:
    n = 0
    for ch in text:
        cp = ord(ch)
        light = cp <= 4351 or 8192 <= cp <= 8205 or 8208 <= cp <= 8223 or 8242 <= cp <= 8247
        n += 1 if light else 2
    return n


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, str) and _V11_RE.match(value.strip()):
        day, mon, num, clock, off, year = value.strip().split(" ")
        try:
            parsed = parsedate_to_datetime(f"{day}, {num} {mon} {year} {clock} {off}")
        except (TypeError, ValueError):
            fail(CHANNEL, f"{where} {value!r} is not a timestamp")
        return ensure_utc(parsed)
    return iso_time(CHANNEL, value, where)


class SocialAdapter:
    """The Twitter/X adapter (mentions on ``twitter``, DMs on ``twitter.dm``)."""

    channel: Final = CHANNEL
    capabilities: Final = CAPABILITIES

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        """Parse a v2-style tweet or DM-event response (bytes, str or decoded JSON).
        ``received_at=`` and ``clock=`` are accepted and not needed: every tweet and DM
        event carries ``created_at``."""
        data = load_json(CHANNEL, payload)
        with guard(CHANNEL):
            root = obj(CHANNEL, data, "payload")
            if "data" not in root:
                fail(CHANNEL, "data is required")
            items = root["data"] if isinstance(root["data"], list) else [root["data"]]
            if not items or len(items) > 500:
                fail(CHANNEL, "data must hold 1 to 500 tweets or events")
            users: dict[str, str] = {}
            includes = root.get("includes")
            if isinstance(includes, dict):
                for user in arr(CHANNEL, includes.get("users", []), "includes.users"):
                    if isinstance(user, dict):
                        uid, name = user.get("id"), user.get("username")
                        if isinstance(uid, str) and isinstance(name, str):
                            users[uid] = name
            results: list[ChannelResult] = []
            for i, item in enumerate(items):
                item = obj(CHANNEL, item, f"data[{i}]")
                if "event_type" in item:
                    results.append(self._dm(item, f"data[{i}]", users))
                else:
                    results.append(self._tweet(item, f"data[{i}]", users))
            return results

    def _sender(self, user_id: str, users: dict[str, str]) -> tuple[SenderIdentifier, ...]:
        ids = []
        username = users.get(user_id)
        if username:
            with contextlib.suppress(ConvthreadError):
                ids.append(SenderIdentifier(handle("twitter", username), Trust.ASSERTED, "channel"))
        ids.append(SenderIdentifier(handle("twitter.id", user_id), Trust.ASSERTED, "channel"))
        return tuple(ids)

    def _media(self, item: dict[str, Any], where: str) -> tuple[Attachment, ...]:
        atts = item.get("attachments")
        if not isinstance(atts, dict):
            return ()
        keys = arr(CHANNEL, atts.get("media_keys", []), f"{where}.attachments.media_keys")
        return tuple(
            Attachment(kind="media", media_id=clip(k, 512))
            for k in keys[:64]
            if isinstance(k, str) and k
        )

    def _tweet(self, item: dict[str, Any], where: str, users: dict[str, str]) -> ChannelResult:
        tweet_id = clip(req_str(CHANNEL, item, "id", where), 512)
        at = _time(item.get("created_at"), f"{where}.created_at")
        refs = item.get("referenced_tweets")
        reply_to = opt_str(CHANNEL, item, "in_reply_to_tweet_id", where) or None
        kinds: list[str] = []
        if refs is not None:
            for j, ref in enumerate(arr(CHANNEL, refs, f"{where}.referenced_tweets")):
                ref = obj(CHANNEL, ref, f"{where}.referenced_tweets[{j}]")
                rtype = req_str(CHANNEL, ref, "type", f"{where}.referenced_tweets[{j}]")
                kinds.append(rtype)
                if rtype == "replied_to":
                    reply_to = req_str(CHANNEL, ref, "id", f"{where}.referenced_tweets[{j}]")
        if "retweeted" in kinds:
            return Unsupported(
                channel=CHANNEL,
                reason="a retweet is not a customer message",
                kind="retweet",
                provider_message_id=tweet_id,
                at=at,
                raw=fragment(item),
            )
        author = req_str(CHANNEL, item, "author_id", where)
        text = opt_str(CHANNEL, item, "text", where)
        conversation = opt_str(CHANNEL, item, "conversation_id", where)
        metadata: dict[str, Any] = {"visibility": "public"}
        if "quoted" in kinds:
            metadata["quote"] = True
        return Inbound(
            channel=CHANNEL,
            provider_message_id=tweet_id,
            sender=self._sender(author, users),
            content=Content(
                text=clip(text, MAX_TEXT), attachments=self._media(item, where), metadata=metadata
            ),
            sent_at=at,
            reply_to=clip(reply_to, 512) if reply_to else None,
            references=(clip(conversation, 512),)
            if conversation and conversation != tweet_id
            else (),
        )

    def _dm(self, item: dict[str, Any], where: str, users: dict[str, str]) -> ChannelResult:
        event_id = clip(req_str(CHANNEL, item, "id", where), 512)
        etype = req_str(CHANNEL, item, "event_type", where)
        at = _time(item.get("created_at"), f"{where}.created_at")
        if etype != "MessageCreate":
            return Unsupported(
                channel=DM_CHANNEL,
                reason=f"DM event {etype!r} is not a message",
                kind=etype[:64],
                provider_message_id=event_id,
                at=at,
                raw=fragment(item),
            )
        sender_id = req_str(CHANNEL, item, "sender_id", where)
        conversation = opt_str(CHANNEL, item, "dm_conversation_id", where)
        return Inbound(
            channel=DM_CHANNEL,
            provider_message_id=event_id,
            sender=self._sender(sender_id, users),
            content=Content(
                text=clip(opt_str(CHANNEL, item, "text", where), MAX_TEXT),
                attachments=self._media(item, where),
                metadata={"visibility": "private"},
            ),
            sent_at=at,
            recipient=clip(conversation, 512),
            references=(clip(conversation, 512),) if conversation else (),
        )

    def verify_signature(
        self, body: bytes, signature: str | None, consumer_secret: str | bytes
    ) -> None:
        """See :func:`verify_signature`."""
        verify_signature(body, signature, consumer_secret)

    def render(self, outbound: Outbound) -> Rendered:
        """A DM when ``thread_ref`` names a DM conversation, else a public reply."""
        if outbound.thread_ref:
            caps = DM_CAPABILITIES
            body, options, notes = degrade(outbound, caps)
            text = "\n\n".join(p for p in (body, options) if p)
            if len(text) > (caps.max_text or 10_000):
                text = text[: caps.max_text]
                notes.append("DM text cut to 10000 characters")
            return Rendered(
                channel=DM_CHANNEL, payloads=({"text": text},), text=text, degraded=tuple(notes)
            )
        caps = CAPABILITIES
        body, options, notes = degrade(outbound, caps)
        text = "\n\n".join(p for p in (body, options) if p)
        if not text:
            raise ValidationError("a tweet needs text")
        if weighted_length(text) > 280:
            lo, hi = 0, len(text)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if weighted_length(text[:mid].rstrip() + "…") <= 280:
                    lo = mid
                else:
                    hi = mid - 1
            text = text[:lo].rstrip() + "…"
            notes.append("tweet cut to 280 weighted characters")
        payload: dict[str, Any] = {"text": text}
        if outbound.reply_to:
            payload["reply"] = {"in_reply_to_tweet_id": outbound.reply_to}
        return Rendered(channel=CHANNEL, payloads=(payload,), text=text, degraded=tuple(notes))


#: The default adapter.
adapter: Final = SocialAdapter()
parse: Final = adapter.parse
render: Final = adapter.render
