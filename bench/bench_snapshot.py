"""Context snapshot of a 10,000-message thread from SQLite, beside a replay from scratch.

Prints, in one run, for a thread of 10,000 messages (customer and agent taking turns over
three channels, with attributes, intents and handoffs along the way) in a SQLite file:

* replay: read every event of the thread from SQLite, decode, fold the snapshot state
  from the start and project it (what a snapshot would cost without the checkpoint);
* snapshot: ``Conversations.snapshot`` as shipped (checkpoint + tail), for the internal
  agent and for the external bot vendor (redaction on; one customer message in five
  carries a phone number and an e-mail address), the latter with the scrubbing cache
  warm (the same snapshot asked again) and cleared (every text scrubbed afresh);
* the aim: at most 5 ms per snapshot.

Timings are medians over repeated runs, after one warm-up call. The thread is written
with ``synchronous=NORMAL`` to build it quickly; reads do not depend on that setting.

    python bench/bench_snapshot.py            # the full run (10,000 messages)
    python bench/bench_snapshot.py --quick    # a small smoke run (1,000 messages)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec

import convthread as ct
from convthread import codec
from convthread.domain import redaction
from convthread.domain.redaction import DEFAULT_POLICIES
from convthread.domain.snapshot import fold_snapshot, project
from convthread.ports import Batch, Put
from convthread.service import _snapshots
from convthread.stores import SQLiteStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
AIM_MS = 5.0
CHANNELS = ("webchat", "sms", "whatsapp")


def build(store: SQLiteStore, messages: int) -> tuple[ct.Conversations, str]:
    clock = ct.ManualClock(T0)
    convs = ct.Conversations(store, clock=clock, ids=ct.SequentialIds())
    who = ct.SenderIdentifier(ct.phone("+14155550123"), ct.Trust.ASSERTED)
    tid = ""
    token = 0
    for i in range(messages):
        clock.advance(seconds=30)
        channel = CHANNELS[(i // 500) % len(CHANNELS)]
        if i % 2 == 0:
            text = f"Message {i}: my order A-{1000 + i} has not arrived yet"
            if i % 10 == 0:  # one customer message in five carries contact details
                text += f". Call me on +1 415 555 {i % 10000:04d} or mail dana.{i}@example.com"
            inbound = ct.Inbound(
                channel=channel,
                provider_message_id=f"in-{i}",
                sender=(who,),
                content=ct.Content(text=text),
                sent_at=clock.now(),
            )
            tid = convs.ingest(inbound).thread_id
            if i == 0:
                token = convs.transfer_control(tid, to="agent:ann", fencing_token=0).fencing_token
        else:
            convs.send(
                tid,
                f"Reply {i}: let me check that for you",
                sender="agent:ann",
                fencing_token=token,
            )
        if i % 1000 == 999:
            convs.set_attribute(tid, "checked", i, by="agent:ann", fencing_token=token)
            convs.record_intent(
                tid, "where_is_my_order", confidence=0.8, by="agent:ann", fencing_token=token
            )
    return convs, tid


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 messages, fewer repeats")
    args = parser.parse_args()
    messages = 1_000 if args.quick else 10_000
    repeat = 5 if args.quick else 30

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db", synchronous="NORMAL")
        start = time.perf_counter()
        convs, tid = build(store, messages)
        built = time.perf_counter() - start
        version = convs.thread_state(tid).version
        customer = convs.customer(convs.thread_state(tid).customer_id).state
        checkpoint = store.get("hsnap", _snapshots.checkpoint_key(tid))
        cp_seq = _snapshots.decode_snapshot_state(checkpoint.value).seq if checkpoint else 0

        def replay() -> bytes:
            events = [(r.seq, codec.decode_event(r.data)) for r in store.read(tid)]
            state = fold_snapshot(tid, events)
            return project(
                state, audience="agent", policy=DEFAULT_POLICIES["agent"], customer=customer
            ).to_json()

        def snap_agent() -> bytes:
            return convs.snapshot(tid, audience="agent").to_json()

        def snap_vendor() -> bytes:
            return convs.snapshot(tid, audience="bot_vendor").to_json()

        def snap_vendor_cold() -> bytes:
            redaction._scrub_cached.cache_clear()  # as if every message text were new
            return convs.snapshot(tid, audience="bot_vendor").to_json()

        assert replay() == snap_agent(), "the checkpointed snapshot differs from a replay"

        # the worst case between checkpoints: a checkpoint 2 x CHECKPOINT_EVERY - 1 events
        # behind (ingest moves it every CHECKPOINT_EVERY events; the first snapshot after
        # a long run of other writes folds them once and moves it too)
        behind = 2 * _snapshots.CHECKPOINT_EVERY - 1
        events = [(r.seq, codec.decode_event(r.data)) for r in store.read(tid)]
        old_state = fold_snapshot(tid, events[: version - behind])
        old_state = msgspec.structs.replace(
            old_state, origin=_snapshots.origin_of(store.read(tid, 0, 1)[0].data)
        )
        key = _snapshots.checkpoint_key(tid)

        def reset_checkpoint() -> None:
            item = store.get("hsnap", key)
            store.commit(
                Batch(
                    puts=(Put("hsnap", key, codec.encode(old_state), item.version if item else 0),)
                )
            )

        def snap_behind() -> bytes:
            reset_checkpoint()
            start = time.perf_counter()
            out = convs.snapshot(tid, audience="agent").to_json()
            samples_behind.append(time.perf_counter() - start)
            return out

        samples_behind: list[float] = []
        for _ in range(max(3, repeat // 3)):
            snap_behind()
        behind_ms = statistics.median(samples_behind) * 1000
        replay_ms = timed(replay, max(3, repeat // 5))
        agent_ms = timed(snap_agent, repeat)
        vendor_ms = timed(snap_vendor, repeat)
        vendor_cold_ms = timed(snap_vendor_cold, repeat)
        store.close()

    print(f"thread: {messages:,} messages, {version:,} events (built in {built:.1f} s)")
    print(f"checkpoint at seq {cp_seq:,}: tail of {version - cp_seq} events folded per snapshot")
    print(f"replay from scratch (read + decode + fold + project): {replay_ms:8.2f} ms")
    print(f"snapshot, agent (checkpoint + tail):                  {agent_ms:8.2f} ms")
    print(f"snapshot, bot_vendor (redacted, scrub cache warm):    {vendor_ms:8.2f} ms")
    print(f"snapshot, bot_vendor (redacted, scrub cache cleared): {vendor_cold_ms:8.2f} ms")
    print(f"snapshot, agent, checkpoint {behind} events behind:  {behind_ms:8.2f} ms")
    print(f"speed-up over replay: {replay_ms / agent_ms:.0f}x (agent)")
    verdict = "met" if max(agent_ms, vendor_ms, vendor_cold_ms, behind_ms) <= AIM_MS else "NOT met"
    print(f"aim: <= {AIM_MS:.0f} ms per snapshot: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
