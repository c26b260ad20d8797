"""Property tests of handler.py, using convthread's strategies, journeys and fixtures.

Nothing is imported by hand for the fixtures: convthread's pytest plugin provides
``convthread_conversations_factory`` and ``convthread_conversations``.
Set ``DOWNSTREAM_HANDLER=broken_handler`` to see a buggy handler caught.
"""

from __future__ import annotations

import importlib
import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convthread import Content, Inbound, SenderIdentifier, Trust, phone
from convthread.testing import journeys

handler = importlib.import_module(os.environ.get("DOWNSTREAM_HANDLER", "handler"))

# The factory fixture makes a fresh Conversations per example, so sharing the fixture
# across examples is intended.
examples = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@examples
@given(journey=journeys(max_personas=2, max_steps=8))
def test_every_message_is_routed_once_and_a_thread_stays_in_its_queue(
    convthread_conversations_factory, journey
):
    convs = convthread_conversations_factory()
    webhook = handler.SupportWebhook(convs)
    # Replay the journey through the handler; convthread's expectations are checked too.
    journey.play(convs, ingest=lambda inbound: webhook.handle(msgspec.json.encode(inbound)))

    assert len(webhook.routed) == journey.distinct_messages
    queue_of: dict[str, str] = {}
    for routed in webhook.routed:
        assert queue_of.setdefault(routed.thread_id, routed.queue) == routed.queue


@examples
@given(inbound=st.from_type(Inbound))  # registered by convthread's Hypothesis plugin
def test_any_inbound_message_is_routed(convthread_conversations_factory, inbound):
    webhook = handler.SupportWebhook(convthread_conversations_factory())
    result = webhook.handle(msgspec.json.encode(inbound))
    assert [r.provider_message_id for r in webhook.routed] == [inbound.provider_message_id]
    assert webhook.routed[0].thread_id == result.thread_id


@pytest.mark.parametrize("convthread_store", ["memory", "sqlite"], indirect=True)
def test_a_retry_is_not_routed_twice(convthread_conversations, convthread_clock):
    inbound = Inbound(
        channel="sms",
        provider_message_id="SM0001",
        sender=(SenderIdentifier(phone("+447400123456"), Trust.ASSERTED),),
        content=Content(text="Where is my order? 📦"),
        sent_at=convthread_clock.now(),
    )
    webhook = handler.SupportWebhook(convthread_conversations)
    body = msgspec.json.encode(inbound)
    first = webhook.handle(body)
    convthread_clock.advance(minutes=2)
    again = webhook.handle(body)
    assert again.duplicate and again.thread_id == first.thread_id
    assert len(webhook.routed) == 1
