"""Conformance kit for channel adapters.

Subclass :class:`ChannelAdapterConformance` in a test module (name the subclass
``Test...`` so pytest collects it) and set the class attributes::

    from convthread.testing.channel_conformance import ChannelAdapterConformance

    class TestMyChannel(ChannelAdapterConformance):
        adapter = MyAdapter()
        samples = [b'{"id": "1", "from": "+14155550100", "text": "hi"}']
        required_fields = [("id",), ("from",)]      # paths into required_sample
        outbound_to = "+14155550100"

        def echo(self, payload):                     # optional: enables round trips
            ...                                      # rendered payload -> inbound payload

What it checks:

* the adapter satisfies :class:`~convthread.channels.base.ChannelAdapter`, and its
  capabilities are for its channel;
* every sample parses to at least one typed result (inbound, status, edit, deletion,
  reaction or unsupported), deterministically, and every result is JSON-encodable;
* removing any of ``required_fields`` from ``required_sample`` (default: the first
  sample) raises ParseError;
* fuzzing: arbitrary bytes, arbitrary text, truncated samples, byte-flipped samples and
  structurally mutated samples (JSON: deleted keys, replaced values, swapped types; form
  fields: dropped, added or rewritten fields) either parse to typed results or raise
  :class:`~convthread.errors.ParseError`; never another exception;
* the receive time comes from the caller: every sample is parsed with ``clock=`` set to
  two :class:`~convthread.ports.ManualClock` s far apart; results stamped with the
  receive time (``time_source=TimeSource.RECEIVED``) carry the clock's time, and the
  fingerprint of every inbound message is the same both times: ingested into a service,
  the second delivery is a duplicate, never an
  :class:`~convthread.errors.IdempotencyError`;
* render takes whole :class:`~convthread.channels.base.Outbound` values
  (:func:`~convthread.testing.strategies.channel_outbounds`: text, quick replies, option
  lists, cards, attachments, odd reply-to and reference ids, subjects) and either stays
  within the capabilities (text length via :meth:`text_length`, exact SMS segments when
  ``max_segments`` is set) or refuses with a typed
  :class:`~convthread.errors.ConvthreadError`, never another exception; degraded options
  show up in the text when the channel has no native quick replies;
* round trip, when :meth:`echo` is defined: the text of a rendered message, delivered
  back through ``parse``, is the rendered text exactly.

The fuzz tests use the Hypothesis profile active when this module is imported (its
``max_examples``). Outside pytest, ``TestMyChannel.run_all()`` runs every check.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convthread.channels.base import (
    Capabilities,
    ChannelAdapter,
    Outbound,
    QuickReply,
    Rendered,
)
from convthread.codec import fingerprint
from convthread.domain.model import Channel, Inbound, TimeSource
from convthread.domain.segments import count_segments
from convthread.domain.updates import (
    ChannelResult,
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.errors import ConvthreadError, ParseError
from convthread.ports import ManualClock
from convthread.service import Conversations
from convthread.testing.strategies import channel_outbounds

__all__ = [
    "ChannelAdapterConformance",
    "json_values",
    "mutate_json",
]

RESULT_TYPES = (Inbound, StatusReport, EditReport, DeletionReport, ReactionReport, Unsupported)

_FUZZ = settings(
    suppress_health_check=[
        HealthCheck.differing_executors,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    deadline=None,
)

#: JSON values, including the awkward ones: big and negative numbers, non-finite floats
#: (Python's json module reads ``NaN`` and ``Infinity``), empty and very long strings.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(["", " ", "0", "-1", "1e400", "+1", "x" * 600, "\x00", "\r\n", "📦"]),
)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Arbitrary JSON-compatible values (nested lists and objects of scalars)."""
    return st.recursive(
        _SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.text(max_size=10), children, max_size=3),
        ),
        max_leaves=max_leaves,
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out.extend(_paths(child, (*prefix, i)))
    return out


def _delete(value: Any, path: tuple[Any, ...]) -> Any:
    """A deep copy of ``value`` without the node at ``path`` (the root cannot go)."""
    result = copy.deepcopy(value)
    node = result
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return result


def mutate_json(value: Any, data: st.DataObject, *, rounds: int = 3) -> Any:
    """Apply up to ``rounds`` random structural mutations to a JSON value: delete a key
    or item, replace a node by an arbitrary JSON value, or change a node's type."""
    result = copy.deepcopy(value)
    for _ in range(data.draw(st.integers(1, rounds), label="mutations")):
        paths = _paths(result)
        path = data.draw(st.sampled_from(paths), label="path")
        op = data.draw(st.sampled_from(["delete", "replace", "retype"]), label="op")
        if op == "delete" and path:
            result = _delete(result, path)
            continue
        new: Any
        if op == "retype":
            retypes: list[Any] = [None, [], {}, 0, "", True, 1.5]
            new = data.draw(st.sampled_from(retypes), label="retype")
        else:
            new = data.draw(json_values(), label="replacement")
        if not path:
            result = new
            continue
        node = result
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = new
    return result


def _as_json(sample: Any) -> Any | None:
    """The decoded JSON of a sample, or None when the sample is not JSON."""
    if isinstance(sample, (dict, list)):
        return sample
    if isinstance(sample, (bytes, str)):
        text = sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
        if text.lstrip()[:1] in ("{", "["):
            try:
                return json.loads(text)
            except ValueError:
                return None
    return None


def _as_bytes(sample: Any) -> bytes:
    if isinstance(sample, bytes):
        return sample
    if isinstance(sample, str):
        return sample.encode("utf-8")
    if _is_form(sample):
        return urlencode(sample).encode("ascii")
    return json.dumps(sample).encode("utf-8")


def _is_form(sample: Any) -> bool:
    return (
        isinstance(sample, Mapping)
        and bool(sample)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in sample.items())
    )


_WORDS = st.text(
    alphabet=st.sampled_from(
        [
            *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.!?'()",
            *("é", "ü", "ß", "€", "中", "文", "😀", "ä", "ñ", "{", "}"),
        ]
    ),
    min_size=1,
    max_size=12,
)
#: Texts for round trips: words separated by single spaces (no leading quote markers,
#: no signature delimiters, no leading or trailing whitespace).
ROUND_TRIP_TEXTS = st.lists(_WORDS, min_size=1, max_size=40).map(" ".join)


class ChannelAdapterConformance:
    """Conformance tests for a channel adapter; subclass it and set the attributes."""

    #: The adapter under test (required).
    adapter: ClassVar[Any] = None
    #: Real payloads the adapter must parse (required, at least one).
    samples: ClassVar[Sequence[Any]] = ()
    #: Keyword options passed to every ``parse`` call (e.g. ``received_at``).
    parse_options: ClassVar[Mapping[str, Any]] = {}
    #: Paths into ``required_sample`` (keys and list indexes) whose removal must raise
    #: ParseError; for form samples, field names as one-element tuples.
    required_fields: ClassVar[Sequence[tuple[Any, ...]]] = ()
    #: The payload ``required_fields`` are removed from (default: ``samples[0]``).
    required_sample: ClassVar[Any] = None
    #: Addresses for rendered messages.
    outbound_to: ClassVar[str] = "+14155550100"
    outbound_sender: ClassVar[str] = ""

    # ---------------------------------------------------------------- hooks

    def parse(self, payload: Any) -> list[ChannelResult]:
        """Parse through the adapter with :attr:`parse_options`."""
        results: list[ChannelResult] = self.adapter.parse(payload, **dict(self.parse_options))
        return results

    def echo(self, payload: Any) -> Any:
        """Turn a rendered provider payload into the inbound payload the channel would
        deliver for it, for round trips; return ``NotImplemented`` (the default) where the
        channel has no such echo."""
        return NotImplemented

    def text_length(self, text: str) -> int:
        """The length the channel counts against ``max_text`` (override for weighted
        counts such as X's)."""
        return len(text)

    # ---------------------------------------------------------------- helpers

    def _check_results(self, results: Any) -> None:
        assert isinstance(results, list), f"parse must return a list, got {type(results)}"
        for result in results:
            assert isinstance(result, RESULT_TYPES), f"untyped result {result!r}"
            Channel.validate(result.channel)
            msgspec.json.encode(result)

    def _parse_or_parse_error(self, payload: Any) -> None:
        try:
            results = self.parse(payload)
        except ParseError:
            return
        self._check_results(results)

    # ---------------------------------------------------------------- protocol

    def test_adapter_satisfies_the_protocol(self) -> None:
        assert self.adapter is not None, "set `adapter` on the conformance subclass"
        assert isinstance(self.adapter, ChannelAdapter)
        Channel.validate(self.adapter.channel)
        caps = self.adapter.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.channel == self.adapter.channel

    def test_samples_parse_to_typed_results(self) -> None:
        assert self.samples, "set `samples` (real payloads) on the conformance subclass"
        for sample in self.samples:
            results = self.parse(sample)
            self._check_results(results)
            assert results, f"sample parsed to no result: {sample!r:.200}"

    def test_parse_is_deterministic(self) -> None:
        for sample in self.samples:
            assert self.parse(sample) == self.parse(copy.deepcopy(sample))

    def test_required_fields_are_checked(self) -> None:
        if not self.required_fields:
            pytest.skip("no required_fields declared")
        sample = self.required_sample if self.required_sample is not None else self.samples[0]
        decoded = _as_json(sample)
        for path in self.required_fields:
            if decoded is not None:
                mutated: Any = _delete(decoded, path)
                payload: Any = json.dumps(mutated).encode("utf-8")
            elif _is_form(sample):
                payload = {k: v for k, v in sample.items() if k != path[0]}
            else:
                raise AssertionError("required_fields needs a JSON or form-fields sample")
            try:
                results = self.parse(payload)
            except ParseError:
                continue
            raise AssertionError(
                f"removing required field {path!r} did not raise ParseError: {results!r:.300}"
            )

    def test_non_payloads_raise_parse_error(self) -> None:
        for junk in (None, 42, 1.5, object(), [], {}, b"", "", b"\xff\xfe\x00", "{", "[1,"):
            self._parse_or_parse_error(junk)

    # ---------------------------------------------------------------- fuzzing

    @_FUZZ
    @given(payload=st.binary(max_size=4096))
    def test_arbitrary_bytes_raise_only_parse_error(self, payload: bytes) -> None:
        self._parse_or_parse_error(payload)

    @_FUZZ
    @given(payload=st.text(max_size=2048))
    def test_arbitrary_text_raises_only_parse_error(self, payload: str) -> None:
        self._parse_or_parse_error(payload)

    @_FUZZ
    @given(data=st.data())
    def test_truncated_and_flipped_samples_raise_only_parse_error(
        self, data: st.DataObject
    ) -> None:
        sample = data.draw(st.sampled_from(list(self.samples)), label="sample")
        raw = _as_bytes(sample)
        if not raw:
            return
        cut = data.draw(st.integers(0, len(raw)), label="cut")
        self._parse_or_parse_error(raw[:cut])
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=8),
            label="flips",
        )
        flipped = bytearray(raw)
        for pos, byte in flips:
            flipped[pos] = byte
        self._parse_or_parse_error(bytes(flipped))

    @_FUZZ
    @given(data=st.data())
    def test_mutated_samples_raise_only_parse_error(self, data: st.DataObject) -> None:
        sample = data.draw(st.sampled_from(list(self.samples)), label="sample")
        decoded = _as_json(sample)
        if decoded is not None:
            mutated = mutate_json(decoded, data)
            if isinstance(mutated, (dict, list)):
                self._parse_or_parse_error(mutated)
            self._parse_or_parse_error(json.dumps(mutated).encode("utf-8"))
            return
        if _is_form(sample):
            fields = dict(sample)
            for _ in range(data.draw(st.integers(1, 3), label="mutations")):
                op = data.draw(st.sampled_from(["drop", "set", "add"]), label="op")
                if op == "drop" and fields:
                    fields.pop(data.draw(st.sampled_from(sorted(fields)), label="key"))
                elif op == "set" and fields:
                    key = data.draw(st.sampled_from(sorted(fields)), label="key")
                    fields[key] = data.draw(st.text(max_size=40), label="value")
                else:
                    key = data.draw(st.text(min_size=1, max_size=12), label="new key")
                    fields[key] = data.draw(st.text(max_size=40), label="value")
            self._parse_or_parse_error(fields)
            self._parse_or_parse_error(urlencode(fields).encode("ascii"))
            return
        raw = bytearray(_as_bytes(sample))
        pos = data.draw(st.integers(0, len(raw)), label="pos")
        insert = data.draw(st.binary(max_size=64), label="insert")
        raw[pos:pos] = insert
        self._parse_or_parse_error(bytes(raw))

    # ---------------------------------------------------------------- receive time

    def test_redelivery_received_later_is_a_duplicate(self) -> None:
        options = {k: v for k, v in self.parse_options.items() if k not in ("received_at",)}
        early = ManualClock(datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
        late = ManualClock(datetime(2031, 6, 7, 8, 9, 10, tzinfo=timezone.utc))
        for sample in self.samples:
            first = self.adapter.parse(copy.deepcopy(sample), **{**options, "clock": early})
            again = self.adapter.parse(copy.deepcopy(sample), **{**options, "clock": late})
            self._check_results(first)
            assert len(first) == len(again), (first, again)
            for one, other in zip(first, again, strict=True):
                if not isinstance(one, Inbound):
                    continue
                assert isinstance(other, Inbound), (one, other)
                if one.time_source is TimeSource.RECEIVED:
                    assert one.sent_at == early.now(), (one.sent_at, "not the clock's time")
                    assert other.sent_at == late.now(), (other.sent_at, "not the clock's time")
                else:
                    assert one.sent_at == other.sent_at, "a provider time that moves with the clock"
                assert fingerprint(one) == fingerprint(other), (
                    f"the fingerprint of {one.provider_message_id!r} covers the receive time"
                )
                convs = Conversations("memory://", clock=early)
                stored = convs.ingest(one)
                retried = convs.ingest(other)
                assert retried.duplicate, f"a redelivery of {one.provider_message_id!r} was stored"
                assert retried.event == stored.event, "the first delivery's record must stand"

    # ---------------------------------------------------------------- rendering

    def _outbound(self, **fields: Any) -> Outbound:
        return Outbound(to=self.outbound_to, sender=self.outbound_sender, **fields)

    def _check_rendered(self, rendered: Rendered) -> None:
        assert isinstance(rendered, Rendered)
        Channel.validate(rendered.channel)
        assert rendered.payloads, "render produced no payload"
        caps: Capabilities = self.adapter.capabilities
        if caps.max_text is not None and rendered.channel == caps.channel:
            length = self.text_length(rendered.text)
            assert length <= caps.max_text, f"text of {length} over max_text {caps.max_text}"
        if caps.max_segments is not None:
            exact = count_segments(rendered.text)
            assert exact.segments <= caps.max_segments, (exact, caps.max_segments)
            assert rendered.segments == exact, (rendered.segments, exact)

    @_FUZZ
    @given(data=st.data())
    def test_render_stays_within_capabilities(self, data: st.DataObject) -> None:
        text = data.draw(
            st.one_of(
                st.text(max_size=2000),
                st.tuples(
                    st.sampled_from(["a", "{", "ж", "😀", "word "]), st.integers(1, 4000)
                ).map(lambda pair: pair[0] * pair[1]),
            ),
            label="text",
        )
        replies = data.draw(
            st.lists(st.text(min_size=1, max_size=30), max_size=12), label="quick replies"
        )
        outbound = self._outbound(
            text=text or "hello",
            quick_replies=tuple(
                QuickReply(title=t, payload=f"p{i}") for i, t in enumerate(replies)
            ),
        )
        self._check_rendered(self.adapter.render(outbound))

    @_FUZZ
    @given(data=st.data())
    def test_whole_outbound_values_render_or_raise_a_typed_error(self, data: st.DataObject) -> None:
        outbound = data.draw(
            channel_outbounds(to=self.outbound_to, sender=self.outbound_sender), label="outbound"
        )
        try:
            rendered = self.adapter.render(outbound)
        except ConvthreadError:
            return
        self._check_rendered(rendered)

    def test_long_text_is_cut_to_capabilities(self) -> None:
        for text in ("word " * 30_000, "ж" * 20_000, "😀" * 20_000 + "x"):
            self._check_rendered(self.adapter.render(self._outbound(text=text)))

    def test_options_degrade_to_text_without_native_quick_replies(self) -> None:
        caps: Capabilities = self.adapter.capabilities
        titles = ("Track order", "Refund", "Agent", "Other")
        rendered = self.adapter.render(
            self._outbound(
                text="How can we help?",
                quick_replies=tuple(QuickReply(title=t) for t in titles),
            )
        )
        self._check_rendered(rendered)
        if caps.quick_replies < len(titles):
            for i, title in enumerate(titles, 1):
                assert title in rendered.text, f"option {title!r} missing from {rendered.text!r}"
                assert str(i) in rendered.text

    @_FUZZ
    @given(text=ROUND_TRIP_TEXTS)
    def test_round_trip_keeps_the_rendered_text(self, text: str) -> None:
        rendered = self.adapter.render(self._outbound(text=text))
        inbound_payload = self.echo(rendered.payloads[0])
        if inbound_payload is NotImplemented:
            pytest.skip("the adapter's channel has no echo (set `echo` for round trips)")
        results = self.parse(inbound_payload)
        inbound = [r for r in results if isinstance(r, Inbound)]
        assert len(inbound) == 1, results
        assert inbound[0].content.text == rendered.text

    # ---------------------------------------------------------------- outside pytest

    @classmethod
    def run_all(cls) -> dict[str, str]:
        """Run every check of this suite without pytest (in a script, a notebook, the docs):
        returns ``{test name: "passed" | "skipped: <reason>"}`` and raises the first
        failure."""
        outcome: dict[str, str] = {}
        for name in sorted(dir(cls)):
            if not name.startswith("test_"):
                continue
            try:
                getattr(cls(), name)()
            except pytest.skip.Exception as exc:
                outcome[name] = f"skipped: {exc.msg}"
            else:
                outcome[name] = "passed"
        return outcome
