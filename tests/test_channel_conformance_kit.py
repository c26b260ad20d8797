"""The conformance kit itself: it must catch broken adapters, not only pass good ones."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from convthread.channels import whatsapp
from convthread.channels.base import (
    Capabilities,
    Outbound,
    Rendered,
    degrade,
    guard,
    load_json,
)
from convthread.domain.identifiers import session
from convthread.domain.model import Content, Inbound, SenderIdentifier, Trust
from convthread.domain.updates import ChannelResult
from convthread.errors import ParseError
from convthread.testing.channel_conformance import ChannelAdapterConformance

SAMPLE = b'{"id": "1", "session": "s1", "at": 1700000000, "text": "hi"}'
CAPS = Capabilities(channel="pigeon", max_text=200)


class GoodAdapter:
    channel = "pigeon"
    capabilities = CAPS

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        data = load_json("pigeon", payload)
        with guard("pigeon"):
            from datetime import datetime, timezone

            if not isinstance(data, dict):
                raise ParseError("pigeon", "not an object")
            return [
                Inbound(
                    channel="pigeon",
                    provider_message_id=str(data["id"]),
                    sender=(SenderIdentifier(session(str(data["session"])), Trust.ASSERTED),),
                    content=Content(text=str(data.get("text", ""))),
                    sent_at=datetime.fromtimestamp(data["at"], tz=timezone.utc),
                )
            ]

    def render(self, outbound: Outbound) -> Rendered:
        body, options, _notes = degrade(outbound, CAPS)
        text = "\n".join(p for p in (body, options) if p)[:200]
        return Rendered(channel="pigeon", payloads=({"text": text},), text=text)


class UnguardedAdapter(GoodAdapter):
    """Forgets to check one field: a payload without ``id`` escapes as KeyError."""

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        data = load_json("pigeon", payload)
        if not isinstance(data, dict):
            raise ParseError("pigeon", "not an object")
        message_id = data["id"]  # the bug: KeyError instead of ParseError
        return super().parse({**data, "id": message_id})


class LenientAdapter(GoodAdapter):
    """Invents an id when the payload has none: a required field goes unchecked."""

    def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
        data = load_json("pigeon", payload)
        if isinstance(data, dict) and "id" not in data:
            data = {**data, "id": "made-up"}
        return super().parse(data)


class OverlongAdapter(GoodAdapter):
    """Ignores its own max_text."""

    def render(self, outbound: Outbound) -> Rendered:
        return Rendered(channel="pigeon", payloads=({"text": outbound.text},), text=outbound.text)


def _suite(adapter: Any) -> type[ChannelAdapterConformance]:
    class Suite(ChannelAdapterConformance):
        pass

    Suite.adapter = adapter
    Suite.samples = [SAMPLE]
    Suite.required_fields = [("id",), ("session",), ("at",)]
    return Suite


def test_a_good_adapter_passes_every_check() -> None:
    outcome = _suite(GoodAdapter()).run_all()
    assert outcome["test_mutated_samples_raise_only_parse_error"] == "passed"
    assert outcome["test_round_trip_keeps_the_rendered_text"].startswith("skipped")
    assert sum(v == "passed" for v in outcome.values()) == len(outcome) - 1


def test_the_kit_catches_exceptions_other_than_parse_error() -> None:
    suite = _suite(UnguardedAdapter())
    # The kit's own test, run without its shrink phase (shrinking is what makes a failing
    # fuzz test slow; the kit keeps it for adapter authors, who want minimal examples).
    inner = ChannelAdapterConformance.test_mutated_samples_raise_only_parse_error
    fast = given(data=st.data())(
        settings(max_examples=200, phases=[Phase.generate], database=None, deadline=None)(
            inner.hypothesis.inner_test  # type: ignore[attr-defined]
        )
    )
    with pytest.raises(KeyError):
        fast(suite())


def test_the_kit_catches_unchecked_required_fields() -> None:
    with pytest.raises(AssertionError, match="required field"):
        _suite(LenientAdapter())().test_required_fields_are_checked()


def test_the_kit_catches_renderings_over_capabilities() -> None:
    with pytest.raises(AssertionError, match="over max_text"):
        _suite(OverlongAdapter())().test_render_stays_within_capabilities()
    with pytest.raises(AssertionError, match="over max_text"):
        _suite(OverlongAdapter())().test_long_text_is_cut_to_capabilities()


def test_the_kit_catches_samples_that_parse_to_nothing() -> None:
    class Empty(GoodAdapter):
        def parse(self, payload: Any, **options: Any) -> list[ChannelResult]:
            return []

    with pytest.raises(AssertionError, match="no result"):
        _suite(Empty())().test_samples_parse_to_typed_results()


def test_the_kit_catches_broken_round_trips() -> None:
    class Suite(ChannelAdapterConformance):
        adapter = whatsapp.adapter
        samples: Any = []
        outbound_to = "16505551234"

        def echo(self, payload: Any) -> Any:  # loses the last character on the way
            return {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messages": [
                                        {
                                            "from": "16505551234",
                                            "id": "w",
                                            "timestamp": "1",
                                            "type": "text",
                                            "text": {"body": payload["text"]["body"][:-1] or "x"},
                                        }
                                    ]
                                },
                            }
                        ]
                    }
                ],
            }

    with pytest.raises(AssertionError):
        Suite().test_round_trip_keeps_the_rendered_text()
