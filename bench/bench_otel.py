"""What observability costs on ingest: OpenTelemetry absent, present without an SDK, and
with the SDK exporting to memory, as ratios to the absent case measured in the same run.

    python bench/bench_otel.py [--quick] [--messages N] [--rounds R]

Each case runs in a fresh interpreter, the cases interleaved round by round (the best
round of each counts), ingesting the same messages into a memory store (where the
library's own cost is largest) and into a SQLite file (one commit per message):

* ``absent``: ``opentelemetry`` blocked from importing, as when it is not installed;
* ``driver only``: absent, and the observing layer replaced by a direct call of the
  driver: the library before instrumentation, so the cost of ``absent`` itself shows;
* ``api, no sdk``: ``opentelemetry-api`` importable, no SDK installed (its no-ops);
* ``sdk, memory``: the SDK's TracerProvider with a SimpleSpanProcessor exporting to an
  InMemorySpanExporter (emptied every 500 messages, as an exporter hands spans on), and
  a MeterProvider with an InMemoryMetricReader.

Logging is left unconfigured (the library's NullHandler), as in an application that
does not ask for convthread's DEBUG records.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("absent", "driver only", "api, no sdk", "sdk, memory")

WORKER = r"""
import json, sys, time
from datetime import datetime, timedelta, timezone

case, store_kind, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if case in ("absent", "driver only"):
    sys.modules["opentelemetry"] = None  # an import of it fails, as when not installed
if case == "sdk, memory":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

import convthread as ct
from convthread import _telemetry
from convthread.stores import MemoryStore, SQLiteStore

if case == "driver only":
    import convthread.service._operation as operation

    operation.observed_sync = lambda watch, run, args, kwargs: run(None)
assert _telemetry.OTEL is (case in ("api, no sdk", "sdk, memory"))

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]
META = {"campaign": "spring", "locale": "en-GB", "segment": "gold", "device": "ios", "ab": "b"}
customers = max(1, n // 10)
senders = [
    (ct.SenderIdentifier(ct.phone(f"+4479111{i:05d}"), ct.Trust.ASSERTED),)
    for i in range(customers)
]


def messages(prefix, count):
    return [
        ct.Inbound(
            channel="sms",
            provider_message_id=f"{prefix}{i:012d}",
            sender=senders[i % customers],
            content=ct.Content(text=TEXT, metadata=META),
            sent_at=T0 + timedelta(seconds=i),
            recipient="+441234567890",
        )
        for i in range(count)
    ]


store = MemoryStore() if store_kind == "memory" else SQLiteStore(path)
convs = ct.Conversations(store, clock=ct.ManualClock(T0))
for m in messages("WARM", min(200, n)):
    convs.ingest(m)
batch = messages("SM", n)
exported = 0
start = time.perf_counter()
for i, m in enumerate(batch, start=1):
    convs.ingest(m)
    if case == "sdk, memory" and i % 500 == 0:
        # Hand the spans on, as an exporter does: kept, they only slow the collector.
        exported += len(exporter.get_finished_spans())
        exporter.clear()
elapsed = time.perf_counter() - start
store.close()
if case == "sdk, memory":
    exported += len(exporter.get_finished_spans())
    assert exported >= 2 * n, exported  # an ingest span and a commit span per message
print(json.dumps({"seconds": elapsed}))
"""


def run_case(case: str, store: str, n: int, workdir: Path, round_no: int) -> float:
    path = workdir / f"{store}-{CASES.index(case)}-{round_no}.db"
    out = subprocess.run(
        [sys.executable, "-c", WORKER, case, store, str(n), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{case} / {store} failed:\n{out.stderr}")
    return float(json.loads(out.stdout)["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--messages", type=int, default=None, help="per case and store")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sizes = {
        "memory": args.messages or (2_000 if args.quick else 20_000),
        "sqlite": args.messages or (500 if args.quick else 4_000),
    }
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"convthread bench_otel ({'quick' if args.quick else 'full'} run, best of {rounds})")
    with tempfile.TemporaryDirectory() as tmp:
        for store, n in sizes.items():
            best = dict.fromkeys(CASES, float("inf"))
            for round_no in range(rounds):
                for case in CASES:
                    seconds = run_case(case, store, n, Path(tmp), round_no)
                    best[case] = min(best[case], seconds)
            base = n / best["absent"]
            print(f"\ningest into {store} ({n:,} messages)")
            for case in CASES:
                rate = n / best[case]
                print(f"  {case:<12} {rate:>10,.0f} msg/s   {rate / base:5.2f}x absent")


if __name__ == "__main__":
    main()
