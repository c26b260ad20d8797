"""The one error hierarchy of convthread.

Every failure a caller can cause, in any store or channel adapter, is an instance
of :class:`ConvthreadError`. Catch that to catch everything the library raises on
purpose; catch a subclass to handle one kind of failure.

::

    ConvthreadError
    ├── ValidationError (also ValueError)    bad input: nothing was stored
    │   ├── InvalidIdentifier                an identifier that cannot be normalized
    │   ├── UnknownIdentifierKind            a kind no normalizer is registered for
    │   ├── ContentTooLarge                  text or metadata over the documented limit
    │   ├── ParseError                       a channel payload that cannot be parsed
    │   │   └── SignatureError               a provider signature that does not verify
    │   └── OutOfOrderError                  an imported message older than its thread
    ├── NotFound (also LookupError)          a thread, customer, message or handoff id
    ├── ConflictError                        optimistic concurrency: someone wrote first
    │   └── Contention                       retries spent on a busy thread: try later
    ├── IdempotencyError                     a key reused with a different payload
    ├── InvalidTransition                    a lifecycle or handoff move not allowed now
    │   └── HandoffTaken                     the handoff was accepted by someone else
    ├── StaleControllerError                 a write with a fencing token no longer current
    ├── PolicyViolation                      a merge or disclosure the policy forbids
    ├── TokenError                           continuation token or code: bad, used, expired
    ├── VerificationError                    one-time code: wrong, expired, too many tries
    ├── ErasedError                          the customer was erased
    └── StoreError                           the backend failed (driver errors are wrapped)
        ├── StoreUnavailable                 cannot connect / connection lost
        └── SchemaError                      the store's schema is newer or unknown
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "ContentTooLarge",
    "Contention",
    "ConvthreadError",
    "ErasedError",
    "FeedUnavailable",
    "HandoffTaken",
    "IdempotencyError",
    "InvalidIdentifier",
    "InvalidTransition",
    "NotFound",
    "OutOfOrderError",
    "ParseError",
    "PolicyViolation",
    "SchemaError",
    "SignatureError",
    "StaleControllerError",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "UnknownIdentifierKind",
    "ValidationError",
    "VerificationError",
]


class ConvthreadError(Exception):
    """Root of every error convthread raises on purpose."""


class ValidationError(ConvthreadError, ValueError):
    """Input that convthread refuses. Nothing was stored."""


class InvalidIdentifier(ValidationError):
    """An identifier value that cannot be normalized for its kind.

    ``kind`` names the identifier kind, ``reason`` says what was wrong.
    """

    def __init__(self, kind: str, value: str, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {kind} identifier {value!r}: {reason}")


class UnknownIdentifierKind(ValidationError):
    """An identifier kind for which no normalizer is registered."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"unknown identifier kind {kind!r}; register a normalizer for it first")


class ContentTooLarge(ValidationError):
    """Text, metadata or a payload over the documented size limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} long; the limit is {limit}")


class ParseError(ValidationError):
    """A channel payload that cannot be parsed into normalized results."""

    def __init__(self, channel: str, reason: str) -> None:
        self.channel = channel
        self.reason = reason
        super().__init__(f"cannot parse {channel} payload: {reason}")


class SignatureError(ParseError):
    """A provider's request signature is missing or does not verify."""


class NotFound(ConvthreadError, LookupError):
    """A thread, customer, message, handoff or verification that does not exist."""

    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        super().__init__(f"no {what} {key!r}")


class ConflictError(ConvthreadError):
    """An optimistic-concurrency conflict: another writer committed first.

    The batch that raised it wrote nothing. The service retries these a bounded
    number of times before letting one through (as :class:`Contention`).
    """


class Contention(ConflictError):
    """The service spent its retry budget (``max_retries``) on conflicting writers.

    Nothing was written, and the operation is safe to retry: a redelivered payload is
    still stored once. ``retry_after`` is a hint in seconds (a float; round it up for an
    HTTP ``Retry-After`` header), ``attempts`` how many times the operation ran. A web
    handler answers 503 with ``Retry-After``, so the provider delivers the payload again.
    """

    def __init__(self, reason: str, *, attempts: int, retry_after: float) -> None:
        self.reason = reason
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(
            f"gave up after {attempts} attempt{'s' if attempts != 1 else ''} on conflicting "
            f"writers ({reason}); retry in about {retry_after:.3g}s"
        )


class IdempotencyError(ConvthreadError):
    """An idempotency key was reused with a different payload. The first result stands."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used with a different payload; "
            "the first result stands"
        )


class InvalidTransition(ConvthreadError):
    """A lifecycle or handoff move that the current state does not allow."""


class StaleControllerError(ConvthreadError):
    """A write carried a fencing token that is no longer the thread's current one."""

    def __init__(self, thread_id: str, presented: int, current: int) -> None:
        self.thread_id = thread_id
        self.presented = presented
        self.current = current
        super().__init__(
            f"thread {thread_id!r}: fencing token {presented} is stale "
            f"(current is {current}); control has moved on"
        )


class PolicyViolation(ConvthreadError):
    """An operation the merge or disclosure policy forbids."""


class TokenError(ConvthreadError):
    """A continuation token or code that is forged, expired, used or unknown."""


class VerificationError(ConvthreadError):
    """A one-time code that is wrong, expired, or has used up its attempts."""


class ErasedError(ConvthreadError):
    """The customer was erased; nothing about them can be read or written."""


class StoreError(ConvthreadError):
    """The storage backend failed. Driver errors are wrapped in this."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, or the connection was lost mid-operation."""


class FeedUnavailable(StoreError):
    """The store offers no change feed (it cannot read events by position; see
    :class:`convthread.ports.FeedReader`)."""


class SchemaError(StoreError):
    """The store's schema version is unknown or newer than this library."""


class HandoffTaken(InvalidTransition):
    """The handoff was already accepted by someone else: the other acceptance won."""

    def __init__(self, handoff_id: str, accepted_by: str) -> None:
        self.handoff_id = handoff_id
        self.accepted_by = accepted_by
        super().__init__(f"handoff {handoff_id!r} was already accepted by {accepted_by}")


class OutOfOrderError(ValidationError):
    """A history import's message is older than the newest event of the thread it would
    join: a thread's events keep the order of their times. Nothing was stored."""

    def __init__(self, thread_id: str, sent_at: str, newest: str) -> None:
        self.thread_id = thread_id
        super().__init__(
            f"the message of {sent_at} is older than thread {thread_id!r}, whose newest "
            f"event is of {newest}; import history oldest first"
        )
