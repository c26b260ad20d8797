"""A thread's state as a head row and back: the columns, and the rest as bytes.

The service stores each thread's :class:`~convthread.domain.thread.ThreadState` as a
:class:`~convthread.ports.ThreadHead`: the fields queries filter and order by become
typed columns, every other field goes into ``state`` (MessagePack, positional, trailing
defaults left out), which stores keep without reading. :func:`head_of` and
:func:`state_of` are inverse: ``state_of(head_of(s, tenant)) == s`` for every state.
Store migrations and the adapter for key-value stores use them too, so they live here,
beside the codec, rather than in the service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from convthread.domain.events import ThreadStatus
from convthread.domain.model import Party, PartyKind
from convthread.domain.thread import PendingHandoff, ThreadState
from convthread.ports import ThreadHead

__all__ = ["head_of", "state_of"]


class _Rest(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """The fields of a ThreadState that are not columns of its head (in this order:
    append new fields at the end, with a default, so stored bytes stay readable)."""

    channel: str
    no_activity: bool = False  # last_activity was None (the head's column holds created_at)
    predecessor: str | None = None
    last_inbound_at: datetime | None = None
    status_changed_at: datetime | None = None
    message_count: int = 0
    fencing_token: int = 0
    pending: PendingHandoff | None = None
    attributes: dict[str, Any] = {}
    bot_failures: int = 0


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_Rest)
_PARTY_KINDS: Final = {k.value: k for k in PartyKind}
_STATUSES: Final = {s.value: s for s in ThreadStatus}


def head_of(state: ThreadState, tenant: str) -> ThreadHead:
    """The head row of ``state`` (version 0: the store sets it)."""
    rest = _Rest(
        channel=state.channel,
        no_activity=state.last_activity is None,
        predecessor=state.predecessor,
        last_inbound_at=state.last_inbound_at,
        status_changed_at=state.status_changed_at,
        message_count=state.message_count,
        fencing_token=state.fencing_token,
        pending=state.pending,
        attributes=state.attributes,
        bot_failures=state.bot_failures,
    )
    controller = state.controller
    return ThreadHead(
        thread_id=state.id,
        tenant=tenant,
        customer_id=state.customer_id,
        status=state.status.value,
        last_seq=state.version,
        last_activity=state.last_activity or state.created_at,
        last_channel=state.last_channel,
        topic=state.topic,
        channels=state.channels,
        snoozed_until=state.snoozed_until,
        controller=None if controller is None else f"{controller.kind.value}:{controller.id}",
        created_at=state.created_at,
        state=_encoder.encode(rest),
    )


def state_of(head: ThreadHead) -> ThreadState:
    """The thread state ``head`` holds."""
    rest = _decoder.decode(head.state)
    controller: Party | None = None
    if head.controller is not None:
        kind, _, ident = head.controller.partition(":")
        controller = Party(_PARTY_KINDS[kind], ident)
    return ThreadState(
        id=head.thread_id,
        customer_id=head.customer_id,
        status=_STATUSES[head.status],
        version=head.last_seq,
        created_at=head.created_at,
        channel=rest.channel,
        channels=tuple(head.channels),
        last_channel=head.last_channel,
        topic=head.topic,
        predecessor=rest.predecessor,
        last_activity=None if rest.no_activity else head.last_activity,
        last_inbound_at=rest.last_inbound_at,
        status_changed_at=rest.status_changed_at,
        snoozed_until=head.snoozed_until,
        message_count=rest.message_count,
        controller=controller,
        fencing_token=rest.fencing_token,
        pending=rest.pending,
        attributes=rest.attributes,
        bot_failures=rest.bot_failures,
    )
