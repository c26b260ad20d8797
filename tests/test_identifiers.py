"""Identifier normalization: phones (every region's example numbers), e-mail, handles,
accounts, custom kinds, caching, and typed errors that name the kind and the reason."""

from __future__ import annotations

from datetime import datetime, timezone

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convthread as ct
from convthread.domain.identifiers import (
    IdentifierRegistry,
    normalize_email,
    normalize_phone,
    platform_scope,
)
from convthread.domain.model import Identifier, Inbound, SenderIdentifier, Trust
from convthread.errors import InvalidIdentifier, UnknownIdentifierKind, ValidationError
from convthread.service._core import NS_CUSTOMER, NS_IDENT, NS_MSG
from tests._thread_util import all_heads
from tests.conftest import StoreFactory

TYPES = [
    t for t in phonenumbers.PhoneNumberType.values() if t != phonenumbers.PhoneNumberType.UNKNOWN
]


def _examples() -> list[tuple[str, int, phonenumbers.PhoneNumber]]:
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                out.append((region, kind, number))
    return out


EXAMPLES = _examples()


def test_there_are_example_numbers_for_every_region() -> None:
    regions = {r for r, _k, _n in EXAMPLES}
    assert regions == set(phonenumbers.SUPPORTED_REGIONS)
    assert len(EXAMPLES) > 1000


def test_every_region_example_number_normalizes_and_is_stable() -> None:
    """E.164 input, national input read in its region, and re-normalizing the result."""
    failures = []
    for region, kind, number in EXAMPLES:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        intl = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        try:
            value = normalize_phone(e164)
            assert value == e164
            assert normalize_phone(value) == value
            assert normalize_phone(intl) == value
            assert normalize_phone(national, region) == value
            assert ct.phone(national, region=region).value == value
        except (InvalidIdentifier, AssertionError) as exc:
            failures.append((region, kind, e164, national, str(exc)))
    assert failures == []


def test_non_geographic_example_numbers_normalize() -> None:
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is None:
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert normalize_phone(e164) == e164
        assert normalize_phone(normalize_phone(e164)) == e164


def test_registry_default_region_reads_national_numbers() -> None:
    gb = IdentifierRegistry(default_region="gb")
    assert gb.default_region == "GB"
    ident = gb.normalize("phone", "07400 123456")
    assert ident == Identifier("phone", "+447400123456")
    assert gb.renormalize(ident) == ident
    # a WhatsApp wa_id (international digits without '+') in a US registry
    us = IdentifierRegistry(default_region="US")
    assert us.normalize("phone", "447400123456").value == "+447400123456"
    assert us.normalize("phone", "(415) 555-2671").value == "+14155552671"
    with pytest.raises(InvalidIdentifier) as info:
        IdentifierRegistry(default_region="XX")
    assert info.value.kind == "phone"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("hello", "not a phone number"),
        ("+1 415", "too short"),
        ("+999 1234567", "country code"),
        ("+1 415 555 26711234567", "too long"),
        ("+1 200 555 0100", "unassigned"),
        ("2671234", "country code"),
    ],
)
def test_invalid_phone_names_kind_and_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        ct.phone(raw)
    assert info.value.kind == "phone"
    assert reason in info.value.reason
    assert "phone" in str(info.value) and info.value.reason in str(info.value)


def test_phone_only_locally_dialable_gives_that_reason() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        ct.phone("253-0000", region="US")
    assert "only dialable locally" in info.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.COM", "ann@example.com"),
        ("  mailto:ann@example.com ", "ann@example.com"),
        ("John.Doe+Tag@example.com", "john.doe+tag@example.com"),
        ("a@Bücher.Example", "a@xn--bcher-kva.example"),
        ('"a@b"@example.com', '"a@b"@example.com'),
        ('"john.doe"@example.com', "john.doe@example.com"),
        ("Ünï@example.com", "ünï@example.com"),
    ],
)
def test_email_normalization(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected
    assert normalize_email(expected) == expected
    assert ct.email(raw) == Identifier("email", expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("ann.example.com", "no '@'"),
        ("ann @example.com", "whitespace"),
        ("a..b@example.com", "RFC 5322"),
        ("ann@localhost", "at least one dot"),
        ("ann@[192.0.2.1]", "literals"),
        ("ann@ex!ample.com", "host name label"),
        ("ann@-example.com", "host name label"),
        ("ann@1.2.3.4", "numeric"),
        ("a@b@example.com", "RFC 5322"),
        ("x" * 65 + "@example.com", "64 octets"),
    ],
)
def test_invalid_email_names_kind_and_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        ct.email(raw)
    assert info.value.kind == "email"
    assert reason in info.value.reason


_atom = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_-",
    min_size=1,
    max_size=12,
)


@given(
    local=st.lists(_atom, min_size=1, max_size=3).map(".".join),
    labels=st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3
    ),
    tld=st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True),
)
def test_email_normalization_is_idempotent_and_case_insensitive(
    local: str, labels: list[str], tld: str
) -> None:
    raw = f"{local}@{'.'.join(labels)}.{tld}"
    value = normalize_email(raw)
    assert normalize_email(value) == value
    assert normalize_email(raw.upper()) == value
    assert value == value.lower()


def test_handles_are_scoped_by_platform_with_case_rules() -> None:
    tw = ct.handle("Twitter", "@AcmeSupport")
    assert tw == Identifier("handle", "acmesupport", "twitter")
    assert ct.handle("x", "acmesupport") == tw  # x is an alias of twitter
    assert platform_scope(" X ") == "twitter"
    ms = ct.handle("messenger", "1234567890")
    assert ms.scope == "messenger" and ms != Identifier("handle", "1234567890", "twitter")
    assert ct.handle("whatsapp", "+447400123456").value == "447400123456"
    # a platform without a case rule keeps the case
    assert ct.handle("slack", "U024BE7LH").value == "U024BE7LH"
    for platform, bad, reason in [
        ("twitter", "@this_handle_is_far_too_long", "twitter handle"),
        ("messenger", "abc", "digits only"),
        ("telegram", "abc", "telegram handle"),
        ("twitter", "two words", "whitespace"),
    ]:
        with pytest.raises(InvalidIdentifier) as info:
            ct.handle(platform, bad)
        assert info.value.kind == "handle"
        assert reason in info.value.reason
    with pytest.raises(InvalidIdentifier, match="needs a scope"):
        ct.normalize_identifier("handle", "acme")


def test_accounts_devices_sessions() -> None:
    assert ct.account("acme", " 42 ") == Identifier("account", "42", "acme")
    assert ct.account("acme", "42") != ct.account("other", "42")
    with pytest.raises(InvalidIdentifier, match="needs a scope"):
        ct.normalize_identifier("account", "42")
    assert ct.device(" d-1 ").value == "d-1"
    assert ct.session("s-1").kind == "session"
    with pytest.raises(InvalidIdentifier, match="control character"):
        ct.device("a\x00b")


def test_custom_kind_registration_and_caching() -> None:
    calls: list[str] = []

    def loyalty(raw: str, scope: str) -> str:
        calls.append(raw)
        digits = raw.replace(" ", "")
        if not digits.isdigit():
            raise ValueError("a loyalty number is digits")
        return digits

    registry = IdentifierRegistry()
    registry.register("loyalty", loyalty)
    assert "loyalty" in registry.kinds
    first = registry.normalize("loyalty", "12 34")
    second = registry.normalize("loyalty", "12 34")
    assert first == second == Identifier("loyalty", "1234")
    assert calls == ["12 34"]  # the hot value was parsed once
    with pytest.raises(InvalidIdentifier) as info:
        registry.normalize("loyalty", "abc")
    assert info.value.kind == "loyalty" and "digits" in info.value.reason
    # another registry is not affected
    with pytest.raises(UnknownIdentifierKind):
        ct.normalize_identifier("loyalty", "1234")
    with pytest.raises(InvalidIdentifier):
        registry.register("Bad Kind", loyalty)


@pytest.mark.parametrize(
    "bad",
    [Identifier("phone", "not-a-number"), Identifier("email", "nobody-at-example.com")],
)
def test_invalid_identifier_at_ingest_stores_nothing(
    store_factory: StoreFactory, bad: Identifier
) -> None:
    store = store_factory()
    convs = ct.Conversations(store, clock=ct.ManualClock(), ids=ct.SequentialIds())
    inbound = Inbound(
        channel="sms",
        provider_message_id="m1",
        sender=(SenderIdentifier(ct.phone("+14155552671"), Trust.ASSERTED), SenderIdentifier(bad)),
        sent_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    with pytest.raises(InvalidIdentifier) as info:
        convs.ingest(inbound)
    assert info.value.kind == bad.kind
    assert info.value.reason
    assert isinstance(info.value, ValidationError)
    for ns in (NS_IDENT, NS_CUSTOMER, NS_MSG):
        assert store.scan(ns) == []
    assert all_heads(store) == []
    assert store.version("cu_0001") == 0
    assert store.read("th_0001") == []


def test_a_registry_remembers_results_and_their_normal_forms() -> None:
    calls: list[str] = []

    def member(raw: str, scope: str) -> str:
        calls.append(raw)
        return raw.strip().lower()

    reg = ct.IdentifierRegistry(cache_size=4)
    reg.register("member", member)
    first = reg.normalize("member", "  ABC ")
    assert first == ct.Identifier("member", "abc") and calls == ["  ABC "]
    # the normal form, and the raw value again, cost no normalizer call
    assert reg.renormalize(first) == first
    assert reg.key_of(first) == first.key == "member::abc"
    assert reg.key_of(ct.Identifier("member", "  ABC ")) == first.key
    assert reg.normalize("member", "  ABC ") == first
    assert calls == ["  ABC "]
    # full (4 entries: 2 per result): it starts afresh, and still answers right
    reg.normalize("member", "XYZ")
    assert reg.renormalize(first) == first
    assert calls == ["  ABC ", "XYZ"]
    reg.normalize("member", "Q")
    assert reg.renormalize(first) == first
    assert calls == ["  ABC ", "XYZ", "Q", "abc"]
    # re-registering a kind forgets what the old normalizer said
    reg.register("member", lambda raw, scope: raw.upper())
    assert reg.renormalize(first) == ct.Identifier("member", "ABC")


def test_a_registry_rejects_bad_cache_sizes_and_unhashable_values() -> None:
    with pytest.raises(ValidationError, match="cache_size"):
        ct.IdentifierRegistry(cache_size=1)
    with pytest.raises(InvalidIdentifier, match="must be a string"):
        ct.IdentifierRegistry().normalize("email", ["a@example.com"])  # type: ignore[arg-type]
