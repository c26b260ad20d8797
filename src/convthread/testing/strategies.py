"""Hypothesis strategies for every public convthread type, and realistic journeys.

Everything here is a :class:`hypothesis.strategies.SearchStrategy` built from small
components, so failing examples shrink to short, readable values: the first region in a
list, a one-letter handle, an empty text, a journey of one or two steps.

Values, from the bottom up:

* raw identifier values as a channel would present them: :func:`phone_numbers` (real
  numbers per region, built from libphonenumber's example numbers with the subscriber
  digits varied and checked valid), :func:`email_addresses` (internationalized domains
  included), :func:`handle_values`; each takes ``invalid=True`` to draw values the
  normalizers reject;
* normalized :class:`~convthread.Identifier` values: :func:`phones`, :func:`emails`,
  :func:`handles`, :func:`accounts`, :func:`devices`, :func:`sessions`, and
  :func:`identifiers` for any kind (``invalid=True`` gives identifiers whose value the
  registry rejects, for testing error paths);
* :func:`sender_identifiers`, :func:`texts` (emoji and other non-GSM characters
  included), :func:`attachments`, :func:`metadata`, :func:`contents`, :func:`parties`;
* :func:`inbounds` per channel, :func:`outbound_messages` (what ``send`` takes);
* events: :func:`thread_events`, :func:`customer_events` and one strategy per event type
  (:data:`EVENT_STRATEGIES`); :func:`thread_histories` (only valid sequences) folded into
  :func:`thread_states`, :func:`customer_histories` into :func:`customer_states`;
* results: :func:`stored_events`, :func:`thread_views`, :func:`customer_views`,
  :func:`ingest_results`, :func:`send_results`;
* channel updates: :func:`status_reports` and friends, :func:`channel_results`;
* provider payloads, raw as the provider sends them, each a :class:`ProviderPayload`
  naming its adapter: :func:`twilio_sms_webhooks`, :func:`twilio_voice_webhooks`,
  :func:`whatsapp_webhooks`, :func:`raw_emails`, :func:`webchat_events`,
  :func:`voice_events`, :func:`tweets`, any of them: :func:`provider_payloads`; and
  whole channel :class:`~convthread.channels.base.Outbound` values for ``render``:
  :func:`channel_outbounds`;
* infrastructure: :func:`manual_clocks`, :func:`sequential_ids`,
  :func:`continuity_policies`, :func:`identifier_registries`.

Journeys (:func:`journeys`) are people (:class:`Persona`) moving across channels over
time: first contacts, messages on other channels, redeliveries, late arrivals, identity
claims at each trust level, replies to earlier messages, and sends by agents and bots.
Each step carries the outcome it implies where the documented rules make it knowable
(:class:`Expect`): a redelivery is a duplicate with the original outcome; an identifier
seen before resolves to the same customer; a message within the continuity window
continues the customer's open thread, one beyond it starts a new thread.
:meth:`Journey.play` replays a journey against a :class:`~convthread.Conversations` and
raises :class:`JourneyFailure`, naming the step, when an expectation is not met.

The journey model follows the rules documented in :mod:`convthread.domain.identity` and
:mod:`convthread.domain.continuity`. Where they leave the outcome open (a message whose
identifiers belong to two different customers, which a merge policy may or may not
merge), the expectation is weakened rather than guessed.
"""

from __future__ import annotations

import enum
import hashlib
import string
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final, TypeVar, Union

import msgspec
import phonenumbers
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from convthread.channels.base import Outbound
from convthread.domain.continuity import ContinuityPolicy
from convthread.domain.events import (
    AttributeSet,
    ControlReleased,
    ControlTransferred,
    CustomerCreated,
    CustomerErased,
    CustomerEvent,
    CustomerMerged,
    CustomerUnmerged,
    Decision,
    Evidence,
    HandoffAccepted,
    HandoffDeclined,
    HandoffExpired,
    HandoffOffered,
    HandoffRequested,
    IdentifierLinked,
    IdentifierUnlinked,
    IdentifierVerified,
    IntentDetected,
    LifecycleChanged,
    MergeSuggested,
    MergeSuggestionResolved,
    MessageDeleted,
    MessageEdited,
    MessageErased,
    MessageReceived,
    MessageSent,
    ProviderIdRecorded,
    ReactionSet,
    StatusUpdated,
    ThreadEvent,
    ThreadReassigned,
    ThreadStarted,
    ThreadStatus,
)
from convthread.domain.identifiers import IdentifierRegistry, normalize_identifier
from convthread.domain.model import (
    Attachment,
    Channel,
    Content,
    DeliveryStatus,
    Identifier,
    IdentifierKind,
    Inbound,
    Party,
    PartyKind,
    SenderIdentifier,
    Trust,
)
from convthread.domain.thread import (
    LIFECYCLE,
    CustomerState,
    PendingHandoff,
    ThreadState,
    evolve,
    evolve_customer,
    start_state,
)
from convthread.domain.updates import (
    ChannelResult,
    DeletionReport,
    EditReport,
    ReactionReport,
    StatusReport,
    Unsupported,
)
from convthread.ports import ManualClock, SequentialIds
from convthread.service._import import HistoryReply
from convthread.service._results import (
    CustomerView,
    IngestResult,
    SendResult,
    StoredEvent,
    ThreadView,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_REGIONS",
    "EVENT_STRATEGIES",
    "PLATFORMS",
    "Expect",
    "Handoff",
    "HandoffOutcome",
    "Ingest",
    "Journey",
    "JourneyFailure",
    "JourneyLog",
    "OutboundMessage",
    "Persona",
    "ProviderPayload",
    "Redeliver",
    "Send",
    "Step",
    "account_values",
    "accounts",
    "attachments",
    "channel_outbounds",
    "channel_results",
    "channels",
    "contents",
    "continuity_policies",
    "customer_events",
    "customer_histories",
    "customer_states",
    "customer_views",
    "decisions",
    "deletion_reports",
    "device_ids",
    "devices",
    "edit_reports",
    "email_addresses",
    "emails",
    "event_strategy",
    "evidences",
    "handle_values",
    "handles",
    "history_replies",
    "identifier_registries",
    "identifiers",
    "inbounds",
    "ingest_results",
    "journeys",
    "manual_clocks",
    "metadata",
    "outbound_messages",
    "parties",
    "pending_handoffs",
    "personas",
    "phone_numbers",
    "phones",
    "provider_payloads",
    "raw_emails",
    "reaction_reports",
    "send_results",
    "sender_identifiers",
    "sequential_ids",
    "session_ids",
    "sessions",
    "status_reports",
    "stored_events",
    "struct_strategy",
    "texts",
    "thread_events",
    "thread_histories",
    "thread_states",
    "thread_views",
    "timestamps",
    "trusts",
    "tweets",
    "twilio_sms_webhooks",
    "twilio_voice_webhooks",
    "unsupported_reports",
    "voice_events",
    "webchat_events",
    "whatsapp_webhooks",
]

T = TypeVar("T")
_UTC: Final = timezone.utc
#: Where generated times start: journeys and histories are anchored here.
EPOCH: Final = datetime(2026, 3, 2, 9, 0, tzinfo=_UTC)

# --------------------------------------------------------------------------- constants

#: Regions phone numbers are drawn from by default (first one is what examples shrink to).
DEFAULT_REGIONS: Final[tuple[str, ...]] = (
    "GB", "US", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "MX", "JP", "AU", "NG", "ZA", "SG",
    "CA",
)  # fmt: skip
#: Well-known channels, as :class:`convthread.Channel` names them.
CHANNELS: Final[tuple[str, ...]] = (
    Channel.SMS,
    Channel.WHATSAPP,
    Channel.EMAIL,
    Channel.WEBCHAT,
    Channel.VOICE,
    Channel.MESSENGER,
    Channel.TWITTER,
    Channel.APP,
)
#: Platforms handles are drawn for, and what their handles look like.
PLATFORMS: Final[tuple[str, ...]] = (
    "twitter", "instagram", "telegram", "messenger", "whatsapp", "discord",
)  # fmt: skip
_NUMERIC_PLATFORMS: Final = frozenset({"messenger", "whatsapp"})
_TENANTS: Final = ("acme", "globex", "initech", "umbrella.eu")
_PHONE_TYPES: Final = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)


def timestamps(
    min_value: datetime = EPOCH, max_value: datetime = EPOCH + timedelta(days=365)
) -> SearchStrategy[datetime]:
    """Timezone-aware UTC datetimes (shrinking towards ``min_value``), whole seconds."""
    span = int((max_value - min_value).total_seconds())
    return st.integers(0, max(span, 0)).map(lambda s: min_value + timedelta(seconds=s))


# --------------------------------------------------------------------------- phones


def _phone_from(region: str, kind: int, digits: int) -> str:
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        example = phonenumbers.example_number(region)
    assert example is not None, f"libphonenumber has no example number for {region}"
    nsn = phonenumbers.national_significant_number(example)
    varied = nsn[:-4] + f"{digits:04d}" if len(nsn) > 6 else nsn
    candidate = phonenumbers.parse(f"+{example.country_code}{varied}", None)
    if not phonenumbers.is_valid_number(candidate):  # keep the example when a variant isn't
        candidate = example
    return phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)


_PHONE_FORMATS: Final = {
    "e164": phonenumbers.PhoneNumberFormat.E164,
    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
}

_INVALID_PHONES: Final = (
    "12",  # too short
    "+999 1234 5678",  # no such country code
    "+44 20 7946 09",  # too short for GB
    "+1 555 0100 12345 6789",  # too long
    "call me maybe",  # not a number
    "+",
    "0000",
)


def phone_numbers(
    regions: Sequence[str] = DEFAULT_REGIONS,
    *,
    format: str = "e164",
    invalid: bool = False,
) -> SearchStrategy[str]:
    """Real-looking phone numbers as text: libphonenumber's example mobile or fixed-line
    number of a region with its last four digits varied (kept only when still valid).

    ``format`` is ``"e164"`` (``+447400123456``), ``"international"``
    (``+44 7400 123456``) or ``"national"`` (``07400 123456``: read it with the region).
    ``invalid=True`` draws text that :func:`convthread.phone` rejects instead.
    """
    if invalid:
        return st.sampled_from(_INVALID_PHONES)
    if format not in _PHONE_FORMATS:
        raise ValueError(f"format must be one of {sorted(_PHONE_FORMATS)}, got {format!r}")
    fmt = _PHONE_FORMATS[format]
    e164 = st.builds(
        _phone_from, st.sampled_from(tuple(regions)), st.sampled_from(_PHONE_TYPES),
        st.integers(0, 9999),
    )  # fmt: skip
    if format == "e164":
        return e164
    return e164.map(lambda n: phonenumbers.format_number(phonenumbers.parse(n, None), fmt))


def phones(regions: Sequence[str] = DEFAULT_REGIONS) -> SearchStrategy[Identifier]:
    """Normalized phone identifiers (E.164)."""
    return phone_numbers(regions).map(lambda n: normalize_identifier(IdentifierKind.PHONE, n))


# --------------------------------------------------------------------------- e-mail

_LOCAL_CHARS: Final = string.ascii_lowercase + string.digits
# Letters that IDNA (RFC 3490, what Python's codec does) maps cleanly, from several scripts.
_IDN_CHARS: Final = "äöüéèçñøåłšžабвгдежзиклмнопрстуфαβγδεζηθλμπσ例え日本中文"
_TLDS: Final = ("com", "org", "net", "example", "de", "jp", "рф", "中国")
_NAMES: Final = (
    "ana", "bo", "chen", "dmitri", "eva", "fatima", "giorgos", "hana", "ivan", "jose",
    "kwame", "lea", "müller", "noor", "olu", "priya",
)  # fmt: skip


@st.composite
def _local_parts(draw: st.DrawFn) -> str:
    base = draw(st.text(_LOCAL_CHARS, min_size=1, max_size=8))
    sep = draw(st.sampled_from(("", ".", "_", "+", "-")))
    if not sep:
        return base
    return base + sep + draw(st.text(_LOCAL_CHARS, min_size=1, max_size=6))


def _labels(idn: bool) -> SearchStrategy[str]:
    ascii_label = st.text(_LOCAL_CHARS, min_size=1, max_size=10)
    if not idn:
        return ascii_label
    return st.one_of(ascii_label, st.text(_IDN_CHARS + _LOCAL_CHARS, min_size=1, max_size=8))


@st.composite
def _domains(draw: st.DrawFn, idn: bool = True) -> str:
    labels = draw(st.lists(_labels(idn), min_size=1, max_size=2))
    tld = draw(st.sampled_from(_TLDS if idn else _TLDS[:6]))
    return ".".join([*labels, tld])


_EMAIL_BREAKERS: Final[tuple[Callable[[str, str], str], ...]] = (
    lambda local, domain: f"{local}{domain}",  # no @
    lambda local, domain: f"@{domain}",  # empty local part
    lambda local, domain: f"{local}@{domain.split('.')[0]}",  # no dot in the domain
    lambda local, domain: f"{local} {local}@{domain}",  # whitespace
    lambda local, domain: f"{local}@{domain}.",  # trailing dot
    lambda local, domain: f"{local}@[192.0.2.1]",  # address literal
    lambda local, domain: f"{local}..{local}@{domain}",  # consecutive dots
    lambda local, domain: f"{'x' * 65}@{domain}",  # local part too long
)


def email_addresses(
    *, idn: bool = True, mixed_case: bool = False, invalid: bool = False
) -> SearchStrategy[str]:
    """E-mail addresses as a person would type them.

    ``idn=True`` includes internationalized domains (``ana@bücher.example``), which
    normalize to their IDNA form; ``mixed_case=True`` capitalizes some, as people do.
    ``invalid=True`` draws addresses :func:`convthread.email` rejects (no ``@``, no dot in
    the domain, whitespace, address literals, a local part over 64 octets...).
    """
    local = _local_parts()
    if invalid:
        return st.builds(
            lambda brk, lp, dom: brk(lp, dom),
            st.sampled_from(_EMAIL_BREAKERS), local, _domains(idn=False),
        )  # fmt: skip
    address = st.builds(lambda lp, dom: f"{lp}@{dom}", local, _domains(idn=idn))
    if mixed_case:
        return st.tuples(address, st.booleans()).map(lambda t: t[0].title() if t[1] else t[0])
    return address


def emails(*, idn: bool = True) -> SearchStrategy[Identifier]:
    """Normalized e-mail identifiers (domain in IDNA form)."""
    return email_addresses(idn=idn, mixed_case=True).map(
        lambda a: normalize_identifier(IdentifierKind.EMAIL, a)
    )


# --------------------------------------------------------------------------- handles etc.

_HANDLE_CHARS: Final = string.ascii_letters + string.digits + "_"
#: Handle lengths per platform (the platforms' own rules).
_HANDLE_SIZES: Final = {"twitter": (1, 15), "instagram": (1, 30), "telegram": (5, 32)}


def handle_values(platform: str = "twitter", *, invalid: bool = False) -> SearchStrategy[str]:
    """Handles as a platform sends them: ``@Name_1`` style for social platforms, digit ids
    for numeric ones (Messenger page-scoped ids, WhatsApp wa_ids).

    ``invalid=True`` draws values the handle normalizer rejects for ``platform``.
    """
    if invalid:
        bad = ["", "   ", "@", "two words"]
        if platform in _NUMERIC_PLATFORMS:
            bad.append("abc123")
        return st.sampled_from(bad)
    if platform == "whatsapp":
        return phone_numbers().map(lambda n: n.lstrip("+"))
    if platform in _NUMERIC_PLATFORMS:
        return st.integers(10**14, 10**16).map(str)
    low, high = _HANDLE_SIZES.get(platform, (1, 15))
    body = st.text(_HANDLE_CHARS, min_size=low, max_size=high)
    return st.tuples(st.booleans(), body).map(lambda t: ("@" if t[0] else "") + t[1])


def handles(platform: str | None = None) -> SearchStrategy[Identifier]:
    """Normalized handle identifiers, scoped by platform (any of :data:`PLATFORMS`)."""
    platforms = st.just(platform) if platform is not None else st.sampled_from(PLATFORMS)
    return platforms.flatmap(
        lambda p: handle_values(p).map(
            lambda v: normalize_identifier(IdentifierKind.HANDLE, v, scope=p)
        )
    )


def account_values() -> SearchStrategy[str]:
    """Account ids as a tenant's system issues them (``cust-00042``, ``A1B2C3``...)."""
    return st.one_of(
        st.integers(0, 99999).map(lambda n: f"cust-{n:05d}"),
        st.text(string.ascii_uppercase + string.digits, min_size=4, max_size=10),
    )


def accounts(tenant: str | None = None) -> SearchStrategy[Identifier]:
    """Normalized account identifiers, scoped by tenant."""
    tenants = st.just(tenant) if tenant is not None else st.sampled_from(_TENANTS)
    return st.builds(
        lambda t, v: normalize_identifier(IdentifierKind.ACCOUNT, v, scope=t),
        tenants, account_values(),
    )  # fmt: skip


def device_ids() -> SearchStrategy[str]:
    """Device ids: UUID-like, or an app's install id."""
    return st.one_of(
        st.uuids().map(str),
        st.integers(0, 2**32).map(lambda n: f"ios-{n:08x}"),
    )


def devices() -> SearchStrategy[Identifier]:
    """Normalized device identifiers."""
    return device_ids().map(lambda v: normalize_identifier(IdentifierKind.DEVICE, v))


def session_ids() -> SearchStrategy[str]:
    """Web chat or app session ids."""
    return st.integers(0, 2**40).map(lambda n: f"sess_{n:010x}")


def sessions() -> SearchStrategy[Identifier]:
    """Normalized session identifiers."""
    return session_ids().map(lambda v: normalize_identifier(IdentifierKind.SESSION, v))


_OPAQUE_INVALID: Final = ("   ", "line\nbreak", "nul\x00byte", "\t")


def _invalid_identifiers(kinds: Sequence[str]) -> SearchStrategy[Identifier]:
    options: list[SearchStrategy[Identifier]] = []
    for kind in kinds:
        if kind == IdentifierKind.PHONE:
            values = phone_numbers(invalid=True).filter(bool)
            options.append(values.map(lambda v: Identifier(IdentifierKind.PHONE, v)))
        elif kind == IdentifierKind.EMAIL:
            options.append(
                email_addresses(invalid=True).map(lambda v: Identifier(IdentifierKind.EMAIL, v))
            )
        elif kind == IdentifierKind.HANDLE:
            options.append(
                st.sampled_from(PLATFORMS).flatmap(
                    lambda p: (
                        handle_values(p, invalid=True)
                        .filter(bool)
                        .map(lambda v: Identifier(IdentifierKind.HANDLE, v, p))
                    )
                )
            )
            # a handle without its platform
            options.append(handle_values().map(lambda v: Identifier(IdentifierKind.HANDLE, v)))
        elif kind == IdentifierKind.ACCOUNT:
            options.append(account_values().map(lambda v: Identifier(IdentifierKind.ACCOUNT, v)))
            options.append(
                st.sampled_from(_OPAQUE_INVALID).map(
                    lambda v: Identifier(IdentifierKind.ACCOUNT, v, "acme")
                )
            )
        elif kind in (IdentifierKind.DEVICE, IdentifierKind.SESSION):
            options.append(st.builds(Identifier, st.just(kind), st.sampled_from(_OPAQUE_INVALID)))
        else:
            raise ValueError(f"no invalid values known for identifier kind {kind!r}")
    return st.one_of(options)


_KIND_STRATEGIES: Final[dict[str, Callable[[], SearchStrategy[Identifier]]]] = {
    IdentifierKind.PHONE: phones,
    IdentifierKind.EMAIL: emails,
    IdentifierKind.HANDLE: handles,
    IdentifierKind.ACCOUNT: accounts,
    IdentifierKind.DEVICE: devices,
    IdentifierKind.SESSION: sessions,
}
_ALL_KINDS: Final = tuple(_KIND_STRATEGIES)


def identifiers(
    kinds: Sequence[str] = _ALL_KINDS, *, invalid: bool = False
) -> SearchStrategy[Identifier]:
    """Identifiers of the given kinds (all well-known kinds by default), normalized.

    ``invalid=True`` draws :class:`~convthread.Identifier` values built *without*
    normalizing, whose value the registry rejects (``registry.renormalize`` and
    ``Conversations.ingest`` raise :class:`~convthread.errors.InvalidIdentifier`).
    """
    unknown = [k for k in kinds if k not in _KIND_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown identifier kinds {unknown}; known: {list(_ALL_KINDS)}")
    if invalid:
        return _invalid_identifiers(kinds)
    return st.one_of([_KIND_STRATEGIES[k]() for k in kinds])


def trusts() -> SearchStrategy[Trust]:
    """Trust levels, shrinking to ``claimed``."""
    return st.sampled_from(list(Trust))


_METHODS: Final = {
    Trust.CLAIMED: ("", "claim"),
    Trust.ASSERTED: ("", "channel"),
    Trust.VERIFIED: ("otp", "login", "signed-token"),
}


def sender_identifiers(
    identifier: SearchStrategy[Identifier] | None = None,
    trust: SearchStrategy[Trust] | None = None,
) -> SearchStrategy[SenderIdentifier]:
    """An identifier with a trust level and a method that fits it (``otp`` for verified)."""
    idents = identifier if identifier is not None else identifiers()
    levels = trust if trust is not None else trusts()
    return st.builds(
        lambda i, t, m: SenderIdentifier(i, t, _METHODS[t][m % len(_METHODS[t])]),
        idents, levels, st.integers(0, 2),
    )  # fmt: skip


# --------------------------------------------------------------------------- content

_PHRASES: Final = (
    "Hi", "Where is my order?", "Order #A-10234 hasn't arrived",
    "Can I change my delivery address?", "Thanks!", "I was charged twice",
    "Bonjour, ma commande est en retard", "¿Dónde está mi pedido?", "Grüße aus Köln",
    "注文がまだ届きません", "Заказ не пришёл", "شكرا لك",
)  # fmt: skip
_EMOJI: Final = ("😀", "👍", "👍🏽", "🇬🇧", "👨‍👩‍👧", "❤️", "🙏", "📦", "😡")


def texts(max_size: int = 200) -> SearchStrategy[str]:
    """Message text: realistic phrases (several scripts), emoji (including skin tones, flags
    and ZWJ sequences, which need UCS-2 on SMS), and arbitrary Unicode text."""
    phrase = st.sampled_from(_PHRASES)
    with_emoji = st.builds(lambda p, e: f"{p} {e}", phrase, st.sampled_from(_EMOJI))
    arbitrary = st.text(st.characters(codec="utf-8"), max_size=max_size)
    return st.one_of(st.just(""), phrase, with_emoji, arbitrary)


_MEDIA: Final = (
    ("image", "image/jpeg", "photo.jpg"),
    ("image", "image/png", "screenshot.png"),
    ("audio", "audio/ogg", "voice-note.ogg"),
    ("video", "video/mp4", "unboxing.mp4"),
    ("document", "application/pdf", "invoice.pdf"),
    ("sticker", "image/webp", "sticker.webp"),
    ("location", "", ""),
)


@st.composite
def attachments(draw: st.DrawFn) -> Attachment:
    """Attachment metadata consistent with its kind (a PDF is a document, a location has
    no file), with an optional size, hash and caption."""
    kind, mime, filename = draw(st.sampled_from(_MEDIA))
    n = draw(st.integers(0, 10**6))
    if kind == "location":
        return Attachment(kind=kind, caption=draw(st.sampled_from(("", "Home", "Warehouse"))))
    digest = draw(st.one_of(st.just(""), st.binary(min_size=32, max_size=32).map(bytes.hex)))
    return Attachment(
        kind=kind,
        url=f"https://cdn.example.com/media/{n}",
        media_id=f"media-{n}",
        mime_type=mime,
        filename=filename,
        size=draw(st.one_of(st.none(), st.integers(0, 25 * 2**20))),
        sha256=digest,
        caption=draw(st.sampled_from(("", "see attached", "📎"))),
    )


def _json_values() -> SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )


def metadata() -> SearchStrategy[dict[str, Any]]:
    """Free metadata: small JSON-compatible mappings (a profile name, a locale, nesting)."""
    known = st.fixed_dictionaries(
        {},
        optional={
            "profile_name": st.sampled_from(_NAMES),
            "locale": st.sampled_from(("en-GB", "de-DE", "ja-JP", "pt-BR")),
        },
    )
    free = st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8),
                           _json_values(), max_size=3)  # fmt: skip
    return st.one_of(st.just({}), known, free)


def contents(
    *, text: SearchStrategy[str] | None = None, max_attachments: int = 2
) -> SearchStrategy[Content]:
    """Message content: text, up to ``max_attachments`` attachments, metadata."""
    return st.builds(
        lambda t, a, m: Content(text=t, attachments=tuple(a), metadata=m),
        text if text is not None else texts(),
        st.lists(attachments(), max_size=max_attachments),
        metadata(),
    )


def channels() -> SearchStrategy[str]:
    """Channel names: the well-known ones, and now and then a custom one (``kiosk``)."""
    return st.sampled_from((*CHANNELS, "kiosk", "line", "rcs"))


def parties(kinds: Sequence[PartyKind] = tuple(PartyKind)) -> SearchStrategy[Party]:
    """Participants: ``agent:alice``, ``bot:faq``, ``queue:billing``, ``customer:...``."""
    names = {
        PartyKind.CUSTOMER: ("cu_0001", "cu_0002"),
        PartyKind.BOT: ("faq", "orders", "vendor-x"),
        PartyKind.QUEUE: ("billing", "returns", "vip"),
        PartyKind.AGENT: ("alice", "bob", "chidi"),
        PartyKind.SYSTEM: ("convthread", "sweeper"),
    }
    return st.sampled_from(list(kinds)).flatmap(
        lambda k: st.sampled_from(names[k]).map(lambda n: Party(k, n))
    )


# --------------------------------------------------------------------------- inbound


def _provider_id(channel: str, n: int) -> str:
    if channel == Channel.SMS:
        return f"SM{n:032x}"
    if channel == Channel.WHATSAPP:
        return f"wamid.HBgL{n:012d}"
    if channel == Channel.EMAIL:
        return f"<{n:08x}@mail.example.com>"
    if channel == Channel.VOICE:
        return f"CA{n:032x}"
    if channel == Channel.MESSENGER:
        return f"m_{n:020d}"
    if channel == Channel.TWITTER:
        return f"{1_700_000_000_000_000_000 + n}"
    return f"{channel}-{n:06d}"


#: Identifier kinds a channel delivers, with the trust the channel gives them.
_CHANNEL_SENDERS: Final[dict[str, tuple[tuple[str, Trust], ...]]] = {
    Channel.SMS: ((IdentifierKind.PHONE, Trust.ASSERTED),),
    Channel.VOICE: ((IdentifierKind.PHONE, Trust.ASSERTED),),
    Channel.WHATSAPP: ((IdentifierKind.PHONE, Trust.ASSERTED),),
    Channel.EMAIL: ((IdentifierKind.EMAIL, Trust.CLAIMED),),
    Channel.WEBCHAT: ((IdentifierKind.SESSION, Trust.ASSERTED),),
    Channel.MESSENGER: ((IdentifierKind.HANDLE, Trust.ASSERTED),),
    Channel.TWITTER: ((IdentifierKind.HANDLE, Trust.ASSERTED),),
    Channel.APP: ((IdentifierKind.DEVICE, Trust.ASSERTED),),
}


def _primary_sender(channel: str) -> SearchStrategy[SenderIdentifier]:
    kind, trust = _CHANNEL_SENDERS.get(channel, ((IdentifierKind.SESSION, Trust.ASSERTED),))[0]
    if kind == IdentifierKind.HANDLE:
        ident = handles(channel if channel in PLATFORMS else "twitter")
    else:
        ident = _KIND_STRATEGIES[kind]()
    return ident.map(
        lambda i: SenderIdentifier(i, trust, "channel" if trust > Trust.CLAIMED else "")
    )


@st.composite
def inbounds(
    draw: st.DrawFn,
    channel: str | SearchStrategy[str] | None = None,
    *,
    sender: SearchStrategy[tuple[SenderIdentifier, ...]] | None = None,
    sent_at: SearchStrategy[datetime] | None = None,
    content: SearchStrategy[Content] | None = None,
) -> Inbound:
    """Inbound messages as a channel adapter produces them.

    The sender fits the channel (an asserted phone on SMS, voice and WhatsApp; a claimed
    address on e-mail; an asserted session on web chat, sometimes with a claimed e-mail
    typed in a form or a verified account after a login...); e-mail has a subject and
    sometimes ``In-Reply-To``/``References``; provider message ids look like the
    provider's. Pass ``channel`` (a name or a strategy) to fix the channel.
    """
    if channel is None:
        ch = draw(channels())
    elif isinstance(channel, str):
        ch = Channel.validate(channel)
    else:
        ch = draw(channel)
    if sender is not None:
        who = draw(sender)
    else:
        primary = draw(_primary_sender(ch))
        extra: list[SenderIdentifier] = []
        if ch in (Channel.WEBCHAT, Channel.APP) and draw(st.booleans()):
            extra.append(draw(sender_identifiers(emails(), st.sampled_from(list(Trust)))))
        if ch in (Channel.WEBCHAT, Channel.APP) and draw(st.booleans()):
            extra.append(draw(sender_identifiers(accounts(), st.just(Trust.VERIFIED))))
        who = (primary, *extra)
    n = draw(st.integers(0, 10**9))
    subject = ""
    reply_to: str | None = None
    references: tuple[str, ...] = ()
    if ch == Channel.EMAIL:
        subject = draw(st.sampled_from(("", "Order A-10234", "Re: your refund", "Fwd: invoice")))
        refs = draw(st.lists(st.integers(0, 10**6).map(lambda k: _provider_id(ch, k)), max_size=2))
        references = tuple(refs)
        reply_to = refs[-1] if refs else None
    elif ch in (Channel.WHATSAPP, Channel.MESSENGER) and draw(st.booleans()):
        reply_to = _provider_id(ch, draw(st.integers(0, 10**6)))
    return Inbound(
        channel=ch,
        provider_message_id=_provider_id(ch, n),
        sender=who,
        content=draw(content if content is not None else contents()),
        sent_at=draw(sent_at if sent_at is not None else timestamps()),
        recipient=draw(st.sampled_from(("", "+447700900000", "support@acme.example"))),
        reply_to=reply_to,
        references=references,
        subject=subject,
        # an explicit key, when there is one, is tied to the provider id: same id, same key
        idempotency_key=f"{ch}:{n}" if draw(st.booleans()) else None,
    )


def history_replies(
    channel: str | SearchStrategy[str] | None = None,
    *,
    sent_at: SearchStrategy[datetime] | None = None,
) -> SearchStrategy[HistoryReply]:
    """Company replies from history (:class:`~convthread.HistoryReply`): a staff sender,
    a provider id like the channel's, answering another provider id of the channel."""
    chosen = (
        st.just(Channel.validate(channel))
        if isinstance(channel, str)
        else (channel if channel is not None else channels())
    )
    return chosen.flatmap(
        lambda ch: st.builds(
            lambda n, to, who, c, at: HistoryReply(
                channel=ch,
                provider_message_id=_provider_id(ch, n),
                reply_to=_provider_id(ch, to),
                sender=who,
                content=c,
                sent_at=at,
            ),
            st.integers(0, 10**9),
            st.integers(0, 10**9),
            parties((PartyKind.AGENT, PartyKind.BOT, PartyKind.QUEUE)),
            contents(),
            sent_at if sent_at is not None else timestamps(),
        )
    )


class OutboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Conversations.send` takes besides the thread id.

    ``send(convs, thread_id)`` sends it (``convs`` sync); ``kwargs()`` gives the keyword
    arguments for an async ``send``.
    """

    content: Content
    sender: Party
    channel: str | None = None
    provider_message_id: str | None = None
    idempotency_key: str | None = None
    reply_to: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "channel": self.channel,
            "provider_message_id": self.provider_message_id,
            "idempotency_key": self.idempotency_key,
            "reply_to": self.reply_to,
        }

    def send(self, convs: Any, thread_id: str) -> SendResult:
        result: SendResult = convs.send(thread_id, self.content, **self.kwargs())
        return result


def outbound_messages(
    *,
    sender: SearchStrategy[Party] | None = None,
    channel: SearchStrategy[str | None] | None = None,
) -> SearchStrategy[OutboundMessage]:
    """Outbound messages by agents, bots and the system (default channel: the customer's
    last one); some carry the provider's message id or an idempotency key."""
    return st.builds(
        lambda c, s, ch, pid, key: OutboundMessage(
            content=c, sender=s, channel=ch, provider_message_id=pid, idempotency_key=key
        ),
        contents(),
        sender
        if sender is not None
        else parties((PartyKind.AGENT, PartyKind.BOT, PartyKind.SYSTEM)),
        channel if channel is not None else st.one_of(st.none(), st.sampled_from(CHANNELS)),
        st.one_of(st.none(), st.integers(0, 10**6).map(lambda n: f"out-{n:06d}")),
        st.one_of(st.none(), st.integers(0, 10**6).map(lambda n: f"send-{n}")),
    )


# --------------------------------------------------------------------------- events

_RULES: Final = ("new_thread", "recency", "explicit_reference", "topic_key", "exact_match")


_REASON_CODES: Final = (
    "continuity.new_thread.first",
    "continuity.new_thread.undecided",
    "acme.unregistered",  # a code whose renderer is gone: it reads as a fallback
)
_PARAM_VALUES: Final = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(string.ascii_lowercase + string.digits + "_", max_size=10),
)  # fmt: skip


def decisions() -> SearchStrategy[Decision]:
    """Decisions: a rule name, string evidence, and a reason code with parameters (some
    codes registered, one not) or a stored sentence (:meth:`Decision.text`)."""
    evidence = st.dictionaries(
        st.sampled_from(("thread", "identifier", "gap_seconds")),
        st.text(string.ascii_lowercase + string.digits + "_", max_size=10),
        max_size=2,
    )
    coded = st.builds(
        lambda rule, code, params, ev: Decision(rule=rule, code=code, params=params, evidence=ev),
        st.sampled_from(_RULES),
        st.sampled_from(_REASON_CODES),
        st.dictionaries(st.sampled_from(("topic", "tier", "n")), _PARAM_VALUES, max_size=2),
        evidence,
    )
    text = st.builds(
        lambda rule, reason, ev: Decision.text(rule, reason, evidence=ev),
        st.sampled_from(_RULES),
        st.sampled_from(("first conversation of this customer", "within the window")),
        evidence,
    )
    return st.one_of(coded, text)


def evidences() -> SearchStrategy[Evidence]:
    """Evidence for an identity link: channel, method, who and when."""
    return st.builds(
        lambda ch, method, by, at, detail: Evidence(
            channel=ch, method=method, by=by, at=at, detail=detail
        ),
        st.one_of(st.just(""), st.sampled_from(CHANNELS)),
        st.sampled_from(("channel", "claim", "otp", "login", "signed-token", "agent", "import")),
        st.sampled_from(("", "agent:alice", "channel:sms", "system")),
        st.one_of(st.none(), timestamps()),
        st.sampled_from(("", "arrived with message SM0001")),
    )


_ids = st.integers(1, 9999)
_thread_ids = _ids.map(lambda n: f"th_{n:04d}")
_customer_ids = _ids.map(lambda n: f"cu_{n:04d}")
_handoff_ids = _ids.map(lambda n: f"ho_{n:04d}")
_seqs = st.integers(1, 500)
_tokens = st.integers(0, 100)
_emoji = st.sampled_from(("", *_EMOJI))
_reasons = st.sampled_from(("", "refund over limit", "customer asked for a person"))
_opt_party = st.one_of(st.none(), parties())
_topics = st.one_of(st.none(), st.integers(10000, 99999).map(lambda n: f"order:A-{n}"))
_texts_small = st.sampled_from(_PHRASES)


def _b(cls: Callable[..., T], **fields: SearchStrategy[Any]) -> SearchStrategy[T]:
    return st.builds(cls, at=timestamps(), **fields)


#: One strategy per event type (thread and customer events), each value valid on its own.
EVENT_STRATEGIES: Final[dict[type[Any], SearchStrategy[Any]]] = {
    ThreadStarted: _b(ThreadStarted, customer_id=_customer_ids, channel=st.sampled_from(CHANNELS),
                      topic=_topics, predecessor=st.one_of(st.none(), _thread_ids),
                      decision=st.one_of(st.none(), decisions())),
    MessageReceived: st.deferred(lambda: inbounds().flatmap(_received_from)),
    MessageSent: _b(MessageSent, channel=st.sampled_from(CHANNELS), sender=parties(),
                    content=contents(), provider_message_id=st.one_of(st.none(), _ids.map(str)),
                    fencing_token=_tokens),
    ProviderIdRecorded: _b(ProviderIdRecorded, message_seq=_seqs,
                           provider_message_id=_ids.map(lambda n: f"out-{n}")),
    StatusUpdated: _b(StatusUpdated, message_seq=_seqs,
                      status=st.sampled_from(list(DeliveryStatus)), reported_at=timestamps(),
                      error=st.sampled_from(("", "30007 carrier violation"))),
    MessageEdited: _b(MessageEdited, message_seq=_seqs, content=contents(), by=_opt_party),
    MessageDeleted: _b(MessageDeleted, message_seq=_seqs, by=_opt_party),
    ReactionSet: _b(ReactionSet, message_seq=_seqs, by=parties(), emoji=_emoji),
    LifecycleChanged: _b(LifecycleChanged, status=st.sampled_from(list(ThreadStatus)),
                         reason=_reasons, by=_opt_party),
    ThreadReassigned: _b(ThreadReassigned, customer_id=_customer_ids,
                         previous_customer_id=_customer_ids,
                         merge_id=st.one_of(st.just(""), _ids.map(lambda n: f"mg_{n:04d}"))),
    AttributeSet: _b(AttributeSet, name=st.sampled_from(("order_id", "language", "tier")),
                     value=_json_values(), by=_opt_party),
    IntentDetected: _b(IntentDetected, name=st.sampled_from(("refund", "where_is_my_order")),
                       confidence=st.floats(0, 1), by=_opt_party),
    HandoffRequested: _b(HandoffRequested, handoff_id=_handoff_ids, target=parties(),
                         reason=_reasons, requested_by=_opt_party),
    HandoffOffered: _b(HandoffOffered, handoff_id=_handoff_ids, offered_to=parties(),
                       expires_at=timestamps()),
    HandoffAccepted: _b(HandoffAccepted, handoff_id=_handoff_ids, by=parties(),
                        fencing_token=_tokens, snapshot_seq=st.integers(0, 500)),
    HandoffDeclined: _b(HandoffDeclined, handoff_id=_handoff_ids, by=parties(), reason=_reasons),
    HandoffExpired: _b(HandoffExpired, handoff_id=_handoff_ids),
    ControlReleased: _b(ControlReleased, by=parties(), fencing_token=_tokens, reason=_reasons),
    ControlTransferred: _b(ControlTransferred, handoff_id=_handoff_ids, by=_opt_party,
                           to=parties(), fencing_token=_tokens, reason=_reasons),
    MessageErased: _b(MessageErased, original_type=st.sampled_from(("message_received",
                                                                    "message_sent"))),
    CustomerCreated: _b(CustomerCreated, decision=st.one_of(st.none(), decisions())),
    IdentifierLinked: _b(IdentifierLinked, identifier=identifiers(), trust=trusts(),
                         evidence=evidences()),
    IdentifierUnlinked: _b(IdentifierUnlinked, identifier=identifiers(), reason=_reasons,
                           by=st.sampled_from(("", "agent:alice"))),
    IdentifierVerified: _b(IdentifierVerified, identifier=identifiers(),
                           previous=st.sampled_from((Trust.CLAIMED, Trust.ASSERTED)),
                           evidence=evidences()),
    CustomerMerged: _b(CustomerMerged, merge_id=_ids.map(lambda n: f"mg_{n:04d}"),
                       survivor=_customer_ids, absorbed=_customer_ids,
                       identifiers=st.lists(st.tuples(identifiers(), trusts()), max_size=2)
                       .map(tuple),
                       threads=st.lists(_thread_ids, max_size=2).map(tuple),
                       decision=st.one_of(st.none(), decisions())),
    CustomerUnmerged: _b(CustomerUnmerged, merge_id=_ids.map(lambda n: f"mg_{n:04d}"),
                         survivor=_customer_ids, restored=_customer_ids,
                         identifiers=st.lists(st.tuples(identifiers(), trusts()), max_size=2)
                         .map(tuple),
                         threads=st.lists(_thread_ids, max_size=2).map(tuple),
                         by=st.sampled_from(("", "agent:alice")), reason=_reasons),
    MergeSuggested: _b(MergeSuggested, suggestion_id=_ids.map(lambda n: f"ms_{n:04d}"),
                       other=_customer_ids, identifier=identifiers(), decision=decisions()),
    MergeSuggestionResolved: _b(MergeSuggestionResolved,
                                suggestion_id=_ids.map(lambda n: f"ms_{n:04d}"),
                                accepted=st.booleans(), by=st.sampled_from(("", "agent:alice"))),
    CustomerErased: _b(CustomerErased, by=st.sampled_from(("", "agent:alice", "dpo"))),
}  # fmt: skip


def _received_from(inbound: Inbound) -> SearchStrategy[MessageReceived]:
    from convthread.codec import fingerprint

    return st.builds(
        lambda at, d, r: MessageReceived(
            at=at,
            channel=inbound.channel,
            provider_message_id=inbound.provider_message_id,
            idempotency_key=inbound.key,
            fingerprint=fingerprint(inbound),
            sender=max(inbound.sender, key=lambda s: s.trust.rank),
            content=inbound.content,
            sent_at=inbound.sent_at,
            recipient=inbound.recipient,
            reply_to=inbound.reply_to,
            references=inbound.references,
            subject=inbound.subject,
            decision=d,
            resolution=r,
        ),
        st.just(inbound.sent_at)
        | timestamps(inbound.sent_at, inbound.sent_at + timedelta(hours=1)),
        st.one_of(st.none(), decisions()),
        st.one_of(st.none(), decisions()),
    )


_THREAD_EVENT_TYPES: Final[tuple[type[Any], ...]] = typing.get_args(ThreadEvent)
_CUSTOMER_EVENT_TYPES: Final[tuple[type[Any], ...]] = typing.get_args(CustomerEvent)


def _for_type(tp: Any) -> SearchStrategy[Any]:
    """A small strategy for a field type of an event (used for event types added to the
    unions after this module was written; the named strategies above are preferred)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return st.one_of([_for_type(a) for a in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_for_type(args[0]), max_size=2).map(tuple)
        return st.tuples(*(_for_type(a) for a in args))
    if origin is dict and len(args) == 2 and args[0] is str and args[1] is not Any:
        return st.dictionaries(st.sampled_from(("a", "b")), _for_type(args[1]), max_size=2)
    if origin is dict or tp is dict:
        return metadata()
    simple: dict[Any, SearchStrategy[Any]] = {
        type(None): st.none(),
        datetime: timestamps(),
        str: st.sampled_from(("", "x", "web-1")),
        int: st.integers(0, 100),
        float: st.floats(0, 1),
        bool: st.booleans(),
        Party: parties(),
        Identifier: identifiers(),
        SenderIdentifier: sender_identifiers(),
        Content: contents(),
        Decision: decisions(),
        Evidence: evidences(),
        Any: _json_values(),
    }
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _generic_struct(tp)
    return st.from_type(tp)


def _generic_struct(cls: type[T]) -> SearchStrategy[T]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _for_type(hints[f.name]) for f in msgspec.structs.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


def struct_strategy(struct_type: type[T]) -> SearchStrategy[T]:
    """A strategy for any convthread struct: the named one where this module has one (an
    event type, :class:`~convthread.Inbound`...), else one derived from the struct's field
    types (for types added to the public API after this module was written)."""
    if struct_type in EVENT_STRATEGIES:
        return EVENT_STRATEGIES[struct_type]
    return _generic_struct(struct_type)


def event_strategy(event_type: type[T]) -> SearchStrategy[T]:
    """The strategy for one event type: the named one in :data:`EVENT_STRATEGIES`, or one
    derived from the struct's field types for event types it does not name."""
    known = EVENT_STRATEGIES.get(event_type)
    if known is not None:
        return known
    return _generic_struct(event_type)


def thread_events() -> SearchStrategy[ThreadEvent]:
    """Any thread event, each valid on its own (for sequences, see :func:`thread_histories`)."""
    return st.one_of([event_strategy(t) for t in _THREAD_EVENT_TYPES])


def customer_events() -> SearchStrategy[CustomerEvent]:
    """Any customer (identity) event, each valid on its own."""
    return st.one_of([event_strategy(t) for t in _CUSTOMER_EVENT_TYPES])


# --------------------------------------------------------------------------- histories

_GAPS: Final = (
    timedelta(seconds=30), timedelta(minutes=5), timedelta(hours=2), timedelta(hours=25),
    timedelta(days=3),
)  # fmt: skip
_ACTIONS: Final = (
    "received", "sent", "status", "provider_id", "edit", "delete", "reaction", "lifecycle",
    "attribute", "intent", "handoff_request", "handoff_offer", "handoff_accept",
    "handoff_decline", "handoff_expire", "release", "transfer",
)  # fmt: skip
_CONTROLLERS: Final = (
    Party(PartyKind.BOT, "faq"), Party(PartyKind.QUEUE, "billing"),
    Party(PartyKind.AGENT, "alice"), Party(PartyKind.AGENT, "bob"),
)  # fmt: skip


_HISTORY_START: Final = timestamps(EPOCH, EPOCH + timedelta(days=30))
_HISTORY_CHANNEL: Final = st.sampled_from(CHANNELS)
_HISTORY_CONTENT: Final = st.deferred(
    lambda: contents(text=st.one_of(st.just(""), _texts_small), max_attachments=1)
)
_PRIMARY_SENDERS: Final = {ch: _primary_sender(ch) for ch in CHANNELS}
_AGENT_OR_BOT: Final = parties((PartyKind.AGENT, PartyKind.BOT))
_ANY_PARTY: Final = parties()
_ANY_IDENTIFIER: Final = identifiers()
_TRUST: Final = trusts()
_ABSORBED: Final = st.lists(st.tuples(_ANY_IDENTIFIER, _TRUST), max_size=2)


def _fingerprint(inbound: Inbound) -> str:
    from convthread.codec import fingerprint

    return fingerprint(inbound)


@st.composite
def thread_histories(
    draw: st.DrawFn, thread_id: str = "th_0001", max_events: int = 12
) -> list[StoredEvent]:
    """A valid event sequence of one thread: ``thread_started`` first, then messages,
    delivery statuses of sent messages, edits, reactions, lifecycle moves the lifecycle
    allows, handoffs (request, offer, accept/decline/expire, release, transfer) with a
    fencing token that only grows. Times never go back; nothing follows ``closed``.
    """
    at = draw(_HISTORY_START)
    customer = draw(_customer_ids)
    channel = draw(st.sampled_from(CHANNELS))
    started = ThreadStarted(
        at=at, customer_id=customer, channel=channel, topic=draw(_topics),
        decision=Decision(rule="new_thread", code="continuity.new_thread.first"),
    )  # fmt: skip
    events: list[StoredEvent] = [StoredEvent(1, started)]
    state = start_state(thread_id, started)
    sent: list[int] = []
    messages: list[int] = []
    handoffs = 0
    for _ in range(draw(st.integers(0, max_events))):
        if state.status is ThreadStatus.CLOSED:
            break
        at = at + draw(st.sampled_from(_GAPS))
        possible = ["received", "sent", "lifecycle", "attribute", "intent"]
        if sent:
            possible += ["status", "provider_id"]
        if messages:
            possible += ["edit", "delete", "reaction"]
        if state.pending is None:
            possible.append("handoff_request")
        else:
            possible += ["handoff_accept", "transfer"]
            possible.append(
                "handoff_offer" if state.pending.offered_to is None else "handoff_decline"
            )
            if state.pending.offered_to is not None:
                possible.append("handoff_expire")
        if state.controller is not None:
            possible.append("release")
        action = draw(st.sampled_from(tuple(a for a in _ACTIONS if a in possible)))
        seq = state.version + 1
        event: ThreadEvent
        if action == "received":
            ch = draw(_HISTORY_CHANNEL)
            inbound = Inbound(
                channel=ch,
                provider_message_id=_provider_id(ch, seq),
                sender=(draw(_PRIMARY_SENDERS[ch]),),
                content=draw(_HISTORY_CONTENT),
                sent_at=at,
            )
            event = MessageReceived(
                at=at,
                channel=ch,
                provider_message_id=inbound.provider_message_id,
                idempotency_key=inbound.key,
                fingerprint=_fingerprint(inbound),
                sender=inbound.sender[0],
                content=inbound.content,
                sent_at=at,
            )
            messages.append(seq)
        elif action == "sent":
            who = state.controller or draw(_AGENT_OR_BOT)
            event = MessageSent(
                at=at,
                channel=state.last_channel,
                sender=who,
                content=draw(_HISTORY_CONTENT),
                fencing_token=state.fencing_token,
            )
            sent.append(seq)
            messages.append(seq)
        elif action == "status":
            event = StatusUpdated(
                at=at,
                message_seq=draw(st.sampled_from(tuple(sent))),
                status=draw(st.sampled_from(list(DeliveryStatus))),
                reported_at=at,
            )
        elif action == "provider_id":
            event = ProviderIdRecorded(
                at=at,
                message_seq=draw(st.sampled_from(tuple(sent))),
                provider_message_id=f"out-{seq:06d}",
            )
        elif action == "edit":
            event = MessageEdited(
                at=at,
                message_seq=draw(st.sampled_from(tuple(messages))),
                content=draw(_HISTORY_CONTENT),
            )
        elif action == "delete":
            event = MessageDeleted(at=at, message_seq=draw(st.sampled_from(tuple(messages))))
        elif action == "reaction":
            event = ReactionSet(
                at=at,
                message_seq=draw(st.sampled_from(tuple(messages))),
                by=draw(_ANY_PARTY),
                emoji=draw(_emoji),
            )
        elif action == "lifecycle":
            to = draw(
                st.sampled_from(
                    tuple(sorted(LIFECYCLE[state.status], key=list(ThreadStatus).index))
                )
            )
            until = at + timedelta(hours=4) if to is ThreadStatus.SNOOZED else None
            event = LifecycleChanged(
                at=at,
                status=to,
                reason=draw(_reasons),
                until=until,
                reopened=to is ThreadStatus.OPEN and state.status is ThreadStatus.RESOLVED,
            )
        elif action == "attribute":
            event = _at(draw(EVENT_STRATEGIES[AttributeSet]), at)
        elif action == "intent":
            event = _at(draw(EVENT_STRATEGIES[IntentDetected]), at)
        elif action == "handoff_request":
            handoffs += 1
            event = HandoffRequested(
                at=at,
                handoff_id=f"ho_{handoffs:04d}",
                target=draw(st.sampled_from(_CONTROLLERS)),
                reason=draw(_reasons),
            )
        else:
            pending = state.pending
            assert pending is not None or action == "release"
            if action == "handoff_offer":
                assert pending is not None
                event = HandoffOffered(
                    at=at,
                    handoff_id=pending.handoff_id,
                    offered_to=draw(st.sampled_from(_CONTROLLERS)),
                    expires_at=at + timedelta(minutes=2),
                )
            elif action == "handoff_accept":
                assert pending is not None
                event = HandoffAccepted(
                    at=at,
                    handoff_id=pending.handoff_id,
                    by=pending.offered_to or pending.target,
                    fencing_token=state.fencing_token + 1,
                    snapshot_seq=state.version,
                )
            elif action == "handoff_decline":
                assert pending is not None and pending.offered_to is not None
                event = HandoffDeclined(
                    at=at,
                    handoff_id=pending.handoff_id,
                    by=pending.offered_to,
                    reason=draw(_reasons),
                )
            elif action == "handoff_expire":
                assert pending is not None
                event = HandoffExpired(at=at, handoff_id=pending.handoff_id)
            elif action == "release":
                assert state.controller is not None
                event = ControlReleased(
                    at=at, by=state.controller, fencing_token=state.fencing_token + 1
                )
            else:  # transfer
                assert pending is not None
                event = ControlTransferred(
                    at=at,
                    handoff_id=pending.handoff_id,
                    by=state.controller,
                    to=pending.target,
                    fencing_token=state.fencing_token + 1,
                )
        state = evolve(state, seq, event)
        events.append(StoredEvent(seq, event))
    return events


_E = TypeVar("_E", bound=msgspec.Struct)


def _at(event: _E, at: datetime) -> _E:
    return msgspec.structs.replace(event, at=at)


def _fold(thread_id: str, history: list[StoredEvent]) -> ThreadState:
    first = history[0].event
    assert isinstance(first, ThreadStarted)
    state = start_state(thread_id, first)
    for stored in history[1:]:
        state = evolve(state, stored.seq, stored.event)
    return state


def thread_states(thread_id: str = "th_0001") -> SearchStrategy[ThreadState]:
    """Thread states, each the fold of a valid :func:`thread_histories` sequence."""
    return thread_histories(thread_id).map(lambda h: _fold(thread_id, h))


def thread_views(thread_id: str = "th_0001") -> SearchStrategy[ThreadView]:
    """A thread's state with the events it folds from."""
    return thread_histories(thread_id).map(
        lambda h: ThreadView(state=_fold(thread_id, h), events=tuple(h))
    )


def stored_events() -> SearchStrategy[StoredEvent]:
    """An event with its sequence number, taken from a valid history."""
    return thread_histories(max_events=4).flatmap(st.sampled_from)


def pending_handoffs() -> SearchStrategy[PendingHandoff]:
    """A requested handoff, offered or not yet."""
    return st.builds(
        lambda hid, target, at, offered: PendingHandoff(
            handoff_id=hid, target=target, requested_at=at,
            offered_to=target if offered else None,
            expires_at=at + timedelta(minutes=2) if offered else None,
        ),
        _handoff_ids, st.sampled_from(_CONTROLLERS), timestamps(), st.booleans(),
    )  # fmt: skip


@st.composite
def customer_histories(
    draw: st.DrawFn, customer_id: str = "cu_0001", max_events: int = 8
) -> list[tuple[int, CustomerEvent]]:
    """A valid identity history: ``customer_created``, then identifiers linked (each at
    most once), verified (only linked, unverified ones), unlinked, merge suggestions, an
    absorbed customer's identifiers merged in; erasure, if any, comes last."""
    at = draw(_HISTORY_START)
    events: list[tuple[int, CustomerEvent]] = [(1, CustomerCreated(at=at))]
    state = evolve_customer(None, customer_id, 1, events[0][1])
    suggestions = 0
    for _ in range(draw(st.integers(0, max_events))):
        at = at + draw(st.sampled_from(_GAPS))
        linked = list(state.identifiers.values())
        unverified = [(i, t) for i, t in linked if t is not Trust.VERIFIED]
        possible = ["link", "suggest", "merge"]
        if unverified:
            possible.append("verify")
        if linked:
            possible.append("unlink")
        possible.append("erase")
        action = draw(st.sampled_from(tuple(possible)))
        event: CustomerEvent
        if action == "link":
            ident = draw(_ANY_IDENTIFIER)
            if ident.key in state.identifiers:
                continue
            event = IdentifierLinked(
                at=at,
                identifier=ident,
                trust=draw(_TRUST),
                evidence=Evidence(method="channel", at=at),
            )
        elif action == "verify":
            ident, trust = draw(st.sampled_from(tuple(unverified)))
            event = IdentifierVerified(
                at=at, identifier=ident, previous=trust, evidence=Evidence(method="otp", at=at)
            )
        elif action == "unlink":
            ident, _ = draw(st.sampled_from(tuple(linked)))
            event = IdentifierUnlinked(at=at, identifier=ident, reason="customer asked")
        elif action == "suggest":
            suggestions += 1
            event = MergeSuggested(
                at=at,
                suggestion_id=f"ms_{suggestions:04d}",
                other="cu_9999",
                identifier=draw(_ANY_IDENTIFIER),
                decision=Decision(
                    rule="merge_suggested",
                    code="merge.suggested",
                    params={
                        "a": customer_id,
                        "b": "cu_9999",
                        "weakest": "claimed",
                        "min": "asserted",
                    },
                    evidence={"survivor": customer_id, "absorbed": "cu_9999"},
                ),
            )
        elif action == "merge":
            absorbed = draw(_ABSORBED)
            fresh = tuple(
                {i.key: (i, t) for i, t in absorbed if i.key not in state.identifiers}.values()
            )
            event = CustomerMerged(
                at=at,
                merge_id=f"mg_{len(events):04d}",
                survivor=customer_id,
                absorbed="cu_9999",
                identifiers=fresh,
            )
        else:
            event = CustomerErased(at=at, by="dpo")
        seq = len(events) + 1
        state = evolve_customer(state, customer_id, seq, event)
        events.append((seq, event))
        if action == "erase":
            break
    return events


def _fold_customer(customer_id: str, history: list[tuple[int, CustomerEvent]]) -> CustomerState:
    state: CustomerState | None = None
    for seq, event in history:
        state = evolve_customer(state, customer_id, seq, event)
    assert state is not None
    return state


def customer_states(customer_id: str = "cu_0001") -> SearchStrategy[CustomerState]:
    """Customer states, each the fold of a valid :func:`customer_histories` sequence."""
    return customer_histories(customer_id).map(lambda h: _fold_customer(customer_id, h))


def customer_views(customer_id: str = "cu_0001") -> SearchStrategy[CustomerView]:
    """A customer's state, identity events and thread ids."""
    return st.builds(
        lambda h, n: CustomerView(
            state=_fold_customer(customer_id, h), events=tuple(h),
            thread_ids=tuple(f"th_{i:04d}" for i in range(1, n + 1)),
        ),
        customer_histories(customer_id), st.integers(0, 3),
    )  # fmt: skip


@st.composite
def ingest_results(draw: st.DrawFn) -> IngestResult:
    """The outcome of ingesting a message, consistent with a valid thread history."""
    history = draw(thread_histories())
    state = _fold("th_0001", history)
    received = [s for s in history if isinstance(s.event, MessageReceived)]
    if received:
        stored = draw(st.sampled_from(received))
        event = stored.event
        assert isinstance(event, MessageReceived)
        seq = stored.seq
    else:
        event = draw(EVENT_STRATEGIES[MessageReceived])
        seq = state.version + 1
    duplicate = draw(st.booleans())
    started = history[0].event
    assert isinstance(started, ThreadStarted)
    return IngestResult(
        customer_id=state.customer_id, thread_id=state.id, seq=seq, event=event,
        duplicate=duplicate, new_thread=seq == 2, new_customer=seq == 2 and draw(st.booleans()),
        decision=event.decision or started.decision
        or Decision(rule="new_thread", code="continuity.new_thread.first"),
        resolution=event.resolution or Decision(
            rule="exact_match", code="identity.exact_match", params={"customer": state.customer_id},
            evidence={"identifier": "email:known@example.com", "trust": "asserted"}),
    )  # fmt: skip


@st.composite
def send_results(draw: st.DrawFn) -> SendResult:
    """The outcome of sending a message, consistent with a valid thread history."""
    history = draw(thread_histories())
    sent = [s for s in history if isinstance(s.event, MessageSent)]
    if sent:
        stored = draw(st.sampled_from(sent))
        event, seq = stored.event, stored.seq
    else:
        state = _fold("th_0001", history)
        event = MessageSent(
            at=state.last_activity or state.created_at,
            channel=state.last_channel,
            sender=Party(PartyKind.AGENT, "alice"),
            content=draw(contents()),
        )
        seq = state.version + 1
    assert isinstance(event, MessageSent)
    return SendResult(thread_id="th_0001", seq=seq, event=event, duplicate=draw(st.booleans()))


# --------------------------------------------------------------------------- channel updates


def _report_ids() -> SearchStrategy[str]:
    return st.integers(0, 10**6).map(lambda n: f"out-{n:06d}")


def status_reports() -> SearchStrategy[StatusReport]:
    """Delivery status reports for outbound messages."""
    return st.builds(
        lambda ch, pid, status, at, err: StatusReport(
            channel=ch, provider_message_id=pid, status=status, at=at,
            error=err if status is DeliveryStatus.FAILED else "",
        ),
        st.sampled_from(CHANNELS), _report_ids(), st.sampled_from(list(DeliveryStatus)),
        timestamps(), st.sampled_from(("", "30007 carrier violation")),
    )  # fmt: skip


def edit_reports() -> SearchStrategy[EditReport]:
    """A sender's edit of an earlier message."""
    return st.builds(
        lambda ch, pid, c, at: EditReport(channel=ch, provider_message_id=pid, content=c, at=at),
        st.sampled_from(CHANNELS), _report_ids(), contents(), timestamps(),
    )  # fmt: skip


def deletion_reports() -> SearchStrategy[DeletionReport]:
    """A sender's deletion (unsend) of an earlier message."""
    return st.builds(
        lambda ch, pid, at: DeletionReport(channel=ch, provider_message_id=pid, at=at),
        st.sampled_from(CHANNELS), _report_ids(), timestamps(),
    )  # fmt: skip


def reaction_reports() -> SearchStrategy[ReactionReport]:
    """A reaction to a message (an empty emoji removes it)."""
    return st.builds(
        lambda ch, pid, e, at: ReactionReport(channel=ch, provider_message_id=pid, emoji=e, at=at),
        st.sampled_from(CHANNELS), _report_ids(), _emoji, timestamps(),
    )  # fmt: skip


def unsupported_reports() -> SearchStrategy[Unsupported]:
    """Content an adapter does not model, kept with its raw fragment."""
    return st.builds(
        lambda ch, kind, raw: Unsupported(channel=ch, reason=f"{kind} messages are not modelled",
                                          kind=kind, raw=raw),
        st.sampled_from(CHANNELS), st.sampled_from(("order", "poll", "unsupported")),
        _json_values(),
    )  # fmt: skip


def channel_results() -> SearchStrategy[ChannelResult]:
    """Anything an adapter's ``parse`` may return."""
    return st.one_of(
        inbounds(), status_reports(), edit_reports(), deletion_reports(), reaction_reports(),
        unsupported_reports(),
    )  # fmt: skip


# --------------------------------------------------------------------------- provider payloads


@dataclass(frozen=True)
class ProviderPayload:
    """A raw payload as a provider delivers it, with the reference adapter that reads it.

    * ``adapter``: the adapter module in :mod:`convthread.channels` (``"sms"``,
      ``"voice"``, ``"whatsapp"``, ``"email"``, ``"webchat"``, ``"social"``).
    * ``payload``: what the provider sends: form fields (a mapping or the encoded body),
      JSON (bytes or decoded), raw MIME bytes.
    * ``message_id``: the provider message id of the message it carries; two payloads with
      the same id are deliveries of the same message.

    :meth:`parse` runs the adapter (``received_at=``, ``clock=`` passed on).
    """

    adapter: str
    payload: Any
    message_id: str

    def parse(
        self, *, received_at: datetime | None = None, clock: Any = None
    ) -> list[ChannelResult]:
        from convthread import channels

        module = getattr(channels, self.adapter)
        results: list[ChannelResult] = module.parse(
            self.payload, received_at=received_at, clock=clock
        )
        return results


_HEX: Final = "0123456789abcdef"
_BUSINESS_NUMBER: Final = "+18005550199"


def _sid(prefix: str) -> SearchStrategy[str]:
    return st.integers(0, 16**32 - 1).map(lambda n: f"{prefix}{n:032x}")


def _e164() -> SearchStrategy[str]:
    return phones().map(lambda ident: ident.value)


def _form(fields: dict[str, str], encoded: bool) -> Any:
    from urllib.parse import urlencode

    return urlencode(fields).encode("ascii") if encoded else fields


def _json_body(value: dict[str, Any], encoded: bool) -> Any:
    import json

    return json.dumps(value, ensure_ascii=False).encode("utf-8") if encoded else value


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@st.composite
def twilio_sms_webhooks(draw: st.DrawFn) -> ProviderPayload:
    """Twilio Messaging webhooks for inbound SMS/MMS (``MessageSid``, ``From``, ``To``,
    ``Body``, ``NumMedia`` with ``MediaUrlN``), as form fields or the encoded body. They
    carry no timestamp."""
    sid = draw(_sid("SM"))
    fields = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": draw(_e164()),
        "To": _BUSINESS_NUMBER,
        "Body": draw(texts(max_size=300)),
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    media = draw(st.integers(0, 2))
    fields["NumMedia"] = str(media)
    for i in range(media):
        fields[f"MediaUrl{i}"] = f"https://api.twilio.com/media/ME{draw(st.integers(0, 10**6))}"
        fields[f"MediaContentType{i}"] = draw(st.sampled_from(("image/jpeg", "video/mp4")))
    if draw(st.booleans()):
        fields["FromCountry"] = "GB"
        fields["NumSegments"] = "1"
    return ProviderPayload("sms", _form(fields, draw(st.booleans())), sid)


@st.composite
def twilio_voice_webhooks(draw: st.DrawFn) -> ProviderPayload:
    """Twilio Voice webhooks: an incoming call (``CallStatus=ringing``), or the result of a
    ``<Gather>`` (``SpeechResult`` or ``Digits``, sometimes with ``SequenceNumber``), as
    form fields or the encoded body. They carry no timestamp."""
    call = draw(_sid("CA"))
    caller = draw(st.one_of(_e164(), st.sampled_from(("anonymous", "+266696687"))))
    fields = {
        "CallSid": call,
        "AccountSid": "AC" + "0" * 32,
        "From": caller,
        "Caller": caller,
        "To": _BUSINESS_NUMBER,
        "Direction": "inbound",
    }
    kind = draw(st.sampled_from(("ringing", "speech", "digits")))
    message_id = call
    if kind == "ringing":
        fields["CallStatus"] = "ringing"
    else:
        fields["CallStatus"] = "in-progress"
        if kind == "speech":
            said = draw(st.sampled_from(_PHRASES))
            fields["SpeechResult"] = said
            fields["Confidence"] = "0.91"
        else:
            said = draw(st.text("0123456789*#", min_size=1, max_size=6))
            fields["Digits"] = said
        seq = draw(st.one_of(st.none(), st.integers(1, 99).map(str)))
        if seq is not None:
            fields["SequenceNumber"] = seq
        # without a SequenceNumber the adapter names the result by a hash of what was said
        message_id = f"{call}:{seq or hashlib.sha256(said.encode()).hexdigest()[:16]}"
    return ProviderPayload("voice", _form(fields, draw(st.booleans())), message_id)


@st.composite
def whatsapp_webhooks(draw: st.DrawFn) -> ProviderPayload:
    """WhatsApp Cloud API webhook envelopes carrying one customer message (text, an image
    with a caption, a button reply, sometimes in reply to an earlier message), as JSON
    bytes or decoded."""
    wa_id = draw(_e164()).lstrip("+")
    msg_id = "wamid." + draw(st.integers(0, 10**12).map(lambda n: f"HBgM{n:012d}"))
    at = draw(timestamps())
    message: dict[str, Any] = {"from": wa_id, "id": msg_id, "timestamp": str(int(at.timestamp()))}
    kind = draw(st.sampled_from(("text", "image", "interactive")))
    if kind == "text":
        message |= {"type": "text", "text": {"body": draw(texts(max_size=300)) or "hi"}}
    elif kind == "image":
        message |= {
            "type": "image",
            "image": {
                "id": f"media-{draw(st.integers(0, 10**6))}",
                "mime_type": "image/jpeg",
                "sha256": "0" * 64,
                "caption": draw(st.sampled_from(("", "the box", "📦"))),
            },
        }
    else:
        message |= {
            "type": "interactive",
            "interactive": {
                "type": "button_reply",
                "button_reply": {"id": "refund", "title": "Refund"},
            },
        }
    if draw(st.booleans()):
        message["context"] = {"from": "15550001111", "id": "wamid.OUR-LAST"}
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": "1",
                            },
                            "contacts": [
                                {"profile": {"name": draw(st.sampled_from(_NAMES))}, "wa_id": wa_id}
                            ],
                            "messages": [message],
                        },
                    }
                ],
            }
        ],
    }
    return ProviderPayload("whatsapp", _json_body(envelope, draw(st.booleans())), msg_id)


@st.composite
def raw_emails(
    draw: st.DrawFn, *, date: bool | None = None, message_id: bool | None = None
) -> ProviderPayload:
    """Raw RFC 5322 messages (bytes): a plain-text body in any script, sometimes a reply
    (``In-Reply-To``/``References``). ``date`` and ``message_id`` fix whether the
    ``Date`` and ``Message-ID`` headers are present (default: drawn); a message without a
    Message-ID is identified by the hash of its bytes, as the adapter does."""
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import format_datetime

    msg = EmailMessage(policy=SMTP)
    name = draw(st.sampled_from(_NAMES)).lower()
    local = "".join(c for c in name if c.isascii() and c.isalnum()) + str(draw(st.integers(0, 999)))
    msg["From"] = f"{local}@{draw(st.sampled_from(('example.com', 'mail.example.org')))}"
    msg["To"] = "help@acme.example"
    msg["Subject"] = draw(st.sampled_from(("Order A-10234", "Re: your refund", "Hello")))
    if date if date is not None else draw(st.booleans()):
        msg["Date"] = format_datetime(draw(timestamps()))
    ident = ""
    if message_id if message_id is not None else draw(st.booleans()):
        ident = f"{draw(st.integers(0, 10**9))}.{local}@mail.example.com"
        msg["Message-ID"] = f"<{ident}>"
    if draw(st.booleans()):
        msg["In-Reply-To"] = "<a1@acme.example>"
        msg["References"] = "<a1@acme.example>"
    msg.set_content(draw(texts(max_size=300)) or "Hello")
    raw = msg.as_bytes()
    return ProviderPayload("email", raw, ident or "sha256:" + hashlib.sha256(raw).hexdigest())


@st.composite
def webchat_events(draw: st.DrawFn) -> ProviderPayload:
    """Web chat widget ``message`` events (:mod:`convthread.channels.webchat`), sometimes
    without ``sent_at``, with a typed e-mail, a device id, a page URL or a tapped quick
    reply; as a decoded JSON object or its bytes."""
    msg_id = f"m-{draw(st.integers(0, 10**9))}"
    event: dict[str, Any] = {
        "type": "message",
        "id": msg_id,
        "session_id": f"s-{draw(st.integers(0, 10**6)):06d}",
        "text": draw(texts(max_size=300)),
    }
    if draw(st.booleans()):
        event["sent_at"] = _iso(draw(timestamps()))
    if draw(st.booleans()):
        event["email"] = f"{draw(st.sampled_from(_NAMES)).lower()}@example.com"
    if draw(st.booleans()):
        event["device_id"] = f"d-{draw(st.integers(0, 999))}"
    if draw(st.booleans()):
        event["page_url"] = "https://shop.example/cart"
    if draw(st.booleans()):
        event["quick_reply"] = {"id": "yes", "title": "Yes"}
    return ProviderPayload("webchat", _json_body(event, draw(st.booleans())), msg_id)


@st.composite
def voice_events(draw: st.DrawFn) -> ProviderPayload:
    """Provider-neutral voice JSON events (:mod:`convthread.channels.voice`): the start of a
    call or a caller's final transcript segment, sometimes without ``at``."""
    call = f"CA{draw(st.integers(0, 10**9))}"
    event: dict[str, Any] = {"call_id": call, "from": draw(_e164()), "to": _BUSINESS_NUMBER}
    if draw(st.booleans()):
        event["at"] = _iso(draw(timestamps()))
    message_id = call
    if draw(st.booleans()):
        event["type"] = draw(st.sampled_from(("call.ringing", "call.initiated")))
    else:
        segment = str(draw(st.integers(0, 50)))
        event |= {
            "type": "transcript",
            "segment_id": segment,
            "speaker": "caller",
            "text": draw(st.sampled_from(_PHRASES)),
            "is_final": True,
        }
        message_id = f"{call}:{segment}"
    return ProviderPayload("voice", _json_body(event, draw(st.booleans())), message_id)


@st.composite
def tweets(draw: st.DrawFn) -> ProviderPayload:
    """Twitter/X API v2 responses: a public mention (sometimes a reply) or a DM event, with
    the author in ``includes.users``; as JSON bytes or decoded."""
    user = str(draw(st.integers(10**3, 10**12)))
    at = draw(timestamps()).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    item_id = str(draw(st.integers(10**15, 10**19)))
    text = draw(texts(max_size=280))
    item: dict[str, Any]
    if draw(st.booleans()):
        item = {
            "id": item_id,
            "text": "@Acme " + text,
            "author_id": user,
            "created_at": at,
            "conversation_id": item_id,
        }
        if draw(st.booleans()):
            item["conversation_id"] = "1700"
            item["referenced_tweets"] = [{"type": "replied_to", "id": "1719"}]
    else:
        item = {
            "id": item_id,
            "event_type": "MessageCreate",
            "text": text,
            "sender_id": user,
            "dm_conversation_id": f"{user}-1000",
            "created_at": at,
        }
    body = {"data": item, "includes": {"users": [{"id": user, "username": draw(handle_values())}]}}
    return ProviderPayload("social", _json_body(body, draw(st.booleans())), item_id)


def provider_payloads() -> SearchStrategy[ProviderPayload]:
    """A payload from any provider the reference adapters read: Twilio SMS and voice form
    posts, WhatsApp envelopes, raw e-mails, web chat and voice JSON events, tweets and DMs.
    Draw a list with ``unique_by=lambda p: (p.adapter, p.message_id)`` for distinct
    messages."""
    return st.one_of(
        twilio_sms_webhooks(),
        twilio_voice_webhooks(),
        whatsapp_webhooks(),
        raw_emails(),
        webchat_events(),
        voice_events(),
        tweets(),
    )


_OUTBOUND_IDS: Final = st.one_of(
    st.none(),
    st.sampled_from(("", ":", "<>", "a:b", "wamid.HBgM", "<c3@mail.example.com>", " x ")),
    st.text(max_size=40),
)
_TITLES: Final = st.text(min_size=1, max_size=40)


@st.composite
def channel_outbounds(
    draw: st.DrawFn, *, to: str | None = None, sender: str | None = None
) -> Outbound:
    """Whole :class:`~convthread.channels.base.Outbound` values for ``render``: text, quick
    replies, an option list, a card with buttons, attachments, reply-to, references,
    subject, thread reference and message id, each sometimes odd (``reply_to=":"``, an
    empty or very long title, control characters). ``to`` and ``sender`` fix the
    addresses (default: drawn)."""
    from convthread.channels.base import Button, Card, ListItem, OptionList, QuickReply

    def opt_id() -> str:
        value = draw(_OUTBOUND_IDS)
        return value or ""

    replies = draw(
        st.lists(st.builds(QuickReply, title=_TITLES, payload=st.text(max_size=20)), max_size=12)
    )
    options = None
    if draw(st.booleans()):
        items = draw(
            st.lists(
                st.builds(
                    ListItem,
                    title=_TITLES,
                    id=st.text(max_size=10),
                    description=st.text(max_size=80),
                ),
                min_size=1,
                max_size=14,
            )
        )
        options = OptionList(items=tuple(items), button=draw(_TITLES), title=draw(texts(40)))
    card = None
    if draw(st.booleans()):
        buttons = draw(
            st.lists(
                st.builds(
                    Button,
                    title=_TITLES,
                    payload=st.text(max_size=10),
                    url=st.sampled_from(("", "https://shop.example/o/1")),
                ),
                max_size=4,
            )
        )
        card = Card(
            title=draw(_TITLES),
            text=draw(texts(200)),
            buttons=tuple(buttons),
            image_url=draw(st.sampled_from(("", "https://cdn.example.com/i.png"))),
            url=draw(st.sampled_from(("", "https://shop.example/o/8812"))),
        )
    reply_to = draw(_OUTBOUND_IDS)
    return Outbound(
        to=to if to is not None else draw(st.one_of(_e164(), st.just("s-1"))),
        sender=sender if sender is not None else draw(st.sampled_from(("", _BUSINESS_NUMBER))),
        text=draw(st.one_of(texts(), st.sampled_from(("", "word " * 1000, "😀" * 300)))),
        quick_replies=tuple(replies),
        options=options,
        card=card,
        attachments=tuple(draw(st.lists(attachments(), max_size=2))),
        reply_to=reply_to,
        references=tuple(draw(st.lists(_OUTBOUND_IDS.map(lambda v: v or "r"), max_size=3))),
        subject=draw(st.sampled_from(("", "Your order", "Re: x\r\ny", "é" * 300))),
        thread_ref=opt_id(),
        message_id=opt_id(),
    )


# --------------------------------------------------------------------------- infrastructure


def manual_clocks() -> SearchStrategy[ManualClock]:
    """Manual clocks starting at a generated (UTC) instant."""
    return timestamps().map(ManualClock)


def sequential_ids() -> SearchStrategy[SequentialIds]:
    """Deterministic id sources with a generated width."""
    return st.integers(1, 8).map(SequentialIds)


def continuity_policies() -> SearchStrategy[ContinuityPolicy]:
    """Continuity policies with generated windows (and sometimes a per-channel override)."""
    hours = st.sampled_from((24, 1, 4, 72))
    return st.builds(
        lambda w, r, override: ContinuityPolicy(
            window=timedelta(hours=w), reopen_window=timedelta(days=r),
            channel_windows={("webchat", "voice"): timedelta(minutes=30)} if override else {},
        ),
        hours, st.sampled_from((7, 1, 30)), st.booleans(),
    )  # fmt: skip


def identifier_registries() -> SearchStrategy[IdentifierRegistry]:
    """Identifier registries, with or without a default phone region."""
    return st.one_of(st.none(), st.sampled_from(DEFAULT_REGIONS)).map(
        lambda r: IdentifierRegistry(default_region=r)
    )


# --------------------------------------------------------------------------- journeys


class Persona(msgspec.Struct, frozen=True, kw_only=True):
    """A person in a journey, with every identifier they may show up with.

    ``sessions`` are their web chat visits (a new visit is a new, unknown session).
    """

    name: str
    phone: Identifier
    email: Identifier
    twitter: Identifier
    messenger: Identifier
    device: Identifier
    account: Identifier
    sessions: tuple[Identifier, ...] = ()

    def __repr__(self) -> str:
        return f"Persona({self.name!r}, {self.phone.value}, {self.email.value})"


_PERSONA_DOMAINS: Final = (
    "example.com", "mail.example.org", "bücher.example", "пример.рф", "例え.jp", "münchen.de",
)  # fmt: skip


def _persona(seed: int, name: str, region: str, domain: str) -> Persona:
    tag = f"{name.replace('ü', 'u')}{seed}"
    return Persona(
        name=name,
        phone=normalize_identifier(
            IdentifierKind.PHONE, _phone_from(region, _PHONE_TYPES[0], seed % 10000)
        ),
        email=normalize_identifier(IdentifierKind.EMAIL, f"{tag}@{domain}"),
        twitter=normalize_identifier(IdentifierKind.HANDLE, f"@{tag.title()}", scope="twitter"),
        messenger=normalize_identifier(IdentifierKind.HANDLE, str(10**15 + seed),
                                       scope="messenger"),
        device=normalize_identifier(IdentifierKind.DEVICE, f"ios-{seed:08x}"),
        account=normalize_identifier(IdentifierKind.ACCOUNT, f"cust-{seed:05d}", scope="acme"),
        sessions=(normalize_identifier(IdentifierKind.SESSION, f"web-{seed}-1"),
                  normalize_identifier(IdentifierKind.SESSION, f"web-{seed}-2")),
    )  # fmt: skip


def personas() -> SearchStrategy[Persona]:
    """People with a mobile number (of a region in :data:`DEFAULT_REGIONS`), an e-mail
    address (some on internationalized domains), a Twitter handle, a Messenger id, an
    app device, an account (tenant ``acme``) and two web chat sessions, all derived from
    a small seed so they shrink to ``ana``, ``+447400120000``, ``ana0@example.com``."""
    return st.builds(
        _persona, st.integers(0, 9999), st.sampled_from(_NAMES),
        st.sampled_from(DEFAULT_REGIONS), st.sampled_from(_PERSONA_DOMAINS),
    )  # fmt: skip


class Expect(msgspec.Struct, frozen=True, kw_only=True):
    """What a step's outcome must be; ``None`` and empty fields expect nothing.

    * ``duplicate_of``: the step (1-based) this one redelivers: the outcome must be that
      step's, with ``duplicate=True``.
    * ``new_customer`` / ``same_customer_as``: a new customer, or the customer of one of
      the listed steps (one step listed: exactly that customer).
    * ``new_thread`` / ``same_thread_as``: a new thread, or the thread of that step.
    * ``why``: the rule that makes it knowable, in words (shown when it fails).
    """

    duplicate_of: int | None = None
    new_customer: bool | None = None
    same_customer_as: tuple[int, ...] = ()
    new_thread: bool | None = None
    same_thread_as: int | None = None
    why: str = ""


class Ingest(msgspec.Struct, frozen=True, kw_only=True, tag="ingest"):
    """``persona`` delivers ``inbound`` at clock time ``at`` (``inbound.sent_at`` is earlier
    for a late arrival)."""

    persona: int
    at: datetime
    inbound: Inbound
    expect: Expect = Expect()


class Redeliver(msgspec.Struct, frozen=True, kw_only=True, tag="redeliver"):
    """The provider delivers step ``of``'s payload again (a webhook retry)."""

    of: int
    at: datetime
    expect: Expect = Expect()


class Send(msgspec.Struct, frozen=True, kw_only=True, tag="send"):
    """An agent, bot or the system sends ``message`` on the thread step ``on`` landed in."""

    on: int
    at: datetime
    message: OutboundMessage
    expect: Expect = Expect()


class Handoff(msgspec.Struct, frozen=True, kw_only=True, tag="handoff"):
    """The thread step ``on`` landed in is handed off to ``to`` (a queue, an agent or a
    bot) and ``accepted_by`` takes control (``request_handoff`` then ``accept_handoff``).
    Later sends on that thread come from the new controller."""

    on: int
    at: datetime
    to: Party
    accepted_by: Party
    expect: Expect = Expect()


#: A journey step.
Step = Union[Ingest, Redeliver, Send, Handoff]


class JourneyFailure(AssertionError):
    """A journey step's outcome broke its expectation (the message names the step)."""

    def __init__(self, journey: Journey, step: int, problem: str) -> None:
        self.journey = journey
        self.step = step
        self.problem = problem
        super().__init__(f"step #{step}: {problem}\n{journey.describe(mark=step)}")


class HandoffOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a :class:`Handoff` step produced: who controls the thread now."""

    thread_id: str
    handoff_id: str
    controller: Party
    fencing_token: int


@dataclass
class JourneyLog:
    """What a replay produced: one result per step, in order."""

    results: list[IngestResult | SendResult | HandoffOutcome] = field(default_factory=list)

    @property
    def customers(self) -> set[str]:
        return {r.customer_id for r in self.results if isinstance(r, IngestResult)}

    @property
    def threads(self) -> set[str]:
        return {r.thread_id for r in self.results}


def _offset(start: datetime, at: datetime) -> str:
    seconds = int((at - start).total_seconds())
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return sign + ("".join(parts) or "0m")


class Journey(msgspec.Struct, frozen=True, kw_only=True):
    """People moving across channels over time, with the outcome each step implies.

    ``play(convs)`` replays it and raises :class:`JourneyFailure` at the first unmet
    expectation; ``describe()`` tells it as numbered lines. ``window`` and
    ``reopen_window`` are the continuity policy's, which the expectations assume.
    """

    personas: tuple[Persona, ...]
    steps: tuple[Step, ...]
    start: datetime = EPOCH
    window: timedelta = timedelta(hours=24)
    reopen_window: timedelta = timedelta(days=7)
    channel_windows: dict[str, timedelta] = {}  # "previous>current" -> window

    # -- reading

    def inbound(self, step: int) -> Inbound:
        """The payload step ``step`` (1-based) delivers (a redelivery's original's)."""
        s = self.steps[step - 1]
        while isinstance(s, Redeliver):
            s = self.steps[s.of - 1]
        if not isinstance(s, Ingest):
            raise ValueError(f"step #{step} is a {s.__struct_config__.tag}; it delivers nothing")
        return s.inbound

    @property
    def deliveries(self) -> list[Inbound]:
        """Every inbound payload in delivery order, redeliveries included."""
        return [
            self.inbound(n)
            for n, s in enumerate(self.steps, 1)
            if isinstance(s, (Ingest, Redeliver))
        ]

    @property
    def distinct_messages(self) -> int:
        """How many different inbound messages the journey delivers."""
        return sum(isinstance(s, Ingest) for s in self.steps)

    def _line(self, n: int, step: Step) -> str:
        when = _offset(self.start, step.at)
        if isinstance(step, Ingest):
            i = step.inbound
            who = ", ".join(f"{s.identifier} ({s.trust.value})" for s in i.sender)
            late = ""
            if i.sent_at < step.at:
                late = f", late: sent at {_offset(self.start, i.sent_at)}"
            reply = f", replying to {i.reply_to}" if i.reply_to else ""
            text = (i.content.text[:30] + "...") if len(i.content.text) > 30 else i.content.text
            return (
                f"#{n} {when} {self.personas[step.persona].name} on {i.channel} "
                f"[{i.provider_message_id}] as {who}{late}{reply}: {text!r}"
            )
        if isinstance(step, Redeliver):
            return f"#{n} {when} redelivery of #{step.of}"
        if isinstance(step, Handoff):
            return (
                f"#{n} {when} the thread of #{step.on} is handed off to {step.to}, "
                f"accepted by {step.accepted_by}"
            )
        return f"#{n} {when} {step.message.sender} sends on the thread of #{step.on}"

    def describe(self, mark: int | None = None) -> str:
        """The journey as numbered lines with the expectations (``mark`` flags a step)."""
        lines = []
        for n, step in enumerate(self.steps, 1):
            flag = ">> " if n == mark else "   "
            lines.append(flag + self._line(n, step))
            if step.expect.why:
                lines.append(f"      expect: {step.expect.why}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        body = "; ".join(self._line(n, s) for n, s in enumerate(self.steps, 1))
        n = len(self.steps)
        return f"Journey({n} step{'s' if n != 1 else ''}: {body})"

    # -- replaying

    def play(
        self,
        convs: Any,
        *,
        clock: ManualClock | None = None,
        ingest: Callable[[Inbound], IngestResult] | None = None,
        send: Callable[[str, OutboundMessage], SendResult] | None = None,
    ) -> JourneyLog:
        """Replay the journey against ``convs`` (a :class:`~convthread.Conversations`) and
        check every expectation, then that every thread's sequence numbers are gap-free
        and hold what was acknowledged.

        The clock (``clock``, else ``convs.config.clock``) must be a
        :class:`~convthread.ManualClock`: it is set to each step's time. Pass ``ingest``
        (and ``send``) to go through your own code, e.g. a webhook handler that calls
        ``convs.ingest`` and returns its result.
        """
        clock = (
            clock if clock is not None else getattr(getattr(convs, "config", None), "clock", None)
        )
        if not isinstance(clock, ManualClock):
            raise TypeError(
                "Journey.play needs a ManualClock: build Conversations(..., clock=ManualClock())"
                " or pass clock="
            )
        policy = getattr(getattr(convs, "config", None), "continuity", None)
        if isinstance(policy, ContinuityPolicy) and (
            policy.window != self.window or policy.reopen_window != self.reopen_window
        ):
            raise ValueError(
                f"the journey assumes a {self.window} window and a {self.reopen_window} reopen "
                f"window; convs has {policy.window} and {policy.reopen_window}: draw journeys "
                "with journeys(policy=...)"
            )
        do_ingest = ingest if ingest is not None else convs.ingest
        do_send = send if send is not None else (lambda tid, m: m.send(convs, tid))
        log = JourneyLog()
        for n, step in enumerate(self.steps, 1):
            clock.set(step.at)
            if isinstance(step, Handoff):
                log.results.append(self._handoff(n, step, log, convs))
                continue
            if isinstance(step, Send):
                thread_id = log.results[step.on - 1].thread_id
                before = convs.thread_state(thread_id).version
                sent = do_send(thread_id, step.message)
                if not isinstance(sent, SendResult):
                    raise JourneyFailure(self, n, f"send returned {sent!r}, not a SendResult")
                if sent.thread_id != thread_id or sent.seq != before + 1 or sent.duplicate:
                    raise JourneyFailure(
                        self, n,
                        f"expected seq {before + 1} on {thread_id} (not a duplicate), got "
                        f"seq {sent.seq} on {sent.thread_id}, duplicate={sent.duplicate}",
                    )  # fmt: skip
                log.results.append(sent)
                continue
            inbound = self.inbound(n)
            result = do_ingest(inbound)
            if not isinstance(result, IngestResult):
                raise JourneyFailure(self, n, f"ingest returned {result!r}, not an IngestResult")
            log.results.append(result)
            self._check(n, step.expect, result, log, inbound, convs)
        self._check_threads(log, convs)
        return log

    def _handoff(self, n: int, step: Handoff, log: JourneyLog, convs: Any) -> HandoffOutcome:
        thread_id = log.results[step.on - 1].thread_id
        before = convs.thread_state(thread_id)
        by = before.controller
        requested = convs.request_handoff(
            thread_id, to=step.to, reason="journey handoff", by=by,
            fencing_token=before.fencing_token if by is not None else None,
        )  # fmt: skip
        convs.accept_handoff(requested.id, by=step.accepted_by)
        after = convs.thread_state(thread_id)
        if after.controller != step.accepted_by or after.fencing_token <= before.fencing_token:
            raise JourneyFailure(
                self, n,
                f"after the handoff {after.controller} controls {thread_id} with token "
                f"{after.fencing_token}; expected {step.accepted_by} with a token above "
                f"{before.fencing_token}",
            )  # fmt: skip
        return HandoffOutcome(
            thread_id=thread_id, handoff_id=requested.id, controller=after.controller,
            fencing_token=after.fencing_token,
        )  # fmt: skip

    def _check(
        self, n: int, e: Expect, r: IngestResult, log: JourneyLog, inbound: Inbound, convs: Any
    ) -> None:
        def fail(problem: str) -> None:
            raise JourneyFailure(self, n, f"{problem} (expected because {e.why or 'see above'})")

        if e.duplicate_of is not None:
            orig = log.results[e.duplicate_of - 1]
            assert isinstance(orig, IngestResult)
            if not r.duplicate:
                fail(f"a redelivery of #{e.duplicate_of} was not reported as a duplicate")
            if (r.customer_id, r.thread_id, r.seq) != (orig.customer_id, orig.thread_id, orig.seq):
                fail(
                    f"a redelivery of #{e.duplicate_of} gave ({r.customer_id}, {r.thread_id}, "
                    f"seq {r.seq}), the original gave ({orig.customer_id}, {orig.thread_id}, "
                    f"seq {orig.seq})"
                )
            return
        if r.duplicate:
            fail(f"a first delivery was reported as a duplicate ({r.thread_id} seq {r.seq})")
        if r.event.provider_message_id != inbound.provider_message_id:
            fail(f"the stored event is {r.event.provider_message_id!r}, not this message")
        if e.new_customer is not None and r.new_customer != e.new_customer:
            fail(f"new_customer is {r.new_customer}, expected {e.new_customer}")
        if e.same_customer_as:
            allowed = {log.results[k - 1].customer_id for k in e.same_customer_as}  # type: ignore[union-attr]
            if r.customer_id not in allowed:
                steps = ", ".join(f"#{k}" for k in e.same_customer_as)
                fail(f"customer {r.customer_id} is not the customer of {steps} ({sorted(allowed)})")
        if e.new_thread is not None and r.new_thread != e.new_thread:
            fail(f"new_thread is {r.new_thread}, expected {e.new_thread}: {r.decision.reason}")
        if e.same_thread_as is not None:
            want = log.results[e.same_thread_as - 1].thread_id
            if r.thread_id != want:
                fail(
                    f"landed in {r.thread_id}, not {want} (the thread of #{e.same_thread_as}): "
                    f"{r.decision.reason}"
                )
        version = convs.thread_state(r.thread_id).version
        if version != r.seq:
            fail(f"the message is at seq {r.seq} but thread {r.thread_id} is at version {version}")

    def _check_threads(self, log: JourneyLog, convs: Any) -> None:
        for thread_id in sorted(log.threads):
            events = convs.events(thread_id)
            seqs = [e.seq for e in events]
            if seqs != list(range(1, len(seqs) + 1)):
                raise JourneyFailure(self, len(self.steps), f"{thread_id} has seqs {seqs}")
        for n, r in enumerate(log.results, 1):
            if isinstance(r, HandoffOutcome) or r.duplicate:
                continue
            stored = convs.events(r.thread_id, after=r.seq - 1)
            if not stored or stored[0].seq != r.seq or type(stored[0].event) is not type(r.event):
                raise JourneyFailure(
                    self, n, f"the acknowledged event at {r.thread_id} seq {r.seq} is not stored"
                )


# -- the model that computes expectations while a journey is drawn


@dataclass
class _Thread:
    label: int  # the step that started it
    last_activity: datetime
    last_channel: str
    live: bool = True
    refs: list[tuple[str, str]] = field(default_factory=list)  # (channel, provider id)
    controller: Party | None = None


@dataclass
class _Group:
    """Customers the model can't tell apart any more (after a message bridged them)."""

    steps: list[int]
    certain: bool = True
    creator: int = 0  # for a certain group: the step whose customer it is
    live: _Thread | None = None


@dataclass
class _Model:
    policy: ContinuityPolicy
    groups: list[_Group] = field(default_factory=list)
    owner: dict[str, int] = field(default_factory=dict)  # identifier key -> group index
    maybe: dict[str, int] = field(default_factory=dict)  # key -> group it may belong to
    linked: dict[str, Trust] = field(default_factory=dict)  # owner key -> linked trust
    parent: dict[int, int] = field(default_factory=dict)
    step_thread: dict[int, _Thread | None] = field(default_factory=dict)

    def find(self, g: int) -> int:
        while self.parent.get(g, g) != g:
            g = self.parent[g]
        return g

    def ingest(self, n: int, inbound: Inbound) -> Expect:
        keys = [s.identifier.key for s in inbound.sender]
        known = {self.find(self.owner[k]) for k in keys if k in self.owner}
        maybe = {self.find(self.maybe[k]) for k in keys if k in self.maybe}
        involved = known | maybe
        if not involved:
            g = len(self.groups)
            thread = _Thread(n, inbound.sent_at, inbound.channel)
            self.groups.append(_Group([n], creator=n, live=thread))
            for sid in inbound.sender:
                self._link(sid.identifier.key, g, sid.trust)
            self._note(thread, inbound)
            self.step_thread[n] = thread
            return Expect(
                new_customer=True,
                new_thread=True,
                why="no identifier was seen before: a new customer and a new thread",
            )
        if len(involved) == 1 and not maybe:
            g = next(iter(involved))
            group = self.groups[g]
            if group.certain:
                # the tie: the strongest known identifier, at the lower of its presented
                # and linked trust; new links (and upgrades) are capped at the tie
                tie = max(
                    (min(s.trust, self.linked[s.identifier.key]) for s in inbound.sender
                     if s.identifier.key in self.owner),
                    key=lambda t: t.rank,
                )  # fmt: skip
                for sid in inbound.sender:
                    key = sid.identifier.key
                    capped = min(sid.trust, tie)
                    if key in self.owner:
                        self.linked[key] = max(self.linked[key], capped)
                    else:
                        self._link(key, g, capped)
                group.steps.append(n)
                return self._continue(n, group, inbound)
        # Identifiers of several customers (or of an uncertain one): a merge policy decides.
        root = min(involved)
        merged = self.groups[root]
        for g in involved - {root}:
            self.parent[g] = root
            merged.steps.extend(self.groups[g].steps)
        merged.certain = False
        merged.live = None
        merged.steps.append(n)
        for k in keys:
            if k not in self.owner:
                self.maybe[k] = root
        self.step_thread[n] = None
        if known and not maybe:
            steps = tuple(sorted(s for s in merged.steps if s != n))
            return Expect(new_customer=False, same_customer_as=steps,
                          why="known identifiers of several customers: one of them")  # fmt: skip
        return Expect(
            why="identifiers held only as claims, or by several customers: the merge and "
            "takeover rules decide (no expectation)"
        )

    def _link(self, key: str, group: int, trust: Trust) -> None:
        """Identifiers held at ``asserted`` or better resolve certainly; one held only as a
        claim may be taken over by a stronger presentation, so it is only a "maybe"."""
        if trust >= Trust.ASSERTED:
            self.owner[key] = group
            self.linked[key] = trust
        else:
            self.maybe[key] = group

    def _continue(self, n: int, group: _Group, inbound: Inbound) -> Expect:
        live = group.live
        assert live is not None
        same = Expect(new_customer=False, same_customer_as=(group.creator,))
        refs = [inbound.reply_to, *inbound.references]
        if any((inbound.channel, r) in live.refs for r in refs if r):
            why = "it replies to a message of the customer's open thread"
            self._touch(live, inbound.sent_at, inbound.channel)
        else:
            window = self.policy.window_for(live.last_channel, inbound.channel)
            gap = inbound.sent_at - live.last_activity
            if gap > window:
                live.live = False
                thread = _Thread(n, inbound.sent_at, inbound.channel)
                group.live = thread
                self._note(thread, inbound)
                self.step_thread[n] = thread
                return msgspec.structs.replace(
                    same, new_thread=True,
                    why=f"a known identifier: the same customer; {_fmt(gap)} after the last "
                    f"activity, beyond the {_fmt(window)} window: a new thread",
                )  # fmt: skip
            why = (f"within the {_fmt(window)} window of the open thread "
                   f"(last active {_fmt(gap)} before)")  # fmt: skip
            self._touch(live, inbound.sent_at, inbound.channel)
        self._note(live, inbound)
        self.step_thread[n] = live
        return msgspec.structs.replace(
            same, new_thread=False, same_thread_as=live.label,
            why=f"a known identifier: the same customer; {why}",
        )  # fmt: skip

    @staticmethod
    def _touch(thread: _Thread, at: datetime, channel: str) -> None:
        thread.last_activity = max(thread.last_activity, at)
        thread.last_channel = channel

    @staticmethod
    def _note(thread: _Thread, inbound: Inbound) -> None:
        thread.refs.append((inbound.channel, inbound.provider_message_id))

    def send(self, on: int, at: datetime, message: OutboundMessage) -> None:
        thread = self.step_thread.get(on)
        if thread is None:
            return
        self._touch(thread, at, message.channel or thread.last_channel)
        if message.provider_message_id is not None:
            thread.refs.append(
                (message.channel or thread.last_channel, message.provider_message_id)
            )

    def live_refs(self, persona_keys: list[str], channel: str) -> list[str]:
        """Provider ids of the open thread of the (certain) customer ``persona_keys`` point
        at, that a message on ``channel`` can reply to."""
        groups = {self.find(self.owner[k]) for k in persona_keys if k in self.owner}
        if len(groups) != 1 or any(k in self.maybe for k in persona_keys):
            return []
        group = self.groups[groups.pop()]
        if not group.certain or group.live is None:
            return []
        return [pid for ch, pid in group.live.refs if ch == channel]


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"-{_fmt(-delta)}"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


_JOURNEY_GAPS: Final = (
    timedelta(minutes=1), timedelta(seconds=0), timedelta(minutes=10), timedelta(hours=3),
    timedelta(hours=23), timedelta(hours=25), timedelta(days=4),
)  # fmt: skip
_LATENESS: Final = (timedelta(0), timedelta(seconds=30), timedelta(minutes=10), timedelta(hours=3))
_CLAIMS: Final = (
    ("email", Trust.CLAIMED, "claim"), ("account", Trust.VERIFIED, "login"),
    ("phone", Trust.CLAIMED, "claim"), ("email", Trust.VERIFIED, "otp"),
    ("phone", Trust.VERIFIED, "otp"),
)  # fmt: skip
_SENDERS: Final = (Party(PartyKind.AGENT, "alice"), Party(PartyKind.BOT, "faq"),
                   Party(PartyKind.AGENT, "bob"))  # fmt: skip


def _primary(persona: Persona, channel: str, visit: int) -> SenderIdentifier:
    if channel in (Channel.SMS, Channel.VOICE, Channel.WHATSAPP):
        return SenderIdentifier(persona.phone, Trust.ASSERTED, "channel")
    if channel == Channel.EMAIL:
        return SenderIdentifier(persona.email, Trust.CLAIMED)
    if channel == Channel.MESSENGER:
        return SenderIdentifier(persona.messenger, Trust.ASSERTED, "channel")
    if channel == Channel.TWITTER:
        return SenderIdentifier(persona.twitter, Trust.ASSERTED, "channel")
    if channel == Channel.APP:
        return SenderIdentifier(persona.device, Trust.ASSERTED, "channel")
    return SenderIdentifier(persona.sessions[visit], Trust.ASSERTED, "channel")


def _claimed(persona: Persona, kind: str) -> Identifier:
    return {"email": persona.email, "phone": persona.phone, "account": persona.account}[kind]


_JOURNEY_GAP: Final = st.sampled_from(_JOURNEY_GAPS)
_STEP_KINDS: Final = st.sampled_from(("ingest", "redeliver", "send", "handoff"))
_STEP_KINDS_NO_HANDOFF: Final = st.sampled_from(("ingest", "redeliver", "send"))
_HANDOFF_TARGETS: Final = (
    Party(PartyKind.QUEUE, "billing"), Party(PartyKind.QUEUE, "returns"),
    Party(PartyKind.BOT, "orders"),
)  # fmt: skip
_AGENTS: Final = (
    Party(PartyKind.AGENT, "alice"), Party(PartyKind.AGENT, "bob"),
    Party(PartyKind.AGENT, "chidi"),
)  # fmt: skip
_FIRST_STEP: Final = st.just("ingest")
_LATE: Final = st.sampled_from(_LATENESS)
_CLAIM_LISTS: Final = st.lists(st.sampled_from(_CLAIMS), max_size=2, unique_by=lambda c: c[0])
_REPLY_TEXTS: Final = st.sampled_from(
    ("Thanks, looking into it", "Your order ships today 📦", "Could you confirm?")
)
_SENDER_PARTIES: Final = st.sampled_from(_SENDERS)
_PERSONA_LISTS: dict[int, SearchStrategy[list[Persona]]] = {}


def _journey_content() -> SearchStrategy[Content]:
    return contents(text=texts(60), max_attachments=1)


_JOURNEY_CONTENT: Final = st.deferred(_journey_content)


def _persona_lists(max_personas: int) -> SearchStrategy[list[Persona]]:
    if max_personas not in _PERSONA_LISTS:
        _PERSONA_LISTS[max_personas] = st.lists(
            personas(), min_size=1, max_size=max_personas,
            unique_by=(lambda p: p.messenger.key, lambda p: p.phone.key),
        )  # fmt: skip
    return _PERSONA_LISTS[max_personas]


#: Continue a journey? Shrinks to False (stop); three in four journeys go on.
_ANOTHER_STEP: Final = st.sampled_from((False, True, True, True))


@st.composite
def journeys(
    draw: st.DrawFn,
    *,
    max_personas: int = 2,
    min_steps: int = 1,
    max_steps: int = 8,
    channels: Sequence[str] = CHANNELS,
    policy: ContinuityPolicy | None = None,
    start: datetime = EPOCH,
    handoffs: bool = True,
) -> Journey:
    """Journeys of up to ``max_personas`` people over ``min_steps``..``max_steps`` steps.

    Steps: a message on one of ``channels`` (sometimes late, sometimes claiming another
    identifier at some trust level, sometimes replying to an earlier message of the open
    thread), a redelivery of an earlier message, or a send by an agent or a bot on an
    earlier message's thread, or (``handoffs=True``) a handoff of a thread to a queue or a
    bot, accepted by an agent or the bot, after which sends on that thread come from the
    new controller. Time moves on by a minute to four days between steps, so
    messages fall inside and outside the continuity window. ``policy`` is the
    continuity policy of the ``Conversations`` the journey will be played against (its
    windows shape the expectations; a topic extractor is not modelled).
    """
    policy = policy if policy is not None else ContinuityPolicy()
    if policy.topic_extractor is not None:
        raise ValueError("journeys() cannot model a topic extractor; use a policy without one")
    for ch in channels:
        Channel.validate(ch)
    people = draw(_persona_lists(max_personas))
    people = [
        msgspec.structs.replace(p, sessions=tuple(
            normalize_identifier(IdentifierKind.SESSION, f"web-{i}-{v}") for v in (1, 2)))
        for i, p in enumerate(people)
    ]  # fmt: skip
    model = _Model(policy)
    steps: list[Step] = []
    ingested: list[int] = []
    at = start
    n = 0
    # One "another step?" choice before each optional step (not a length drawn up front):
    # the shrinker can then drop any step of a failing journey, not only the last ones.
    while n < max_steps and (n < min_steps or draw(_ANOTHER_STEP)):
        n += 1
        if n > 1:
            at = at + draw(_JOURNEY_GAP)
        kinds = _STEP_KINDS if handoffs else _STEP_KINDS_NO_HANDOFF
        kind = draw(kinds if ingested else _FIRST_STEP)
        known = tuple(k for k in ingested if model.step_thread.get(k) is not None)
        if kind in ("send", "handoff") and not known:
            kind = "ingest"  # the model does not know which thread those messages are in
        if kind == "handoff":
            on = draw(st.sampled_from(known))
            thread = model.step_thread[on]
            assert thread is not None
            target = draw(st.sampled_from(tuple(t for t in _HANDOFF_TARGETS
                                                if t != thread.controller)))  # fmt: skip
            if target.kind is PartyKind.QUEUE:
                accepted_by = draw(
                    st.sampled_from(tuple(a for a in _AGENTS if a != thread.controller))
                )
            else:
                accepted_by = target
            thread.controller = accepted_by
            steps.append(Handoff(on=on, at=at, to=target, accepted_by=accepted_by, expect=Expect(
                why=f"an accepted handoff gives {accepted_by} control with a new fencing token"
            )))  # fmt: skip
            continue
        if kind == "redeliver":
            of = draw(st.sampled_from(tuple(ingested)))
            steps.append(Redeliver(of=of, at=at, expect=Expect(
                duplicate_of=of, why=f"a redelivery of #{of} is stored once and answers as #{of}"
            )))  # fmt: skip
            continue
        if kind == "send":
            on = draw(st.sampled_from(known))
            original = _model_inbound(steps, on)
            pid = f"out-{n:04d}" if draw(st.booleans()) else None
            controller = model.step_thread[on].controller  # type: ignore[union-attr]
            message = OutboundMessage(
                content=Content(text=draw(_REPLY_TEXTS)),
                sender=controller if controller is not None else draw(_SENDER_PARTIES),
                channel=original.channel, provider_message_id=pid,
            )  # fmt: skip
            model.send(on, at, message)
            steps.append(Send(on=on, at=at, message=message, expect=Expect(
                same_thread_as=on, why=f"a send on the thread of #{on} is appended to it"
            )))  # fmt: skip
            continue
        p = draw(st.integers(0, len(people) - 1))
        person = people[p]
        channel = draw(st.sampled_from(tuple(channels)))
        primary = _primary(person, channel, draw(st.integers(0, 1)))
        sender = [primary]
        for claim_kind, trust, method in draw(_CLAIM_LISTS):
            ident = _claimed(person, claim_kind)
            if ident.kind != primary.identifier.kind:
                sender.append(SenderIdentifier(ident, trust, method))
        sent_at = at - draw(_LATE)
        reply_to = None
        refs = model.live_refs([s.identifier.key for s in sender], channel)
        replying: bool = draw(st.booleans()) if refs else False
        if replying:
            reply_to = draw(st.sampled_from(tuple(refs)))
        inbound = Inbound(
            channel=channel,
            provider_message_id=_provider_id(channel, n),
            sender=tuple(sender),
            content=draw(_JOURNEY_CONTENT),
            sent_at=sent_at,
            reply_to=reply_to,
            references=(reply_to,) if reply_to and channel == Channel.EMAIL else (),
            subject="Order A-10234" if channel == Channel.EMAIL else "",
        )
        steps.append(Ingest(persona=p, at=at, inbound=inbound, expect=model.ingest(n, inbound)))
        ingested.append(n)
    channel_windows = {f"{a}>{b}": w for (a, b), w in policy.channel_windows.items()}
    return Journey(
        personas=tuple(people), steps=tuple(steps), start=start, window=policy.window,
        reopen_window=policy.reopen_window, channel_windows=channel_windows,
    )  # fmt: skip


def _model_inbound(steps: Sequence[Step], n: int) -> Inbound:
    s = steps[n - 1]
    while isinstance(s, Redeliver):
        s = steps[s.of - 1]
    assert isinstance(s, Ingest)
    return s.inbound


# Types defined here are registered for st.from_type as soon as this module is imported
# (the entry point registers everything else; see convthread.testing._hypothesis_setup).
st.register_type_strategy(OutboundMessage, lambda _: outbound_messages())
st.register_type_strategy(Persona, lambda _: personas())
st.register_type_strategy(Journey, lambda _: journeys())
