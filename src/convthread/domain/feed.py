"""The change feed's record: :class:`Change`, one stored event seen in commit order.

Every event the service stores (a thread's or a customer's) is one change, at the
event's global position (see :mod:`convthread.ports`, semantics 6). Positions only grow
in commit order, so a reader that remembers the last position it handled resumes
exactly there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Union

import msgspec

from convthread.domain.events import CustomerEvent, ThreadEvent

__all__ = ["Change"]


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the store, as the change feed shows it.

    * ``position``: the event's global position (commit order; gaps are possible).
    * ``tenant``: the tenant whose data it is (``""``: the single default tenant).
    * ``kind``: a dotted name such as ``"message.received"`` or ``"customer.merged"``.
    * ``thread_id`` / ``customer_id``: the thread (for thread events) and the customer
      the change concerns, where known.
    * ``stream`` and ``seq``: where the event is stored (its stream and sequence number).
    * ``at``: when the event was recorded.
    * ``event``: the event itself (after erasure, its redacted form).
    """

    position: int
    tenant: str
    kind: str
    thread_id: str | None
    customer_id: str | None
    stream: str
    seq: int
    at: datetime
    event: Union[ThreadEvent, CustomerEvent]
