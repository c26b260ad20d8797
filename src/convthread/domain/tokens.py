"""Continuation tokens: carry a thread across a move identity cannot bridge.

A token has two forms, both bound to one thread and one stored record:

* a **short code** a person can type or read out: 9 characters of Crockford base32
  (``0-9`` and ``A-Z`` without ``I L O U``), shown as ``XXX-XXX-XXX``. Eight characters
  are random (40 bits); the ninth is a check character, so a mistyped code is told apart
  from a guess. Reading is forgiving: case, spaces and dashes are ignored, ``O`` reads as
  ``0`` and ``I``/``L`` as ``1``. Codes are stored only as keyed HMACs.
* a **signed value** for links: ``ct1.<key id>.<payload>.<signature>``, an HMAC-SHA256
  over the payload (token id, thread id, expiry) with a key from a :class:`KeyRing`.

Key rotation: a :class:`KeyRing` holds several keys by id and signs with the current one.
A token made with an older key keeps working while that key stays in the ring; removing a
key revokes every token made with it.

Pure: the random bytes and the time are passed in (the service draws them with
:mod:`secrets`). Comparisons of secrets use :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Final

import msgspec

from convthread.errors import TokenError, ValidationError

__all__ = [
    "ALPHABET",
    "CODE_RANDOM_CHARS",
    "KeyRing",
    "TokenClaims",
    "code_from_bytes",
    "code_lookup_key",
    "format_code",
    "normalize_code",
    "sign_token",
    "verify_token",
]

#: Crockford base32: digits and capital letters without I, L, O and U.
ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Random characters in a code (40 bits); a check character follows.
CODE_RANDOM_CHARS: Final = 8
_PREFIX: Final = "ct1"
_READ_AS: Final = {"O": "0", "I": "1", "L": "1"}
_KID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyRing:
    """Secret keys by id; ``current`` signs, every key in the ring verifies.

    ``KeyRing({"2026-01": key1, "2026-04": key2}, current="2026-04")``. Keys are bytes of
    at least 32 bytes (draw them with ``secrets.token_bytes(32)``).
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if not keys:
            raise ValidationError("a key ring needs at least one key")
        for kid, key in keys.items():
            if not _KID_RE.match(kid):
                raise ValidationError(f"key id {kid!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if not isinstance(key, bytes) or len(key) < 32:
                raise ValidationError(f"key {kid!r} must be at least 32 bytes")
        if current not in keys:
            raise ValidationError(f"the current key {current!r} is not in the ring")
        self._keys = dict(keys)
        self.current = current

    def __repr__(self) -> str:
        return f"KeyRing(ids={sorted(self._keys)}, current={self.current!r})"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def mac(self, kid: str, message: bytes) -> bytes:
        key = self._keys.get(kid)
        if key is None:
            raise TokenError(f"unknown key id {kid!r} (rotated out?)")
        return hmac.new(key, message, hashlib.sha256).digest()


class TokenClaims(msgspec.Struct, frozen=True, array_like=True):
    """What a signed token says: which token, which thread, until when (epoch seconds)."""

    token_id: str
    thread_id: str
    expires: int

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, tz=timezone.utc)


_claims_decoder: Final = msgspec.msgpack.Decoder(TokenClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise TokenError("the token is malformed") from None


def sign_token(ring: KeyRing, claims: TokenClaims) -> str:
    """The signed form of ``claims``, under the ring's current key."""
    payload = _b64(msgspec.msgpack.encode(claims))
    signed = f"{_PREFIX}.{ring.current}.{payload}".encode()
    return f"{_PREFIX}.{ring.current}.{payload}.{_b64(ring.mac(ring.current, signed))}"


def verify_token(ring: KeyRing, token: str, now: datetime) -> TokenClaims:
    """The claims of ``token`` if its signature verifies and it has not expired, else
    TokenError (forged, tampered, unknown key, malformed, expired)."""
    if not isinstance(token, str) or len(token) > 512:
        raise TokenError("the token is malformed")
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != _PREFIX:
        raise TokenError("the token is malformed")
    _prefix, kid, payload, signature = parts
    expected = ring.mac(kid, f"{_PREFIX}.{kid}.{payload}".encode())
    if not hmac.compare_digest(expected, _unb64(signature)):
        raise TokenError("the token's signature does not verify")
    try:
        claims = _claims_decoder.decode(_unb64(payload))
    except msgspec.DecodeError:
        raise TokenError("the token is malformed") from None
    if now.timestamp() >= claims.expires:
        raise TokenError("the token has expired")
    return claims


def _check_char(body: str) -> str:
    total = sum((2 * i + 1) * ALPHABET.index(ch) for i, ch in enumerate(body))
    return ALPHABET[total % 32]


def code_from_bytes(entropy: bytes) -> str:
    """A code (normalized form, no dashes) from at least 5 random bytes."""
    if len(entropy) < 5:
        raise ValidationError("a code needs at least 5 random bytes")
    value = int.from_bytes(entropy[:5], "big")
    chars = []
    for _ in range(CODE_RANDOM_CHARS):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    body = "".join(chars)
    return body + _check_char(body)


def format_code(code: str) -> str:
    """``"ABC-DEF-GHJ"``: the normalized code in groups of three, for people."""
    return "-".join(code[i : i + 3] for i in range(0, len(code), 3))


def normalize_code(text: str) -> str:
    """The normalized code typed or read as ``text``; TokenError if it cannot be one
    (wrong length, a character outside the alphabet, a wrong check character)."""
    if not isinstance(text, str) or len(text) > 64:
        raise TokenError("not a continuation code")
    chars = []
    for ch in text.upper():
        if ch in " -_.":
            continue
        ch = _READ_AS.get(ch, ch)
        if ch not in ALPHABET:
            raise TokenError("not a continuation code (unexpected character)")
        chars.append(ch)
    code = "".join(chars)
    if len(code) != CODE_RANDOM_CHARS + 1:
        raise TokenError(f"a continuation code has {CODE_RANDOM_CHARS + 1} characters")
    if not hmac.compare_digest(_check_char(code[:-1]), code[-1]):
        raise TokenError("the code is mistyped (its check character does not match)")
    return code


def code_lookup_key(ring: KeyRing, kid: str, code: str) -> str:
    """The index key a normalized code is stored under with key ``kid`` (a keyed HMAC, so
    the stored keys reveal nothing about the codes)."""
    return kid + ":" + ring.mac(kid, b"code:" + code.encode()).hex()[:40]
