"""Rendering within a budget: text, Markdown, SMS (checked against the segment
counter), voice. Budgets are honoured to the character."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.render import duration_text, render, to_gsm7
from convthread.domain.segments import count_segments, encoding_of
from convthread.domain.snapshot import Snapshot
from convthread.errors import ValidationError
from convthread.stores import MemoryStore
from tests._thread_util import msg

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _snapshot(texts: list[str], audience: str = "agent") -> Snapshot:
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(MemoryStore(), clock=clock, ids=ct.SequentialIds())
    session = convs.ingest(msg("m0", channel="webchat", text=texts[0] if texts else "hi"))
    tid = session.thread_id
    convs.set_attribute(tid, "order", "A-1001")
    convs.record_intent(tid, "refund", confidence=0.9)
    for i, text in enumerate(texts[1:], start=1):
        clock.advance(seconds=45)
        if i % 2:
            convs.send(tid, text, sender="bot:helper")
        else:
            convs.ingest(
                msg(f"m{i}", channel="sms" if i % 4 else "webchat", text=text, at=clock.now())
            )
    h = convs.request_handoff(tid, to="queue:support", reason="asked for a person")
    clock.advance(minutes=3)
    convs.offer_handoff(h.id, to="agent:ann")
    if audience == "customer":
        return convs.snapshot(tid, audience=audience, session=session)
    return convs.snapshot(tid, audience=audience)


TEXTS = [
    "Hello, my parcel A-1001 has not arrived.",
    "Sorry to hear that! Let me check.",
    "It was due on Monday — the tracking says “delivered” but it isn't here 📦",
    "I can see it was left with a neighbour.",
    "Which neighbour?? I want to talk to a person please. Ça suffit.",
]
texts = st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=6)


def test_text_and_markdown_show_the_context() -> None:
    snap = _snapshot(TEXTS)
    text = render(snap, "text")
    assert "Thread th_0001 (open)" in text and "order: A-1001" in text
    assert "Journey: webchat → sms → webchat" in text
    assert "Which neighbour??" in text and "Intents: refund (90%)" in text
    md = render(snap, "markdown")
    assert md.startswith("### Thread th\\_0001 (open)")
    assert "> **customer** · webchat" in md and "**Waiting:**" in md
    assert "\\*" not in render(_snapshot(["plain"]), "markdown").replace("\\_", "")


@settings(max_examples=30)
@given(texts=texts, budget=st.integers(0, 400), fmt=st.sampled_from(["text", "markdown", "voice"]))
def test_character_budgets_are_exact(texts: list[str], budget: int, fmt: str) -> None:
    snap = _snapshot(texts)
    out = render(snap, fmt, max_chars=budget)
    assert len(out) <= budget
    full = render(snap, fmt)
    if len(full) <= budget:
        assert out == full  # nothing is cut when everything fits
    elif budget >= 2:
        assert out  # the header, cut if need be, at least


@settings(max_examples=30)
@given(
    texts=texts,
    segments=st.integers(1, 4),
    encoding=st.sampled_from(["auto", "gsm7", "ucs2"]),
    audience=st.sampled_from(["agent", "bot_vendor", "customer"]),
)
def test_sms_fits_the_segments_exactly(
    texts: list[str], segments: int, encoding: str, audience: str
) -> None:
    snap = _snapshot(texts, audience)
    out = render(snap, "sms", segments=segments, encoding=encoding)  # type: ignore[arg-type]
    count = count_segments(out)
    assert count.segments <= segments
    if encoding == "gsm7":
        assert count.encoding == "gsm7" and encoding_of(out) == "gsm7"
    assert out.startswith(snap.thread_id[: min(len(out), len(snap.thread_id))])


def test_sms_uses_the_room_it_has() -> None:
    snap = _snapshot(TEXTS * 3)
    one = render(snap, "sms", segments=1, encoding="gsm7")
    three = render(snap, "sms", segments=3, encoding="gsm7")
    assert count_segments(one) == count_segments(one)
    assert count_segments(one).segments == 1 and count_segments(three).segments <= 3
    assert count_segments(one).units > 120  # a single segment is nearly full
    assert len(three) > 2 * len(one)
    ucs = render(snap, "sms", segments=2, encoding="auto")
    assert count_segments(ucs).segments <= 2
    with pytest.raises(ValidationError):
        render(snap, "sms", segments=0)


def test_voice_is_short_plain_sentences() -> None:
    assert "Came by web chat, then SMS, then web chat." in render(_snapshot(TEXTS), "voice")
    long = "See https://example.com/track?id=1 and **call** me, " + "word " * 40
    snap = _snapshot([*TEXTS, long, "Still waiting 📦 — hello?"])
    spoken = render(snap, "voice")
    assert "http" not in spoken and "*" not in spoken and "→" not in spoken
    assert "a link" in spoken
    sentences = [s for s in spoken.replace("?", ".").replace("!", ".").split(". ") if s]
    assert max(len(s.split()) for s in sentences) <= 16
    assert "Waiting" in spoken and "minutes" in spoken
    assert "Started on web chat. Now on SMS" in spoken and "📦" not in spoken and "—" not in spoken


def test_helpers_and_errors() -> None:
    assert duration_text(0) == "0s" and duration_text(59) == "59s"
    assert duration_text(3660) == "1h 1m" and duration_text(90061) == "1d 1h"
    assert duration_text(125, spoken=True) == "2 minutes"
    assert duration_text(3600, spoken=True) == "1 hour"
    assert to_gsm7("“quoted” — ok… ☃") == '"quoted" - ok... ?'
    snap = _snapshot(["hi"])
    with pytest.raises(ValidationError):
        render(snap, "pdf")
    with pytest.raises(ValidationError):
        render(snap, "text", max_chars=-1)
    assert snap.render("text") == render(snap, "text")
