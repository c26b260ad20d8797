"""Exactly-once ingest and one live thread per customer and topic under concurrency:
threads in one process (memory and SQLite), and processes on one SQLite file."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import convthread as ct
from convthread.domain.updates import StatusReport
from convthread.errors import IdempotencyError
from convthread.stores import SQLiteStore
from tests._thread_util import T0, check_store_invariants, msg

CHANNELS = ("sms", "whatsapp", "email", "webchat")


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; return results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.fixture
def convs(store_factory, clock, ids) -> ct.Conversations:
    return ct.Conversations(store_factory(), clock=clock, ids=ids, max_retries=100)


def test_channels_racing_for_a_new_customer_make_one_thread(convs: ct.Conversations) -> None:
    results = race(
        8,
        lambda i: convs.ingest(msg(f"r{i}", channel=CHANNELS[i % 4], at=T0 + timedelta(seconds=i))),
    )
    assert all(isinstance(r, ct.IngestResult) for r in results), results
    assert len({r.customer_id for r in results}) == 1
    assert len({r.thread_id for r in results}) == 1
    assert sum(r.new_thread for r in results) == 1
    assert sum(r.new_customer for r in results) == 1
    assert sorted(r.seq for r in results) == list(range(2, 10))
    state = convs.thread_state(results[0].thread_id)
    assert set(state.channels) == set(CHANNELS)
    check_store_invariants(convs.store)


def test_racing_redeliveries_store_once(convs: ct.Conversations) -> None:
    results = race(8, lambda i: convs.ingest(msg("same", text="hello")))
    assert all(isinstance(r, ct.IngestResult) for r in results), results
    assert sum(not r.duplicate for r in results) == 1
    assert len({(r.thread_id, r.seq) for r in results}) == 1
    assert len(convs.events(results[0].thread_id)) == 2


def test_racing_key_misuse_one_wins_and_stands(convs: ct.Conversations) -> None:
    results = race(
        6, lambda i: convs.ingest(msg(f"k{i}", text=f"payload {i % 2}", idempotency_key="K"))
    )
    wins = [r for r in results if isinstance(r, ct.IngestResult) and not r.duplicate]
    assert len(wins) == 1
    winner_text = wins[0].event.content.text
    for r in results:
        if isinstance(r, ct.IngestResult):
            assert r.event.content.text == winner_text
        else:
            assert isinstance(r, IdempotencyError)
    # Those with the losing payload all failed; the first result stands.
    assert sum(isinstance(r, IdempotencyError) for r in results) >= 1
    tid = wins[0].thread_id
    assert [type(e.event).__name__ for e in convs.events(tid)] == [
        "ThreadStarted",
        "MessageReceived",
    ]


def test_racing_statuses_end_at_the_highest(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("in", channel="whatsapp")).thread_id
    statuses = [
        ct.DeliveryStatus.READ,
        ct.DeliveryStatus.SENT,
        ct.DeliveryStatus.DELIVERED,
        ct.DeliveryStatus.FAILED,
    ] * 2

    def report(i: int) -> Any:
        return convs.apply(
            StatusReport(channel="whatsapp", provider_message_id="o1", status=statuses[i], at=T0)
        )

    def send_later(i: int) -> Any:
        return convs.send(tid, "hi", sender="agent:ann", provider_message_id="o1")

    results = race(9, lambda i: send_later(i) if i == 8 else report(i))
    assert not [r for r in results if isinstance(r, Exception)], results
    [entry] = [e for e in convs.timeline(tid) if e.direction == "outbound"]
    assert entry.status is ct.DeliveryStatus.READ
    recorded = [
        e.event.status.rank for e in convs.events(tid) if isinstance(e.event, ct.StatusUpdated)
    ]
    assert recorded == sorted(recorded) and len(recorded) == len(set(recorded))


def test_racing_lifecycle_and_ingest_keep_the_open_pointer(convs: ct.Conversations) -> None:
    tid = convs.ingest(msg("m0")).thread_id

    def act(i: int) -> Any:
        if i % 2:
            return convs.resolve(tid)
        return convs.ingest(msg(f"m{i + 1}", at=T0 + timedelta(minutes=i)))

    race(6, act)
    check_store_invariants(convs.store)


# ----------------------------------------------------------------- processes


def _process_worker(path: str, index: int, barrier: Any, out: Any) -> None:
    store = SQLiteStore(path)
    convs = ct.Conversations(store, clock=ct.ManualClock(T0), max_retries=500)
    try:
        barrier.wait()
        seqs = []
        for j in range(5):
            # every process delivers the shared message too: it must be stored once
            r = convs.ingest(msg("shared", text="same payload", channel="sms"))
            seqs.append(("shared", r.thread_id, r.seq, r.duplicate))
            r = convs.ingest(
                msg(f"p{index}-{j}", channel=CHANNELS[index % 4], at=T0 + timedelta(seconds=j))
            )
            seqs.append((f"p{index}-{j}", r.thread_id, r.seq, r.duplicate))
        out.put(seqs)
    except Exception as exc:  # pragma: no cover - reported to the parent
        out.put(repr(exc))
    finally:
        convs.close()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_racing_on_one_sqlite_file(tmp_path: Path, method: str) -> None:
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    ctx = mp.get_context(method)
    path = str(tmp_path / "shared.db")
    SQLiteStore(path).close()  # create the schema once
    n = 4
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, i, barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(isinstance(r, list) for r in reports), reports
    rows = [row for r in reports for row in r]
    shared = {(t, s) for key, t, s, _d in rows if key == "shared"}
    assert len(shared) == 1  # the redelivered payload landed once
    assert sum(1 for key, *_r, d in rows if key == "shared" and not d) == 1
    threads = {t for _k, t, _s, _d in rows}
    assert len(threads) == 1  # one customer, one live thread, whatever the channel
    own = sorted(s for key, _t, s, _d in rows if key != "shared")
    [(tid, shared_seq)] = shared
    assert sorted([*own, shared_seq]) == list(range(2, 2 + n * 5 + 1))
    store = SQLiteStore(path)
    try:
        check_store_invariants(store)
        assert store.version(tid) == 1 + n * 5 + 1
    finally:
        store.close()


def test_racing_batches_for_one_customer_make_one_gap_free_thread(convs: ct.Conversations) -> None:
    def batch(i: int) -> Any:
        return convs.ingest_many(
            [
                msg(f"b{i}-{j}", channel=CHANNELS[(i + j) % 4], at=T0 + timedelta(seconds=j))
                for j in range(5)
            ]
        )

    results = race(4, batch)
    assert all(isinstance(r, list) for r in results), results
    flat = [r for batch_results in results for r in batch_results]
    assert len({r.thread_id for r in flat}) == 1
    assert sorted(r.seq for r in flat) == list(range(2, 22))
    check_store_invariants(convs.store)
