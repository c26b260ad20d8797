"""Identifier normalization: one registry of normalizers, one per identifier kind.

Rules (these are the documented ones; see docs/identity.md):

* **phone**: parsed by libphonenumber (``phonenumbers``) with the registry's default
  region for national-format input, rejected unless *valid* (an assigned range) for its
  region, written as E.164 (``+447700900123``); an extension is dropped. Digits without a
  ``+`` that are not a valid national number of the default region are read as
  international (WhatsApp's ``wa_id`` form). The error names the reason (too short,
  invalid country code, only dialable locally, unassigned range...).
* **email**: the address must be a single RFC 5322 ``addr-spec`` (checked by the standard
  :mod:`email` package's header parser; comments are dropped, whitespace, address
  literals and ``mailto:`` parameters are refused). The domain is lowercased and
  IDNA-encoded (``bücher.example`` becomes ``xn--bcher-kva.example``) and every label must
  be a host-name label. The local part is lowercased (all major providers treat it
  case-insensitively) but otherwise kept: dots and ``+tags`` are **not** stripped,
  because for most domains they name different mailboxes. A local part that is not a
  dot-atom stays quoted (``"a@b"@example.com``); a non-ASCII (SMTPUTF8) local part is
  kept in Unicode NFC form, lowercased.
* **handle**: scoped by platform (``scope`` is required, lowercased; ``x`` is an alias of
  ``twitter``): a Twitter handle is not a Messenger id. A leading ``@`` is dropped.
  Platforms whose handles are case-insensitive (twitter, instagram, telegram, tiktok,
  github) are lowercased, and their syntax is checked; numeric platform ids (messenger
  PSIDs, WhatsApp wa_ids) must be digits. Other platforms keep the value as given.
* **account**: scoped by tenant (``scope`` is required); the value is kept as given,
  trimmed.
* **device**, **session**: opaque, trimmed, kept as given.

Custom kinds: ``registry.register("loyalty", my_normalizer)``. A normalizer takes the raw
value and the scope and returns the normalized value, or raises
:class:`~convthread.errors.InvalidIdentifier` (a ``ValueError`` is wrapped into one).

Normalizing a hot value does not cost a full parse every time: results are cached per
registry and (kind, scope, value) in a bounded LRU cache, and phone and e-mail parses in
module-level LRU caches. Invalid values are not cached (they raise).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from email.errors import HeaderParseError
from email.headerregistry import Address
from functools import lru_cache
from typing import Final

import phonenumbers

from convthread.domain.model import MAX_PROVIDER_ID, Identifier, IdentifierKind
from convthread.errors import (
    ConvthreadError,
    InvalidIdentifier,
    UnknownIdentifierKind,
    ValidationError,
)

__all__ = [
    "IdentifierRegistry",
    "Normalizer",
    "account",
    "default_registry",
    "device",
    "email",
    "handle",
    "normalize_email",
    "normalize_identifier",
    "normalize_phone",
    "phone",
    "platform_scope",
    "session",
]

#: ``(raw_value, scope) -> normalized_value``; raise InvalidIdentifier for bad input.
Normalizer = Callable[[str, str], str]

_CASE_INSENSITIVE_PLATFORMS: Final = frozenset(
    {"twitter", "x", "instagram", "telegram", "tiktok", "github", "email"}
)
_NUMERIC_PLATFORMS: Final = frozenset({"messenger", "whatsapp"})
_SCOPE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_LABEL_RE: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PHONE_REASONS: Final = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "the country code is not valid",
    phonenumbers.ValidationResult.TOO_SHORT: "too short to be a phone number",
    phonenumbers.ValidationResult.TOO_LONG: "too long to be a phone number",
    phonenumbers.ValidationResult.INVALID_LENGTH: "not a possible length for its region",
}


def normalize_phone(raw: str, region: str | None = None) -> str:
    """Return ``raw`` as an E.164 number, or raise InvalidIdentifier with the reason."""
    return _normalize_phone_cached(raw, region)


@lru_cache(maxsize=65536)
def _normalize_phone_cached(raw: str, region: str | None) -> str:
    if not isinstance(raw, str):
        raise InvalidIdentifier("phone", repr(raw), "the value must be a string")
    text = raw.strip()
    if not text:
        raise InvalidIdentifier("phone", raw, "empty")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        fallback = _international_without_plus(text)
        if fallback is None or not phonenumbers.is_valid_number(fallback):
            reason = _parse_reason(exc)
            if fallback is not None:
                reason += f" (read as international: {_invalid_reason(fallback)})"
            raise InvalidIdentifier("phone", raw, reason) from None
        number = fallback
    if not phonenumbers.is_valid_number(number):
        # WhatsApp and some carriers send international numbers without the leading '+';
        # with a default region they first parse as (invalid) national numbers.
        retry = _international_without_plus(text)
        if retry is not None and phonenumbers.is_valid_number(retry):
            number = retry
        else:
            raise InvalidIdentifier("phone", raw, _invalid_reason(number))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _international_without_plus(text: str) -> phonenumbers.PhoneNumber | None:
    digits = text.replace(" ", "").replace("-", "")
    if not digits.isdigit() or digits.startswith("0"):
        return None
    try:
        return phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None


def _invalid_reason(number: phonenumbers.PhoneNumber) -> str:
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        return "only dialable locally; give the area code"
    if possible in _PHONE_REASONS:
        return _PHONE_REASONS[possible]
    return "not a valid number for any region (unassigned range)"


def _parse_reason(exc: phonenumbers.NumberParseException) -> str:
    reasons = {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
            "no country code and no default region to read it in"
        ),
        phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the IDD",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short to be a phone number",
        phonenumbers.NumberParseException.TOO_LONG: "too long to be a phone number",
    }
    return reasons.get(exc.error_type, str(exc))


@lru_cache(maxsize=65536)
def normalize_email(raw: str) -> str:
    """Return the normalized address (see the module rules) or raise InvalidIdentifier."""
    if not isinstance(raw, str):
        raise InvalidIdentifier("email", repr(raw), "the value must be a string")
    text = raw.strip()
    if text[:7].lower() == "mailto:":
        text = text[7:]
    if not text:
        raise InvalidIdentifier("email", raw, "empty")
    if any(ch.isspace() for ch in text):
        raise InvalidIdentifier("email", raw, "contains whitespace")
    if "@" not in text:
        raise InvalidIdentifier("email", raw, "no '@' between local part and domain")
    # The stdlib parser reads ASCII addr-specs only; an internationalized (SMTPUTF8,
    # RFC 6531) local part is checked in its ASCII shape and kept as written (NFC).
    local_raw, _, domain_raw = text.rpartition("@")
    utf8_local = not local_raw.isascii()
    if utf8_local:
        if '"' in local_raw or "\\" in local_raw:
            raise InvalidIdentifier("email", raw, "quoted non-ASCII local parts are not accepted")
        shape = "".join(ch if ch.isascii() else "u" for ch in local_raw)
        probe = f"{shape}@{domain_raw}"
    else:
        probe = text
    try:
        address = Address(addr_spec=probe)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise InvalidIdentifier("email", raw, f"not an RFC 5322 address ({exc})") from None
    local = unicodedata.normalize("NFC", local_raw) if utf8_local else address.username
    domain = address.domain
    if not local:
        raise InvalidIdentifier("email", raw, "empty local part")
    if domain.startswith("["):
        raise InvalidIdentifier("email", raw, "address literals ([1.2.3.4]) are not accepted")
    if not domain or domain.endswith(".") or "." not in domain:
        raise InvalidIdentifier("email", raw, "the domain needs at least one dot")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidIdentifier("email", raw, f"domain is not valid IDNA ({exc})") from None
    labels = ascii_domain.split(".")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise InvalidIdentifier(
                "email", raw, f"domain label {label!r} is not a valid host name label"
            )
    if labels[-1].isdigit():
        raise InvalidIdentifier("email", raw, "the top-level domain cannot be numeric")
    if len(local.encode("utf-8")) > 64:
        raise InvalidIdentifier("email", raw, "local part longer than 64 octets")
    if len(ascii_domain) > 253:
        raise InvalidIdentifier("email", raw, "domain longer than 253 characters")
    if utf8_local:
        return f"{local.lower()}@{ascii_domain}"
    # addr_spec re-quotes a local part that is not a dot-atom ("a@b"@example.com).
    return Address(username=local.lower(), domain=ascii_domain).addr_spec


def _email(raw: str, scope: str) -> str:
    return normalize_email(raw)


#: Platform aliases: the same namespace under another name.
_PLATFORM_ALIASES: Final = {"x": "twitter"}
#: Per-platform handle syntax (after dropping a leading '@'), where the platform has one.
_HANDLE_SYNTAX: Final = {
    "twitter": (re.compile(r"^[A-Za-z0-9_]{1,15}$"), "1-15 letters, digits or '_'"),
    "instagram": (re.compile(r"^[A-Za-z0-9_.]{1,30}$"), "1-30 letters, digits, '_' or '.'"),
    "telegram": (re.compile(r"^[A-Za-z0-9_]{5,32}$"), "5-32 letters, digits or '_'"),
    "tiktok": (re.compile(r"^[A-Za-z0-9_.]{2,24}$"), "2-24 letters, digits, '_' or '.'"),
    "github": (
        re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$"),
        "1-39 letters, digits or single inner '-'",
    ),
}


def platform_scope(scope: str) -> str:
    """The canonical platform name for a handle scope (lowercased, aliases resolved)."""
    name = scope.strip().lower()
    return _PLATFORM_ALIASES.get(name, name)


def _handle(raw: str, scope: str) -> str:
    if not scope:
        raise InvalidIdentifier("handle", raw, "a handle needs its platform as scope")
    text = raw.strip()
    if text.startswith("@"):
        text = text[1:]
    if not text:
        raise InvalidIdentifier("handle", raw, "empty")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise InvalidIdentifier("handle", raw, "contains whitespace or a control character")
    if scope in _NUMERIC_PLATFORMS:
        if scope == "whatsapp":
            text = text.lstrip("+")
        if not text.isdigit() or not text.isascii():
            raise InvalidIdentifier("handle", raw, f"a {scope} id is digits only")
        return text
    syntax = _HANDLE_SYNTAX.get(scope)
    if syntax is not None and not syntax[0].match(text):
        raise InvalidIdentifier("handle", raw, f"a {scope} handle is {syntax[1]}")
    if scope in _CASE_INSENSITIVE_PLATFORMS:
        return text.lower()
    return text


def _opaque(kind: str) -> Normalizer:
    def normalize(raw: str, scope: str) -> str:
        text = raw.strip()
        if not text:
            raise InvalidIdentifier(kind, raw, "empty")
        if any(ch in text for ch in "\r\n\x00"):
            raise InvalidIdentifier(kind, raw, "contains a control character")
        return text

    return normalize


def _account(raw: str, scope: str) -> str:
    if not scope:
        raise InvalidIdentifier("account", raw, "an account id needs its tenant as scope")
    return _opaque("account")(raw, scope)


class IdentifierRegistry:
    """Normalizers by kind. ``normalize(kind, value, scope=...)`` gives an Identifier.

    ``default_region`` (an ISO 3166 region such as ``"GB"``) reads phone numbers written
    in national format; it is fixed for the registry's lifetime (results are cached).
    ``cache_size`` bounds the per-registry LRU cache of normalized values.
    """

    def __init__(self, *, default_region: str | None = None, cache_size: int = 131072) -> None:
        if default_region is not None:
            region = default_region.strip().upper()
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise InvalidIdentifier("phone", default_region, "unknown default region")
            default_region = region
        self._region = default_region
        self._normalizers: dict[str, tuple[Normalizer, bool]] = {}
        self._memo = _Memo(cache_size)
        self.register(IdentifierKind.PHONE, self._phone)
        self.register(IdentifierKind.EMAIL, _email)
        self.register(IdentifierKind.HANDLE, _handle, scoped=True)
        self.register(IdentifierKind.ACCOUNT, _account, scoped=True)
        self.register(IdentifierKind.DEVICE, _opaque("device"))
        self.register(IdentifierKind.SESSION, _opaque("session"))

    @property
    def default_region(self) -> str | None:
        return self._region

    def _phone(self, raw: str, scope: str) -> str:
        return _normalize_phone_cached(raw, self._region)

    def register(self, kind: str, normalizer: Normalizer, *, scoped: bool = False) -> None:
        """Register (or replace) the normalizer for ``kind``."""
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise InvalidIdentifier("kind", str(kind), "kinds are lowercase names (1-32)")
        if not callable(normalizer):
            raise InvalidIdentifier("kind", kind, "the normalizer must be callable")
        self._normalizers[kind] = (normalizer, scoped)
        self._memo.clear()

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._normalizers)

    def normalize(self, kind: str, value: str, *, scope: str = "") -> Identifier:
        """Normalize ``value`` as an identifier of ``kind`` (within ``scope``).

        Results are remembered (``cache_size`` of them), and so is each result as its own
        normal form: normalizing an identifier this registry produced costs a lookup.
        Normalizers must therefore be idempotent (normalizing a normal form returns it),
        which every built-in one is.
        """
        return self._entry(kind, value, scope)[0]

    def renormalize(self, identifier: Identifier) -> Identifier:
        """Return ``identifier`` normalized by this registry (a no-op when it already is)."""
        return self._entry(identifier.kind, identifier.value, identifier.scope)[0]

    def key_of(self, identifier: Identifier) -> str:
        """The key ``identifier`` is indexed by once normalized by this registry
        (``renormalize(identifier).key``, remembered with it)."""
        return self._entry(identifier.kind, identifier.value, identifier.scope)[1]

    def _entry(self, kind: str, value: str, scope: str) -> tuple[Identifier, str]:
        try:
            hit = self._memo.get((kind, value, scope))
        except TypeError:  # unhashable input: _normalize says what is wrong with it
            hit = None
        if hit is None:
            hit = self._memo.add((kind, value, scope), self._normalize(kind, value, scope))
        return hit

    def _normalize(self, kind: str, value: str, scope: str) -> Identifier:
        try:
            normalizer, scoped = self._normalizers[kind]
        except (KeyError, TypeError):
            raise UnknownIdentifierKind(str(kind)) from None
        if not isinstance(value, str):
            raise InvalidIdentifier(kind, repr(value), "the value must be a string")
        if len(value) > MAX_PROVIDER_ID:
            raise InvalidIdentifier(kind, value[:40] + "...", "longer than 512 characters")
        if not isinstance(scope, str):
            raise InvalidIdentifier(kind, value, "the scope must be a string")
        if kind == IdentifierKind.HANDLE:
            scope = platform_scope(scope)
        if scope and not _SCOPE_RE.match(scope):
            raise InvalidIdentifier(kind, value, f"scope {scope!r} is not a lowercase name")
        if scoped and not scope:
            raise InvalidIdentifier(kind, value, f"a {kind} identifier needs a scope")
        try:
            normalized = normalizer(value, scope)
        except ConvthreadError:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidIdentifier(kind, value, str(exc) or type(exc).__name__) from None
        if not isinstance(normalized, str) or not normalized:
            raise InvalidIdentifier(kind, value, "the normalizer returned no value")
        if len(normalized) > MAX_PROVIDER_ID:
            raise InvalidIdentifier(kind, value[:40], "normalized value longer than 512")
        return Identifier(kind, normalized, scope)


class _Memo:
    """What a registry normalized: (kind, value, scope) -> (Identifier, its key), at most
    ``size`` entries; when full it starts afresh (a clear is one atomic step, so threads
    sharing the registry need no lock). Each result is also remembered as its own normal
    form."""

    __slots__ = ("_map", "_size")

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 2:
            raise ValidationError(f"cache_size must be an int of at least 2, got {size!r}")
        self._size = size
        self._map: dict[tuple[str, str, str], tuple[Identifier, str]] = {}

    def get(self, key: tuple[str, str, str]) -> tuple[Identifier, str] | None:
        return self._map.get(key)

    def add(self, key: tuple[str, str, str], result: Identifier) -> tuple[Identifier, str]:
        memo = self._map
        if len(memo) + 2 > self._size:
            memo.clear()
        entry = (result, result.key)
        memo[key] = entry
        memo[(result.kind, result.value, result.scope)] = entry
        return entry

    def clear(self) -> None:
        self._map.clear()


#: The registry used when none is configured (no default phone region).
default_registry: Final = IdentifierRegistry()


def normalize_identifier(kind: str, value: str, *, scope: str = "") -> Identifier:
    """Normalize with the default registry."""
    return default_registry.normalize(kind, value, scope=scope)


def phone(value: str, *, region: str | None = None) -> Identifier:
    """A phone identifier in E.164 (``region`` reads national-format numbers)."""
    if region is None:
        return default_registry.normalize(IdentifierKind.PHONE, value)
    region = region.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidIdentifier("phone", value, f"unknown region {region!r}")
    return Identifier(IdentifierKind.PHONE, normalize_phone(value, region))


def email(value: str) -> Identifier:
    """An e-mail identifier (domain IDNA-encoded and lowercased, local part lowercased)."""
    return default_registry.normalize(IdentifierKind.EMAIL, value)


def handle(platform: str, value: str) -> Identifier:
    """A platform handle, scoped by platform (``handle("twitter", "@Acme")``)."""
    return default_registry.normalize(IdentifierKind.HANDLE, value, scope=platform)


def account(tenant: str, value: str) -> Identifier:
    """An account id, scoped by tenant."""
    return default_registry.normalize(IdentifierKind.ACCOUNT, value, scope=tenant)


def device(value: str) -> Identifier:
    """A device id."""
    return default_registry.normalize(IdentifierKind.DEVICE, value)


def session(value: str) -> Identifier:
    """A (web chat, app) session id."""
    return default_registry.normalize(IdentifierKind.SESSION, value)
