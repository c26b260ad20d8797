"""SMS segments, counted exactly (3GPP TS 23.038 GSM-7 default alphabet and UCS-2).

* Text made only of GSM-7 basic characters and extension characters is sent as GSM-7:
  a basic character costs one septet, an extension character (``^{}\\[~]|€`` and form
  feed) costs two (escape + character). One segment holds 160 septets; a concatenated
  message holds 153 per segment (the user data header takes 7), and an escape pair is
  never split across segments.
* Any other character makes the whole message UCS-2 (UTF-16): 70 code units in one
  segment, 67 per segment when concatenated; a character outside the Basic Multilingual
  Plane (most emoji) takes two code units, and a surrogate pair is never split.

No national language shift tables are used (they are optional and rarely supported).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "SegmentCount",
    "count_segments",
    "encoding_of",
    "fit_segments",
    "split_segments",
]

GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) - {"\x1b"}
GSM7_EXTENSION: Final = frozenset("^{}\\[~]|€\f")

Encoding = Literal["gsm7", "ucs2"]


class SegmentCount(msgspec.Struct, frozen=True):
    """How a text goes over SMS: its encoding, the number of segments, and its length in
    encoding units (septets for GSM-7, UTF-16 code units for UCS-2)."""

    encoding: Encoding
    segments: int
    units: int


def encoding_of(text: str) -> Encoding:
    """``"gsm7"`` if every character is in the GSM-7 alphabet, else ``"ucs2"``."""
    for ch in text:
        if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION:
            return "ucs2"
    return "gsm7"


def _unit_costs(text: str, encoding: Encoding) -> list[int]:
    if encoding == "gsm7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _limits(encoding: Encoding) -> tuple[int, int]:
    return (160, 153) if encoding == "gsm7" else (70, 67)


def split_segments(text: str) -> list[str]:
    """Split ``text`` into the segments a phone would receive (never splitting an escape
    pair or a surrogate pair). An empty text is one empty segment."""
    encoding = encoding_of(text)
    costs = _unit_costs(text, encoding)
    single, multi = _limits(encoding)
    if sum(costs) <= single:
        return [text]
    parts: list[str] = []
    start = 0
    used = 0
    for i, cost in enumerate(costs):
        if used + cost > multi:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts


def count_segments(text: str) -> SegmentCount:
    """The encoding, the number of segments and the unit length of ``text``."""
    encoding = encoding_of(text)
    units = sum(_unit_costs(text, encoding))
    single, _multi = _limits(encoding)
    segments = 1 if units <= single else len(split_segments(text))
    return SegmentCount(encoding, segments, units)


def fit_segments(text: str, max_segments: int, *, ellipsis: str = "…") -> str:
    """The longest prefix of ``text`` (plus ``ellipsis`` if cut) that fits in
    ``max_segments`` segments. The ellipsis may switch the text to UCS-2; pass
    ``ellipsis="..."`` to stay in GSM-7."""
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    if count_segments(text).segments <= max_segments:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # largest prefix length n such that prefix + ellipsis fits
        mid = (lo + hi + 1) // 2
        if count_segments(text[:mid].rstrip() + ellipsis).segments <= max_segments:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ellipsis
