"""Agents in several processes accepting one offer at once, on SQLite and PostgreSQL:
exactly one wins, and every loser is told who won (HandoffTaken naming the winner).

Each worker starts each accept a random moment after the others and its store pauses for
a random moment after every read, as a busy machine deschedules a process, so the
rounds meet the interleavings of one accept's reads with another's commit.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import convthread as ct
from convthread.errors import HandoffTaken
from convthread.ports import Item, Store
from convthread.stores import open_store
from tests._thread_util import T0, msg

PROCESSES, ROUNDS = 4, 30


class _Descheduled:
    """A store that pauses for up to a few milliseconds after each read."""

    def __init__(self, store: Store, rng: random.Random) -> None:
        self._store = store
        self._rng = rng

    def get(self, ns: str, key: str) -> Item | None:
        item = self._store.get(ns, key)
        time.sleep(self._rng.uniform(0, 0.004))
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _accept_worker(url: str, agent: str, handoff_ids: list[str], barrier: Any, out: Any) -> None:
    rng = random.Random(agent)
    store: Any = _Descheduled(open_store(url), rng)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0))
    try:
        for hid in handoff_ids:
            barrier.wait()
            time.sleep(rng.uniform(0, 0.01))
            try:
                convs.accept_handoff(hid, by=agent)
                out.put((hid, agent, "won", ""))
            except HandoffTaken as exc:
                out.put((hid, agent, "taken", exc.accepted_by))
            except Exception as exc:
                out.put((hid, agent, "error", repr(exc)))
    finally:
        convs.close()


def test_every_losing_process_is_told_who_won(store_url: str) -> None:
    with ct.Conversations(open_store(store_url), clock=ct.ManualClock(T0)) as convs:
        handoffs = []
        for r in range(ROUNDS):
            tid = convs.ingest(msg(f"m{r}", customer=r + 1)).thread_id
            handoffs.append(convs.request_handoff(tid, to="queue:support").id)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    agents = [f"agent:a{i}" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_accept_worker, args=(store_url, agent, handoffs, barrier, out))
        for agent in agents
    ]
    for p in procs:
        p.start()
    outcomes = [out.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with ct.Conversations(open_store(store_url), clock=ct.ManualClock(T0)) as convs:
        for hid in handoffs:
            rows = [(agent, kind, detail) for h, agent, kind, detail in outcomes if h == hid]
            winners = [agent for agent, kind, _ in rows if kind == "won"]
            assert len(winners) == 1, rows
            [winner] = winners
            losers = [(agent, kind, detail) for agent, kind, detail in rows if agent != winner]
            assert losers == [(a, "taken", winner) for a, _k, _d in losers], rows
            assert str(convs.handoff(hid).accepted_by) == winner
