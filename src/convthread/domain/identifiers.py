"""Identifier normalization: one registry of normalizers, one per identifier kind.

Rules (these are the documented ones; see docs/identity.md):

* **phone**: parsed by libphonenumber (``phonenumbers``) with a default region for
  national-format input, rejected unless possible *and* valid for its region, written
  as E.164 (``+447700900123``).
* **email**: the address must be a single RFC 5322 ``addr-spec`` (checked by the standard
  :mod:`email` package's header parser). The domain is lowercased and IDNA-encoded
  (``bücher.example`` becomes ``xn--bcher-kva.example``). The local part is lowercased
  (all major providers treat it case-insensitively) but otherwise kept: dots and
  ``+tags`` are **not** stripped, because for most domains they name different mailboxes.
* **handle**: scoped by platform (``scope`` is required): a Twitter handle is not a
  Messenger id. A leading ``@`` is dropped. Platforms whose handles are
  case-insensitive (twitter, x, instagram, telegram, tiktok, github) are lowercased;
  numeric platform ids (messenger PSIDs, WhatsApp wa_ids) must be digits.
* **account**: scoped by tenant (``scope`` is required); the value is kept as given,
  trimmed.
* **device**, **session**: opaque, trimmed, kept as given.

Custom kinds: ``registry.register("loyalty", my_normalizer)``. A normalizer takes the raw
value and the scope and returns the normalized value, or raises
:class:`~convthread.errors.InvalidIdentifier` (a ``ValueError`` is wrapped into one).

Normalizing a hot value does not cost a full parse every time: results are cached per
(kind, scope, value, region) in a bounded LRU cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.errors import HeaderParseError
from email.headerregistry import Address
from functools import lru_cache
from typing import Final

import phonenumbers

from convthread.domain.model import MAX_PROVIDER_ID, Identifier, IdentifierKind
from convthread.errors import ConvthreadError, InvalidIdentifier, UnknownIdentifierKind

__all__ = [
    "IdentifierRegistry",
    "account",
    "device",
    "email",
    "handle",
    "phone",
    "session",
    "Normalizer",
    "default_registry",
    "normalize_email",
    "normalize_identifier",
    "normalize_phone",
]

#: ``(raw_value, scope) -> normalized_value``; raise InvalidIdentifier for bad input.
Normalizer = Callable[[str, str], str]

_CASE_INSENSITIVE_PLATFORMS: Final = frozenset(
    {"twitter", "x", "instagram", "telegram", "tiktok", "github", "email"}
)
_NUMERIC_PLATFORMS: Final = frozenset({"messenger", "whatsapp"})
_SCOPE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
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
    text = raw.strip()
    if not text:
        raise InvalidIdentifier("phone", raw, "empty")
    # WhatsApp and some carriers send international numbers without the leading '+'.
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        if region is None and text[0].isdigit():
            try:
                number = phonenumbers.parse("+" + text, None)
            except phonenumbers.NumberParseException:
                raise InvalidIdentifier("phone", raw, _parse_reason(exc)) from None
        else:
            raise InvalidIdentifier("phone", raw, _parse_reason(exc)) from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (
        phonenumbers.ValidationResult.IS_POSSIBLE,
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ):
        raise InvalidIdentifier("phone", raw, _PHONE_REASONS.get(possible, "not possible"))
    if possible == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise InvalidIdentifier("phone", raw, "only dialable locally; give the area code")
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier(
            "phone", raw, "not a valid number for any region (unassigned range)"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
    text = raw.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not text:
        raise InvalidIdentifier("email", raw, "empty")
    if any(ch in text for ch in "\r\n\t "):
        raise InvalidIdentifier("email", raw, "contains whitespace")
    if text.count("@") < 1:
        raise InvalidIdentifier("email", raw, "no '@' between local part and domain")
    try:
        address = Address(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise InvalidIdentifier("email", raw, f"not an RFC 5322 address ({exc})") from None
    local, domain = address.username, address.domain
    if not local:
        raise InvalidIdentifier("email", raw, "empty local part")
    if not domain or "." not in domain.strip("."):
        raise InvalidIdentifier("email", raw, "the domain needs at least one dot")
    if domain.startswith("[") or domain.endswith("."):
        raise InvalidIdentifier("email", raw, "literal or trailing-dot domains are not accepted")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidIdentifier("email", raw, f"domain is not valid IDNA ({exc})") from None
    if len(local.encode("utf-8")) > 64:
        raise InvalidIdentifier("email", raw, "local part longer than 64 octets")
    if len(ascii_domain) > 253:
        raise InvalidIdentifier("email", raw, "domain longer than 253 characters")
    return f"{local.lower()}@{ascii_domain}"


def _email(raw: str, scope: str) -> str:
    return normalize_email(raw)


def _handle(raw: str, scope: str) -> str:
    if not scope:
        raise InvalidIdentifier("handle", raw, "a handle needs its platform as scope")
    text = raw.strip()
    if text.startswith("@"):
        text = text[1:]
    if not text:
        raise InvalidIdentifier("handle", raw, "empty")
    if any(ch.isspace() for ch in text):
        raise InvalidIdentifier("handle", raw, "contains whitespace")
    if scope in _NUMERIC_PLATFORMS:
        if scope == "whatsapp":
            text = text.lstrip("+")
        if not text.isdigit():
            raise InvalidIdentifier("handle", raw, f"a {scope} id is digits only")
        return text
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
    """Normalizers by kind. ``normalize(kind, value, scope=...)`` gives an Identifier."""

    def __init__(self, *, default_region: str | None = None) -> None:
        self.default_region = default_region
        self._normalizers: dict[str, tuple[Normalizer, bool]] = {}
        self.register(IdentifierKind.PHONE, self._phone)
        self.register(IdentifierKind.EMAIL, _email)
        self.register(IdentifierKind.HANDLE, _handle, scoped=True)
        self.register(IdentifierKind.ACCOUNT, _account, scoped=True)
        self.register(IdentifierKind.DEVICE, _opaque("device"))
        self.register(IdentifierKind.SESSION, _opaque("session"))

    def _phone(self, raw: str, scope: str) -> str:
        return _normalize_phone_cached(raw, self.default_region)

    def register(self, kind: str, normalizer: Normalizer, *, scoped: bool = False) -> None:
        """Register (or replace) the normalizer for ``kind``."""
        if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", kind):
            raise InvalidIdentifier("kind", kind, "kinds are lowercase names (1-32)")
        self._normalizers[kind] = (normalizer, scoped)
        self._cached.cache_clear()

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._normalizers)

    def normalize(self, kind: str, value: str, *, scope: str = "") -> Identifier:
        """Normalize ``value`` as an identifier of ``kind`` (within ``scope``)."""
        return self._cached(kind, value, scope)

    def renormalize(self, identifier: Identifier) -> Identifier:
        """Return ``identifier`` normalized by this registry (a no-op when it already is)."""
        return self._cached(identifier.kind, identifier.value, identifier.scope)

    @lru_cache(maxsize=131072)  # noqa: B019 - the registry lives as long as the process
    def _cached(self, kind: str, value: str, scope: str) -> Identifier:
        try:
            normalizer, scoped = self._normalizers[kind]
        except KeyError:
            raise UnknownIdentifierKind(kind) from None
        if not isinstance(value, str):
            raise InvalidIdentifier(kind, repr(value), "the value must be a string")
        if len(value) > MAX_PROVIDER_ID:
            raise InvalidIdentifier(kind, value[:40] + "...", "longer than 512 characters")
        if scope and not _SCOPE_RE.match(scope):
            raise InvalidIdentifier(kind, value, f"scope {scope!r} is not a lowercase name")
        if scoped and not scope:
            raise InvalidIdentifier(kind, value, f"a {kind} identifier needs a scope")
        try:
            normalized = normalizer(value, scope)
        except ConvthreadError:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidIdentifier(kind, value, str(exc)) from None
        return Identifier(kind, normalized, scope)


#: The registry used when none is configured (no default phone region).
default_registry: Final = IdentifierRegistry()


def normalize_identifier(kind: str, value: str, *, scope: str = "") -> Identifier:
    """Normalize with the default registry."""
    return default_registry.normalize(kind, value, scope=scope)


def phone(value: str, *, region: str | None = None) -> Identifier:
    """A phone identifier in E.164 (``region`` reads national-format numbers)."""
    if region is None:
        return default_registry.normalize(IdentifierKind.PHONE, value)
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
