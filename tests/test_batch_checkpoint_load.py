"""Prefetching a batch probes the checkpoints its threads may need, and only those.

A message appends one or two events to a thread of its own customer, so in a batch a
thread can grow only by twice its customer's messages: the prefetch asks for a thread's
checkpoint when that growth could take it to ``CHECKPOINT_EVERY`` (the pipeline then
finds it prefetched), and not for the threads of a batch that cannot get there.
"""

from __future__ import annotations

from collections.abc import Sequence

import convthread as ct
from convthread.ports import Item, ThreadHead
from convthread.service._core import NS_HSNAP
from convthread.service._snapshots import CHECKPOINT_EVERY, checkpoint_key

from .test_load import T0, CountingStore, MultiGetStore, msg


class KeyLog(MultiGetStore):
    """The counting memory store with ``get_multi_heads``, keeping the index keys of
    each call."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[tuple[str, str]]] = []

    def get_multi_heads(
        self, keys: Sequence[tuple[str, str]], tenant: str, thread_ids: Sequence[str]
    ) -> tuple[dict[tuple[str, str], Item], dict[str, ThreadHead]]:
        self.asked.append(list(keys))
        return super().get_multi_heads(keys, tenant, thread_ids)


def stores() -> tuple[ct.Conversations, ct.Conversations, KeyLog]:
    log = KeyLog()
    plain = ct.Conversations(CountingStore(), clock=ct.ManualClock(T0), ids=ct.SequentialIds())
    multi = ct.Conversations(log, clock=ct.ManualClock(T0), ids=ct.SequentialIds())
    assert multi.config.prefetch and not plain.config.prefetch
    return plain, multi, log


def test_a_batch_of_returning_customers_reads_in_one_call_and_probes_no_checkpoint() -> None:
    plain, multi, log = stores()
    out = []
    for convs in (plain, multi):
        convs.ingest_many([msg(i, i) for i in range(90)])
        log.calls.clear()
        log.asked.clear()
        # 90 customers, each thread at version 2 and getting one message
        out.append(convs.ingest_many([msg(i, i - 90, channel="webchat") for i in range(90, 180)]))
    assert out[0] == out[1]
    assert log.calls == {"get_multi": 1, "commit": 1}
    assert not [key for key in log.asked[0] if key[0] == NS_HSNAP]


def test_a_thread_the_batch_takes_to_a_checkpoint_has_it_prefetched() -> None:
    plain, multi, log = stores()
    out = []
    for convs in (plain, multi):
        for i in range(CHECKPOINT_EVERY - 4):  # one thread, three events short of it
            convs.ingest(msg(i, 1))
        log.calls.clear()
        log.asked.clear()
        # three of its customer's messages among 57 of other customers
        batch = [msg(100 + i, 1 if i % 20 == 0 else 2 + i) for i in range(60)]
        out.append(convs.ingest_many(batch))
    assert out[0] == out[1]
    mine = [r for r in out[1] if r.thread_id == out[1][0].thread_id]
    assert [r.seq for r in mine] == [CHECKPOINT_EVERY - 2, CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY]
    key = (NS_HSNAP, checkpoint_key(mine[0].thread_id))
    assert key in log.asked[0]
    assert log.calls["get"] == log.calls["get_many"] == 0  # the probe was answered
    assert log.get(*key) is not None  # the batch moved the checkpoint
