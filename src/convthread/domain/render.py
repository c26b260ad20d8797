"""Rendering a snapshot within a channel's budget.

Formats:

* ``"text"``: plain text for logs and simple desktops; budget ``max_chars``.
* ``"markdown"``: for an agent desktop (headings, bold labels, quoted messages, user text
  escaped); budget ``max_chars``.
* ``"sms"``: compact text that fits ``segments`` SMS segments, counted exactly by
  :mod:`convthread.domain.segments`. ``encoding="gsm7"`` transliterates what GSM-7
  cannot carry (so the message stays in 153/160-septet segments); ``"auto"`` keeps the
  text and lets it be UCS-2 when it must.
* ``"voice"``: short sentences to be read aloud by a text-to-speech whisper (no symbols,
  no URLs, durations in words); budget ``max_chars``.

Budgets are exact: the result is never longer than ``max_chars`` characters (or more
segments than ``segments``). Content is chosen by priority: the header first, then the
newest message, the waiting time, the journey, attributes, intents, older messages and
the handoff history; the newest message is shortened (with an ellipsis) rather than
dropped when it alone does not fit; when even the header does not fit it is cut.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Final, Literal

from convthread.domain.segments import GSM7_BASIC, GSM7_EXTENSION, count_segments, fit_segments
from convthread.domain.snapshot import MessageItem, Snapshot
from convthread.errors import ValidationError

__all__ = ["FORMATS", "duration_text", "render", "to_gsm7"]

FORMATS: Final = ("text", "markdown", "sms", "voice")
SmsEncoding = Literal["auto", "gsm7", "ucs2"]

_WS: Final = re.compile(r"\s+")
_URL: Final = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_MD_SPECIAL: Final = re.compile(r"([\\`*_\[\]<>#|~])")
_PLACEHOLDER: Final = re.compile(r"\[(phone|email|card|number|redacted)\]")
_SPOKEN_PLACEHOLDER: Final = {
    "phone": "a phone number",
    "email": "an email address",
    "card": "a card number",
    "number": "a number",
    "redacted": "something removed",
}
_CHANNEL_NAMES: Final = {
    "sms": "SMS",
    "whatsapp": "WhatsApp",
    "email": "email",
    "webchat": "web chat",
    "voice": "a phone call",
    "messenger": "Messenger",
    "twitter": "Twitter",
    "app": "the app",
}
_GSM_FALLBACK: Final = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "…": "...",
    "•": "*",
    "·": "-",
    "→": ">",
    "←": "<",
    "\t": " ",
    "\u00a0": " ",
}


def duration_text(seconds: int, *, spoken: bool = False) -> str:
    """``"1h 5m"`` (or ``"1 hour 5 minutes"`` when ``spoken``)."""
    minutes, secs = divmod(max(0, seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts: list[tuple[int, str, str]] = [
        (days, "d", "day"),
        (hours, "h", "hour"),
        (minutes, "m", "minute"),
    ]
    if not days and not hours and not minutes:
        parts = [(secs, "s", "second")]
    out: list[str] = []
    for value, short, word in parts:
        if value or (not out and word == "second"):
            out.append(
                f"{value} {word}{'' if value == 1 else 's'}" if spoken else f"{value}{short}"
            )
        if len(out) == 2:
            break
    return " ".join(out) if out else ("0 seconds" if spoken else "0s")


def to_gsm7(text: str) -> str:
    """``text`` with every character GSM-7 cannot carry replaced (quotes, dashes and the
    like by their ASCII forms, anything else by ``?``)."""
    out: list[str] = []
    for ch in text:
        if ch in GSM7_BASIC or ch in GSM7_EXTENSION:
            out.append(ch)
        else:
            out.append(_GSM_FALLBACK.get(ch, "?"))
    return "".join(out)


def _oneline(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _channel(name: str) -> str:
    return _CHANNEL_NAMES.get(name, name)


def _cut(text: str, limit: int, ellipsis: str = "…") -> str:
    if len(text) <= limit:
        return text
    if limit <= len(ellipsis):
        return text[:limit]
    return text[: limit - len(ellipsis)].rstrip() + ellipsis


# --------------------------------------------------------------------------- blocks


class _Doc:
    """Blocks in display order, chosen by priority until the budget is full."""

    def __init__(
        self, fits: Callable[[str], bool], sep: str, shorten: Callable[[str, int], str]
    ) -> None:
        self.fits = fits
        self.sep = sep
        self.shorten = shorten
        self.slots: dict[int, list[str]] = {}

    def text(self, slots: dict[int, list[str]] | None = None) -> str:
        chosen = self.slots if slots is None else slots
        lines = [line for key in sorted(chosen) for line in chosen[key]]
        return self.sep.join(lines)

    def try_add(self, position: int, line: str) -> bool:
        trial = {k: list(v) for k, v in self.slots.items()}
        trial.setdefault(position, []).append(line)
        if self.fits(self.text(trial)):
            self.slots = trial
            return True
        return False

    def try_add_front(self, position: int, line: str) -> bool:
        trial = {k: list(v) for k, v in self.slots.items()}
        trial.setdefault(position, []).insert(0, line)
        if self.fits(self.text(trial)):
            self.slots = trial
            return True
        return False

    def add_shortened(self, position: int, prefix: str, body: str, minimum: int = 12) -> bool:
        """Add ``prefix + body``, shortening body as far as needed (not below minimum)."""
        if self.try_add(position, prefix + body):
            return True
        lo, hi = 0, len(body)
        best: str | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = prefix + self.shorten(body, mid)
            trial = {k: list(v) for k, v in self.slots.items()}
            trial.setdefault(position, []).append(candidate)
            if self.fits(self.text(trial)):
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        if best is None or len(best) - len(prefix) < minimum:
            return False
        return self.try_add(position, best)


_HEAD, _WAIT, _JOURNEY, _ATTRS, _INTENTS, _HANDOFFS, _MSGS = range(7)


def _fill(
    doc: _Doc,
    snap: Snapshot,
    *,
    header: list[str],
    waiting: str | None,
    journey: str | None,
    attributes: list[str],
    intents: str | None,
    handoffs: list[str],
    messages_title: str | None,
    message: Callable[[MessageItem], tuple[str, str]],
) -> None:
    for line in header:
        doc.try_add(_HEAD, line)
    msgs = list(snap.messages)
    if msgs:
        if messages_title is not None:
            doc.try_add(_MSGS, messages_title)
        prefix, body = message(msgs[-1])
        doc.add_shortened(_MSGS, prefix, body)
    if waiting:
        doc.try_add(_WAIT, waiting)
    if journey:
        doc.try_add(_JOURNEY, journey)
    for line in attributes:
        doc.try_add(_ATTRS, line)
    if intents:
        doc.try_add(_INTENTS, intents)
    if msgs and len(doc.slots.get(_MSGS, [])) > (1 if messages_title is not None else 0):
        offset = 1 if messages_title is not None else 0
        for item in reversed(msgs[:-1]):
            prefix, body = message(item)
            trial = {k: list(v) for k, v in doc.slots.items()}
            trial[_MSGS].insert(offset, prefix + body)
            if not doc.fits(doc.text(trial)):
                break
            doc.slots = trial
    for line in handoffs:
        if not doc.try_add(_HANDOFFS, line):
            break


def _hard_fit(text: str, fits: Callable[[str], bool], shorten: Callable[[str, int], str]) -> str:
    if fits(text):
        return text
    lo, hi = 0, len(text)
    best = ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = shorten(text, mid)
        if fits(candidate):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


# --------------------------------------------------------------------------- formats


def _who(snap: Snapshot) -> str:
    who = snap.customer.name or snap.customer.id
    idents = [f"{i.kind} {i.value}" if i.value else i.kind for i in snap.customer.identifiers]
    return f"{who} ({', '.join(idents)})" if idents else who


def _journey(snap: Snapshot, arrow: str, names: bool = False) -> str | None:
    if not snap.journey:
        return None
    steps = [_channel(s.channel) if names else s.channel for s in snap.journey]
    return arrow.join(steps)


def _text(snap: Snapshot, max_chars: int | None, md: bool) -> str:
    esc: Callable[[str], str] = (lambda s: _MD_SPECIAL.sub(r"\\\1", s)) if md else (lambda s: s)

    def fits(s: str) -> bool:
        return max_chars is None or len(s) <= max_chars

    def shorten(s: str, n: int) -> str:
        return _cut(s, n)

    doc = _Doc(fits, "\n", shorten)
    status = f"{snap.status}" + (f", topic {snap.topic}" if snap.topic else "")
    controller = snap.controller or "nobody"
    if md:
        header = [
            f"### Thread {esc(snap.thread_id)} ({esc(status)})",
            f"**Customer:** {esc(_who(snap))}",
            f"**Controller:** {esc(controller)}",
        ]
    else:
        header = [
            f"Thread {snap.thread_id} ({status})",
            f"Customer: {_who(snap)}",
            f"Controller: {controller}",
        ]
    waiting = None
    if snap.waiting_seconds is not None:
        waiting = f"Waiting: {duration_text(snap.waiting_seconds)}"
        if snap.queue_wait_seconds is not None:
            waiting += f" (in queue {duration_text(snap.queue_wait_seconds)})"
        if md:
            waiting = "**" + waiting.replace(":", ":**", 1)
    journey = _journey(snap, " → ")
    if journey:
        journey = f"**Journey:** {esc(journey)}" if md else f"Journey: {journey}"
    attributes = [
        (
            f"- **{esc(a.name)}**: {esc(_oneline(str(a.value)))}"
            if md
            else f"{a.name}: {_oneline(str(a.value))}"
        )
        for a in snap.attributes
    ]
    intents = None
    if snap.intents:
        names = ", ".join(f"{i.name} ({i.confidence:.0%})" for i in snap.intents)
        intents = f"**Intents:** {esc(names)}" if md else f"Intents: {names}"
    handoffs = []
    for h in reversed(snap.handoffs):
        line = f"{h.at:%Y-%m-%d %H:%M} {h.step} {h.party or ''}".rstrip()
        if h.reason:
            line += f": {_oneline(h.reason)}"
        handoffs.append(f"- {esc(line)}" if md else f"  {line}")

    def message(m: MessageItem) -> tuple[str, str]:
        flag = " (erased)" if m.erased else " (deleted)" if m.deleted else ""
        body = _oneline(m.text) + flag
        if md:
            return f"> **{esc(m.author)}** · {esc(m.channel)} · {m.at:%H:%M}: ", esc(body)
        return f"[{m.at:%H:%M} {m.channel}] {m.author}: ", body

    title = "#### Last messages" if md else "Last messages:"
    _fill(
        doc,
        snap,
        header=header,
        waiting=waiting,
        journey=journey,
        attributes=attributes,
        intents=intents,
        handoffs=handoffs,
        messages_title=title,
        message=message,
    )
    if handoffs and doc.slots.get(_HANDOFFS):
        title_h = "#### Handoffs" if md else "Handoffs:"
        if not doc.try_add_front(_HANDOFFS, title_h):
            doc.slots.pop(_HANDOFFS)
    return _hard_fit(doc.text() or header[0], fits, shorten)


def _sms(snap: Snapshot, segments: int, encoding: SmsEncoding) -> str:
    if segments < 1:
        raise ValidationError("segments must be at least 1")
    conv: Callable[[str], str] = to_gsm7 if encoding == "gsm7" else (lambda s: s)
    ellipsis = "..." if encoding == "gsm7" else "…"

    def fits(s: str) -> bool:
        count = count_segments(s)
        if encoding == "gsm7" and count.encoding != "gsm7":
            return False
        return count.segments <= segments

    def shorten(s: str, n: int) -> str:
        return _cut(s, n, ellipsis)

    doc = _Doc(fits, "\n", shorten)
    who = snap.customer.name or snap.customer.id
    header = [conv(f"{snap.thread_id} {snap.status}: {who}")]
    waiting = (
        conv(f"Waiting {duration_text(snap.waiting_seconds)}")
        if snap.waiting_seconds is not None
        else None
    )
    journey = _journey(snap, ">")
    attributes = [conv(f"{a.name}={_oneline(str(a.value))}") for a in snap.attributes]
    intents = conv("Intent " + ",".join(i.name for i in snap.intents)) if snap.intents else None

    def message(m: MessageItem) -> tuple[str, str]:
        who = "C" if m.direction == "in" else m.author.split(":")[0][:1].upper() or "S"
        return conv(f"{who}: "), conv(_oneline(m.text))

    _fill(
        doc,
        snap,
        header=header,
        waiting=waiting,
        journey=conv(journey) if journey else None,
        attributes=attributes,
        intents=intents,
        handoffs=[],
        messages_title=None,
        message=message,
    )
    text = doc.text() or header[0]
    if fits(text):
        return text
    cut = fit_segments(text, segments, ellipsis=ellipsis)
    return cut if fits(cut) else _hard_fit(text, fits, shorten)


_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")


def _speakable(text: str) -> str:
    text = _URL.sub("a link", text)
    text = _PLACEHOLDER.sub(lambda m: _SPOKEN_PLACEHOLDER[m.group(1)], text)
    text = "".join(
        " " if unicodedata.category(ch) in ("So", "Sk", "Cs", "Co", "Mn") else ch for ch in text
    )
    text = re.sub(r"[*_#>`|\[\]{}<>~^\\•\u201c\u201d\"\u200d\ufe0f]+", " ", text)
    text = re.sub(r"\s*[\u2013\u2014]\s*", ", ", _oneline(text))
    return re.sub(r"\s+([,.!?;:])", r"\1", text).strip(" ,")


def _short_sentences(text: str, max_words: int = 12) -> list[str]:
    """Sentences of at most ``max_words`` words: long ones are split at commas, then
    every ``max_words`` words."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(_speakable(text)):
        clauses = [c for c in re.split(r"(?<=[,;:])\s+", sentence) if c]
        words: list[str] = []
        for clause in clauses:
            clause_words = clause.split()
            if words and len(words) + len(clause_words) > max_words:
                out.append(_sentence(words))
                words = []
            words.extend(clause_words)
            while len(words) > max_words:
                out.append(_sentence(words[:max_words]))
                words = words[max_words:]
        if words:
            out.append(_sentence(words))
    return out


def _sentence(words: list[str]) -> str:
    piece = " ".join(words).rstrip(",;:")
    if piece and piece[-1] not in ".!?":
        piece += "."
    return piece[:1].upper() + piece[1:]


def _voice(snap: Snapshot, max_chars: int | None) -> str:
    def fits(s: str) -> bool:
        return max_chars is None or len(s) <= max_chars

    def shorten(s: str, n: int) -> str:
        cut = _cut(s, n, "")
        if len(cut) < len(s):
            cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
            cut = cut.rstrip(",;: ")
            if cut and cut[-1] not in ".!?" and len(cut) < n:
                cut += "."
        return cut

    doc = _Doc(fits, " ", shorten)
    who = snap.customer.name or "the customer"
    header = [f"Customer {who}." if snap.customer.name else "A customer."]
    waiting = None
    if snap.waiting_seconds is not None:
        waiting = f"Waiting {duration_text(snap.waiting_seconds, spoken=True)}."
    journey = None
    names = [_channel(s.channel) for s in snap.journey]
    if len(names) > 3:
        journey = f"Started on {names[0]}. Now on {names[-1]}, after {names[-2]}."
    elif len(names) > 1:
        journey = f"Came by {names[0]}, then {', then '.join(names[1:])}."
    elif snap.journey:
        journey = f"On {_channel(snap.journey[0].channel)}."
    attributes = [
        s
        for a in snap.attributes
        for s in _short_sentences(f"{a.name.replace('_', ' ')}: {a.value}.")
    ][:6]
    intents = None
    if snap.intents:
        intents = "Intent " + " and ".join(i.name.replace("_", " ") for i in snap.intents[:3]) + "."

    def message(m: MessageItem) -> tuple[str, str]:
        who = "The customer said" if m.direction == "in" else "We said"
        sentences = _short_sentences(m.text) or ["nothing."]
        return f"{who}: ", " ".join(sentences)

    _fill(
        doc,
        snap,
        header=header,
        waiting=waiting,
        journey=journey,
        attributes=attributes,
        intents=intents,
        handoffs=[],
        messages_title=None,
        message=message,
    )
    return _hard_fit(doc.text() or header[0], fits, shorten)


def render(
    snapshot: Snapshot,
    fmt: str = "text",
    *,
    max_chars: int | None = None,
    segments: int = 1,
    encoding: SmsEncoding = "auto",
) -> str:
    """Render ``snapshot`` as ``fmt`` (text, markdown, sms, voice) within the budget.

    ``max_chars`` bounds text, markdown and voice (None: no bound); ``segments`` and
    ``encoding`` bound sms.
    """
    if max_chars is not None and max_chars < 0:
        raise ValidationError("max_chars must be >= 0")
    if fmt == "text":
        return _text(snapshot, max_chars, md=False)
    if fmt == "markdown":
        return _text(snapshot, max_chars, md=True)
    if fmt == "sms":
        if encoding not in ("auto", "gsm7", "ucs2"):
            raise ValidationError(f"encoding must be auto, gsm7 or ucs2, not {encoding!r}")
        return _sms(snapshot, segments, encoding)
    if fmt == "voice":
        return _voice(snapshot, max_chars)
    raise ValidationError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
