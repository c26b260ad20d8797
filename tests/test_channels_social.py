"""Social adapter: Twitter/X mentions and DMs (API v2 shapes)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from convthread.channels import social
from convthread.channels.base import Outbound, QuickReply
from convthread.channels.social import weighted_length
from convthread.domain.model import Inbound, Trust
from convthread.domain.updates import Unsupported
from convthread.errors import ParseError
from convthread.testing.channel_conformance import ChannelAdapterConformance

MENTION = {
    "data": {
        "id": "1720",
        "text": "@Acme my parcel is late",
        "author_id": "2244",
        "created_at": "2026-03-02T09:00:00.000Z",
        "conversation_id": "1700",
        "referenced_tweets": [{"type": "replied_to", "id": "1719"}],
        "attachments": {"media_keys": ["3_99"]},
    },
    "includes": {"users": [{"id": "2244", "username": "Ann_B", "name": "Ann"}]},
}
DMS = {
    "data": [
        {
            "id": "9001",
            "event_type": "MessageCreate",
            "text": "order 8812",
            "sender_id": "2244",
            "dm_conversation_id": "1000-2244",
            "created_at": "2026-03-02T09:05:00.000Z",
        },
        {
            "id": "9002",
            "event_type": "ParticipantsJoin",
            "dm_conversation_id": "1000-2244",
            "created_at": "2026-03-02T09:06:00.000Z",
        },
    ],
    "includes": {"users": [{"id": "2244", "username": "ann_b"}]},
}
# Three rows of the public "Customer Support on Twitter" corpus (tweet ids 119239/119238
# thread; see ../shared/corpora/README.md, CC BY-NC-SA 4.0, test use only), in the flat
# shape with ``in_reply_to_tweet_id`` and v1.1 timestamps.
TWCS = {
    "data": [
        {
            "id": "119239",
            "author_id": "105835",
            "created_at": "Wed Oct 11 13:00:09 +0000 2017",
            "text": "@76328 I really hope you all change but I'm sure you won't! Because you don't "
            "have to!",
        },
        {
            "id": "119238",
            "author_id": "105835",
            "created_at": "Wed Oct 11 13:25:49 +0000 2017",
            "in_reply_to_tweet_id": "119239",
            "text": "@105835 Your business means a lot to us. Please DM your name, zip code and "
            "additional details about your concern. ^RR https://t.co/znUu1VJn9r",
        },
    ]
}


def test_mention() -> None:
    (tweet,) = social.parse(json.dumps(MENTION).encode())
    assert isinstance(tweet, Inbound)
    assert tweet.channel == "twitter"
    assert (tweet.provider_message_id, tweet.reply_to, tweet.references) == (
        "1720",
        "1719",
        ("1700",),
    )
    ids = {(s.identifier.scope, s.identifier.value, s.trust) for s in tweet.sender}
    assert ids == {("twitter", "ann_b", Trust.ASSERTED), ("twitter.id", "2244", Trust.ASSERTED)}
    assert tweet.content.attachments[0].media_id == "3_99"
    assert tweet.sent_at == datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def test_direct_messages() -> None:
    dm, join = social.parse(DMS)
    assert isinstance(dm, Inbound)
    assert dm.channel == "twitter.dm" and dm.content.metadata["visibility"] == "private"
    assert dm.references == ("1000-2244",)
    assert isinstance(join, Unsupported) and join.kind == "ParticipantsJoin"


def test_corpus_rows_thread_by_in_reply_to_and_v11_dates() -> None:
    first, reply = social.parse(TWCS)
    assert isinstance(first, Inbound) and isinstance(reply, Inbound)
    assert reply.reply_to == first.provider_message_id == "119239"
    assert first.sent_at == datetime(2017, 10, 11, 13, 0, 9, tzinfo=timezone.utc)
    # No username in includes: the numeric id still identifies the author.
    assert [s.identifier.scope for s in first.sender] == ["twitter.id"]


def test_retweets_are_unsupported() -> None:
    rt = {"data": {**MENTION["data"], "referenced_tweets": [{"type": "retweeted", "id": "1"}]}}
    (u,) = social.parse(rt)
    assert isinstance(u, Unsupported) and u.kind == "retweet"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"data": []},
        {"data": {"text": "x"}},
        {"data": {**MENTION["data"], "created_at": "x"}},
        {"data": {k: v for k, v in MENTION["data"].items() if k != "author_id"}},
        {
            "data": [
                {"id": "1", "event_type": "MessageCreate", "created_at": "2026-03-02T09:00:00Z"}
            ]
        },
        b"[]",
        "nope",
    ],
)
def test_malformed_payloads_raise_parse_error(payload: Any) -> None:
    with pytest.raises(ParseError):
        social.parse(payload)


def test_weighted_length() -> None:
    assert weighted_length("hello") == 5
    assert weighted_length("日本") == 4
    assert weighted_length("see https://example.com/a/very/long/path/indeed") == 4 + 23


def test_render_public_reply_and_dm() -> None:
    r = social.render(
        Outbound(text="Sorry! " * 60, reply_to="1720", quick_replies=(QuickReply(title="DM us"),))
    )
    assert weighted_length(r.text) <= 280 and r.text.endswith("…")
    assert r.payloads[0]["reply"] == {"in_reply_to_tweet_id": "1720"}
    dm = social.render(
        Outbound(
            text="Order 8812 ships today",
            thread_ref="1000-2244",
            quick_replies=(QuickReply(title="Thanks"),),
        )
    )
    assert dm.channel == "twitter.dm"
    assert dm.text == "Order 8812 ships today\n\n1. Thanks"


class TestSocialConformance(ChannelAdapterConformance):
    adapter = social.adapter
    samples = [json.dumps(MENTION).encode(), json.dumps(DMS).encode(), TWCS]
    required_fields = [("data",), ("data", "id"), ("data", "author_id"), ("data", "created_at")]
    outbound_to = ""

    def text_length(self, text: str) -> int:
        return weighted_length(text)

    def echo(self, payload: Any) -> Any:
        return {
            "data": {
                "id": "1",
                "author_id": "1000",
                "text": payload["text"],
                "created_at": "2026-03-02T09:00:00Z",
            }
        }
