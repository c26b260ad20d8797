"""Audiences and redaction: what each reader of a snapshot may see.

Three audiences ship (see :data:`DEFAULT_POLICIES`), each a :class:`RedactionPolicy`:

* ``agent``: an internal agent. Sees identifiers, names and message text as they are.
* ``bot_vendor``: an external bot vendor. Identifiers hidden (kind and trust only), the
  customer id replaced by a pseudonym, staff ids hidden, personal attributes dropped, and
  free text scrubbed of phone numbers, e-mail addresses, payment card numbers
  (Luhn-checked), any other run of 7 or more digits, and every known personal value of
  the customer (name attributes, identifier values). Known values are matched under
  Unicode NFKC normalization and without regard to case, so a name typed with combining
  accents ("Jose" + U+0301) or in full-width letters is found, and the original characters
  are replaced.
* ``customer``: the customer themselves (a summary shown or read back to them).
  Identifiers partially masked, payment card numbers scrubbed, internal attributes
  (``internal.`` prefix), intents and handoff reasons hidden.

Policies are plain frozen dataclasses: copy one with :func:`dataclasses.replace` to make
your own, and pass a mapping of audience name to policy to the service (``redaction=``).
"""

from __future__ import annotations

import enum
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import phonenumbers

from convthread.errors import ValidationError

__all__ = [
    "DEFAULT_POLICIES",
    "Audience",
    "Mask",
    "RedactionPolicy",
    "luhn_valid",
    "mask_value",
    "policy_for",
    "pseudonym",
    "scrub_text",
]


class Audience(str, enum.Enum):
    """The audiences that ship. Any other name works once it has a policy."""

    AGENT = "agent"
    BOT_VENDOR = "bot_vendor"
    CUSTOMER = "customer"


class Mask(str, enum.Enum):
    """How an identifier value is shown."""

    FULL = "full"  # as it is
    PARTIAL = "partial"  # the last few characters (and an e-mail's domain)
    HIDDEN = "hidden"  # nothing but its kind and trust


#: Attribute names that hold personal data by default.
PII_ATTRIBUTES: Final = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "full_name",
        "display_name",
        "email",
        "phone",
        "address",
        "postcode",
        "zip",
        "date_of_birth",
        "dob",
    }
)


@dataclass(frozen=True)
class RedactionPolicy:
    """What one audience may see. Every switch is explicit; see the module doc."""

    identifiers: Mask = Mask.FULL
    pseudonymize_customer: bool = False
    #: a salt for pseudonyms, so two deployments do not share them
    pseudonym_salt: str = ""
    scrub_phones: bool = False
    scrub_emails: bool = False
    scrub_cards: bool = False
    #: scrub any run of at least this many digits (spaces, dots, dashes, parentheses
    #: between them allowed); None: off. Catches numbers in formats no matcher knows.
    scrub_digit_runs: int | None = None
    #: scrub the customer's known personal values (PII attributes, identifier values)
    scrub_known_values: bool = False
    pii_attributes: frozenset[str] = PII_ATTRIBUTES
    show_pii_attributes: bool = True
    #: attribute name prefixes this audience never sees
    hidden_attribute_prefixes: tuple[str, ...] = ()
    show_intents: bool = True
    show_handoff_reasons: bool = True
    #: show agent, bot and queue ids (else only their kind: "agent")
    show_staff_ids: bool = True
    #: regions whose national-format phone numbers are recognized (international format
    #: is recognized for every region)
    phone_regions: tuple[str, ...] = ("US", "GB")
    #: the fewest digits a phone number written in text has (country code included for
    #: international format); shorter digit runs are not looked at. 7 suits the US, the
    #: UK and international format; lower it for regions with shorter national numbers.
    phone_min_digits: int = 7
    placeholder: str = "[{}]"

    def __post_init__(self) -> None:
        # hashable whatever the caller passed (policies key the scrubbing cache)
        object.__setattr__(self, "pii_attributes", frozenset(self.pii_attributes))
        object.__setattr__(self, "hidden_attribute_prefixes", tuple(self.hidden_attribute_prefixes))
        object.__setattr__(self, "phone_regions", tuple(self.phone_regions))
        if self.phone_min_digits < 3:
            raise ValidationError("phone_min_digits must be at least 3")
        if self.scrub_digit_runs is not None and self.scrub_digit_runs < 4:
            raise ValidationError("scrub_digit_runs must be at least 4 (or None)")
        if "{}" not in self.placeholder:
            raise ValidationError("placeholder must contain '{}' (the kind of value removed)")

    @property
    def scrubs_text(self) -> bool:
        return bool(
            self.scrub_phones
            or self.scrub_emails
            or self.scrub_cards
            or self.scrub_digit_runs
            or self.scrub_known_values
        )

    def attribute_visible(self, name: str) -> bool:
        if name.startswith(self.hidden_attribute_prefixes) and self.hidden_attribute_prefixes:
            return False
        return self.show_pii_attributes or name not in self.pii_attributes


DEFAULT_POLICIES: Final[Mapping[str, RedactionPolicy]] = {
    Audience.AGENT.value: RedactionPolicy(),
    Audience.BOT_VENDOR.value: RedactionPolicy(
        identifiers=Mask.HIDDEN,
        pseudonymize_customer=True,
        scrub_phones=True,
        scrub_emails=True,
        scrub_cards=True,
        scrub_digit_runs=7,
        scrub_known_values=True,
        show_pii_attributes=False,
        hidden_attribute_prefixes=("internal.",),
        show_staff_ids=False,
    ),
    Audience.CUSTOMER.value: RedactionPolicy(
        identifiers=Mask.PARTIAL,
        scrub_cards=True,
        hidden_attribute_prefixes=("internal.",),
        show_intents=False,
        show_handoff_reasons=False,
        show_staff_ids=False,
    ),
}


def policy_for(
    audience: str | Audience, policies: Mapping[str, RedactionPolicy] | None = None
) -> RedactionPolicy:
    """The policy of ``audience`` in ``policies`` (default: :data:`DEFAULT_POLICIES`)."""
    name = audience.value if isinstance(audience, Audience) else str(audience)
    table = DEFAULT_POLICIES if policies is None else policies
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValidationError(f"unknown audience {name!r}; known: {known}") from None


def pseudonym(value: str, salt: str = "") -> str:
    """A stable pseudonym for ``value`` (12 hex digits of a keyed BLAKE2b)."""
    key = salt.encode()[:64]
    return hashlib.blake2b(value.encode(), digest_size=6, key=key).hexdigest()


def mask_value(kind: str, value: str, mask: Mask) -> str:
    """``value`` shown under ``mask`` (hidden values become an empty string)."""
    if mask is Mask.FULL:
        return value
    if mask is Mask.HIDDEN:
        return ""
    if kind == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}•••@{domain}"
    keep = 3 if len(value) > 6 else 1 if len(value) > 2 else 0
    return "•" * (len(value) - keep) + value[len(value) - keep :]


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (digits only) passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_RE: Final = re.compile(r"(?<![\d])\d(?:[ \-]?\d){12,18}(?![\d])")
_EMAIL_RE: Final = re.compile(
    r"[^\s@<>()\[\]{},;:\"']+@[^\s@<>()\[\]{},;:\"']+\.[^\s@<>()\[\]{},;:\"'.]{2,}"
)
_DIGIT_SEP: Final = r"[\s().\-/]{0,3}"
_PHONE_CANDIDATE: Final = re.compile(r"\+?\(?\d[\d\s().\-/]{3,}\d\)?")
#: dates are not numbers to scrub: 2026-03-02, 02/03/2026, 2.3.26
_DATE_RE: Final = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}/\d{1,2}/\d{1,2}"
)


def _digit_run_re(min_digits: int) -> re.Pattern[str]:
    return re.compile(
        r"(?<![\d])\+?\d(?:" + _DIGIT_SEP + r"\d){" + str(min_digits - 1) + r",}(?![\d])"
    )


_DIGIT_RUNS: dict[int, re.Pattern[str]] = {}


@lru_cache(maxsize=32)
def _digit_run(min_digits: int) -> re.Pattern[str]:
    return re.compile(r"\d(?:" + _DIGIT_SEP + r"\d){" + str(min_digits - 1) + "}")


@lru_cache(maxsize=1024)
def _known_patterns(values: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    out: list[re.Pattern[str]] = []
    seen: set[str] = set()
    for raw in values:
        value = unicodedata.normalize("NFKC", raw).strip()
        if not value:
            continue
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 4 and len(digits) >= len(value.replace("+", "")) - 2:
            # a number: its national significant number, separators anywhere
            for tail in {_national(value, digits), digits[-10:]}:
                key = "d:" + tail
                if len(tail) >= 4 and key not in seen:
                    seen.add(key)
                    body = _DIGIT_SEP.join(re.escape(d) for d in tail)
                    out.append(re.compile(r"(?<!\d)(?:\+?\d{1,3}" + _DIGIT_SEP + ")?" + body))
            continue
        words = [value, *re.split(r"[\s,;]+", value)]
        for word in words:
            word = word.strip(".-_'\"")
            if len(word) < 2 or word.lower() in seen:
                continue
            seen.add(word.lower())
            out.append(re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE))
    return tuple(out)


def _national(value: str, digits: str) -> str:
    """The national significant number of an E.164 value (else the digits)."""
    if value.startswith("+"):
        try:
            return str(phonenumbers.parse(value, None).national_number)
        except phonenumbers.NumberParseException:
            return digits
    return digits


def scrub_text(text: str, policy: RedactionPolicy, known: Iterable[str] = ()) -> str:
    """``text`` with what ``policy`` forbids replaced by placeholders (``[phone]``, ...).

    ``known``: the customer's personal values (name, identifier values) to remove
    wherever they appear, when the policy says so.

    Results are memoized (a bounded LRU cache keyed on the text, the policy and the known
    values), so a snapshot rebuilt for the same audience does not scrub again.
    """
    if not text or not policy.scrubs_text:
        return text
    return _scrub_cached(text, policy, tuple(known) if policy.scrub_known_values else ())


@lru_cache(maxsize=8192)
def _scrub_cached(text: str, policy: RedactionPolicy, known: tuple[str, ...]) -> str:
    ph = policy.placeholder
    if policy.scrub_emails and "@" in text:
        text = _EMAIL_RE.sub(ph.format("email"), text)
    # phone numbers, cards and long numbers are runs of digits: the matchers run only on
    # text with a run of at least phone_min_digits digits (separators allowed)
    has_digits = _digit_run(policy.phone_min_digits).search(text) is not None
    if policy.scrub_cards and has_digits:
        text = _CARD_RE.sub(
            lambda m: (
                ph.format("card") if luhn_valid(re.sub(r"\D", "", m.group(0))) else m.group(0)
            ),
            text,
        )
    if policy.scrub_phones and has_digits:
        # libphonenumber's matcher runs on each phone-like stretch of the text (a run of
        # digits and separators), not on the whole text: same matches, a fraction of the
        # cost on long messages
        spans: list[tuple[int, int]] = []
        for candidate in _PHONE_CANDIDATE.finditer(text):
            window = candidate.group(0)
            if sum(ch.isdigit() for ch in window) < policy.phone_min_digits:
                continue
            for region in policy.phone_regions or ("ZZ",):
                for match in phonenumbers.PhoneNumberMatcher(
                    window, region, leniency=phonenumbers.Leniency.VALID
                ):
                    spans.append((candidate.start() + match.start, candidate.start() + match.end))
        if spans:
            text = _replace_spans(text, spans, ph.format("phone"))
    if policy.scrub_known_values:
        text = _scrub_known(text, _known_patterns(known), ph.format("redacted"))
    if policy.scrub_digit_runs and has_digits:
        runs = _DIGIT_RUNS.get(policy.scrub_digit_runs)
        if runs is None:
            runs = _DIGIT_RUNS.setdefault(
                policy.scrub_digit_runs, _digit_run_re(policy.scrub_digit_runs)
            )
        text = runs.sub(
            lambda m: m.group(0) if _DATE_RE.fullmatch(m.group(0)) else ph.format("number"), text
        )
    return text


def _scrub_known(text: str, patterns: tuple[re.Pattern[str], ...], placeholder: str) -> str:
    """``text`` with every match of ``patterns`` replaced, matching on its NFKC form.

    The patterns match the normalized text; each match is mapped back to the original
    characters it came from, so the replacement covers exactly those (a base letter and
    its combining marks go together)."""
    if not patterns:
        return text
    if text.isascii():  # NFKC leaves ASCII as it is
        norm, starts, ends = text, None, None
    else:
        norm, starts, ends = _normalize_with_offsets(text)
    spans: list[tuple[int, int]] = []
    for pattern in patterns:
        for m in pattern.finditer(norm):
            if m.end() > m.start():
                if starts is None or ends is None:
                    spans.append((m.start(), m.end()))
                else:
                    spans.append((starts[m.start()], ends[m.end() - 1]))
    return _replace_spans(text, spans, placeholder) if spans else text


def _normalize_with_offsets(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` in NFKC form, with the span of the original each normalized character
    comes from (``starts[i]``, ``ends[i]``).

    The text is normalized a segment at a time: a segment is a character with no
    combining class followed by the combining marks after it, the unit composition and
    reordering work within."""
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    n = len(text)
    i = 0
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        piece = unicodedata.normalize("NFKC", text[i:j])
        parts.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(parts), starts, ends


def _replace_spans(text: str, spans: list[tuple[int, int]], placeholder: str) -> str:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    out: list[str] = []
    pos = 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(placeholder)
        pos = end
    out.append(text[pos:])
    return "".join(out)
