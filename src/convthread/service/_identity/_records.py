"""The identity records kept in the index beside the customer streams, and the small reads
every identity operation shares.

``NS_MERGE`` holds a :class:`MergeRef` per merge (the ledger unmerge reads), ``NS_SUGGEST``
a :class:`SuggestionRef` per merge suggestion (with ``NS_SUGGEST_PAIR`` keyed by
:func:`_pair_key` so a pair is suggested at most once), ``NS_VERIFY`` a
:class:`VerificationRecord` per started verification (the code only as an HMAC). Records
are msgpack-encoded Structs read back with the decoders here; changing a field is a
storage-format change. :func:`_taken_detail` writes, and ``_TAKEN_FROM`` reads back, the
evidence detail of a link that took an identifier over from a claimant: explain follows a
takeover only through that text and the claimant's matching unlink.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from convthread import codec
from convthread.domain.events import Decision
from convthread.domain.model import Identifier, Trust
from convthread.domain.thread import CustomerState
from convthread.errors import ErasedError, InvalidTransition
from convthread.ports import Item
from convthread.service import _core as core
from convthread.service._core import NS_IDENT, Op

_EMPTY = b""


class MergeRef(msgspec.Struct, frozen=True, array_like=True):
    """NS_MERGE value: who absorbed whom, and whether it was undone."""

    survivor: str
    absorbed: str
    undone: bool = False


class SuggestionRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True):
    """NS_SUGGEST value: a recorded merge suggestion and its status."""

    customer_id: str
    other: str
    identifier: Identifier
    decision: Decision
    at: datetime
    status: str = "pending"  # pending, accepted, rejected
    by: str = ""


class VerificationRecord(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, array_like=True
):
    """NS_VERIFY value: a started verification. The code is kept only as an HMAC."""

    identifier: Identifier
    customer_id: str | None
    salt: bytes
    digest: bytes
    expires_at: datetime
    attempts_left: int
    session_trust: Trust = Trust.CLAIMED
    channel: str = ""
    by: str = ""


_mergeref = codec.decoder(MergeRef)


_suggestion = codec.decoder(SuggestionRef)


_verification = codec.decoder(VerificationRecord)


def _pair_key(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return f"{x}|{y}"


def _live_customer(state: CustomerState) -> None:
    if state.erased:
        raise ErasedError(f"customer {state.id!r} was erased")
    if state.merged_into is not None:
        raise InvalidTransition(
            f"customer {state.id!r} was merged into {state.merged_into!r}; use that customer"
        )


def _load_live(customer_id: str) -> Op[tuple[CustomerState, int]]:
    state, version = yield from core.load_customer(customer_id)
    _live_customer(state)
    return state, version


def _owner(identifier: Identifier) -> Op[tuple[str | None, Item | None]]:
    item = yield from core.get(NS_IDENT, identifier.key)
    if item is None:
        return None, None
    return core.decode_identref(item.value).customer_id, item


_TAKEN_FROM = re.compile(r"taken over from (\S+), which only claimed it$")


def _taken_detail(detail: str, claimant: str) -> str:
    """The evidence detail of a link that took an identifier over (read by explain)."""
    return f"{detail + '; ' if detail else ''}taken over from {claimant}, which only claimed it"
