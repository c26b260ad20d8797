"""Storage encoding figures: bytes and µs per stored record.

    python bench/bench_codec.py

Ingests bench_ingest's reference message a few times for one customer (steady state),
then prints the stored size of the last MessageReceived event and of the ThreadState,
and the time to encode and to decode one event and one state, and the file size per
message of a SQLite store after 500 messages.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_ingest import T0, reference_messages

import convthread as ct
from convthread import codec
from convthread.stores import MemoryStore


def per_call(fn: object, arg: object, repeats: int = 20_000) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn(arg)
        best = min(best, time.perf_counter() - start)
    return best / repeats * 1e6


def main() -> None:
    convs = ct.Conversations(MemoryStore(), clock=ct.ManualClock(T0))
    result = None
    for m in reference_messages(5, 1):
        result = convs.ingest(m)
    assert result is not None
    event = convs.events(result.thread_id)[-1].event
    state = convs.thread_state(result.thread_id)
    ev_bytes = codec.encode(event)
    st_bytes = codec.encode(state)
    print(f"MessageReceived: {len(ev_bytes):>5} bytes")
    print(f"ThreadState:     {len(st_bytes):>5} bytes")
    print(f"encode event {per_call(codec.encode, event):6.2f} µs")
    print(f"decode event {per_call(codec.decode_event, ev_bytes):6.2f} µs")
    print(f"encode state {per_call(codec.encode, state):6.2f} µs")
    print(f"decode state {per_call(codec.decode_thread_state, st_bytes):6.2f} µs")
    print(f"fingerprint  {per_call(codec.fingerprint, reference_messages(1, 1)[0]):6.2f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.db"
        n = 500
        sql = ct.Conversations(f"sqlite:///{path}", clock=ct.ManualClock(T0))
        for m in reference_messages(n, 50):
            sql.ingest(m)
        sql.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"SQLite file:  {size / n:8.0f} bytes/message ({n} messages, 50 customers)")


if __name__ == "__main__":
    main()
