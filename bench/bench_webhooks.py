"""Webhook figures: signed Twilio SMS webhooks through the production example under
uvicorn, against the same messages applied directly with AsyncConversations, same run.

    python bench/bench_webhooks.py [--quick] [--messages N] [--concurrency K] [--store URL]

The service (examples/production) runs in a uvicorn subprocess on 127.0.0.1; the client
sends N form-encoded, signed SMS webhooks from N/20 customers, K at a time, and reports
requests per second and the latency percentiles seen by the client. The baseline parses
the same forms and awaits ``AsyncConversations.apply`` for each, K at a time, in this
process, over a fresh store of the same kind. The ratio is "through HTTP / direct": what
the HTTP layer (uvicorn, FastAPI, the signature check, the client) costs on top of the
library. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

import convthread as ct
from convthread.channels import sms

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-auth-token"
PUBLIC = "https://support.example.com"
TEXT = ("Hello, my order has not arrived yet and the tracking page shows no update. " * 3)[:200]


def forms(n: int) -> list[dict[str, str]]:
    customers = max(1, n // 20)
    return [
        {
            "MessageSid": f"SM{i:012d}",
            "AccountSid": "AC00000000000000000000000000000000",
            "From": f"+1415555{i % customers:04d}",
            "To": "+18005550199",
            "Body": TEXT,
            "NumMedia": "0",
        }
        for i in range(n)
    ]


async def direct(store: str, payloads: list[dict[str, str]], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with ct.AsyncConversations(store) as convs:

        async def one(fields: dict[str, str]) -> None:
            async with gate:
                for result in sms.parse(fields):
                    await convs.apply(result)

        start = time.perf_counter()
        await asyncio.gather(*(one(f) for f in payloads))
        return time.perf_counter() - start


async def through_http(
    base: str, payloads: list[dict[str, str]], concurrency: int
) -> tuple[float, list[float], int]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    retried = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:

        async def one(fields: dict[str, str]) -> None:
            nonlocal retried
            body = urlencode(fields).encode()
            headers = {
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": sms.compute_signature(
                    PUBLIC + "/webhooks/twilio/sms", fields, TOKEN
                ),
            }
            async with gate:
                began = time.perf_counter()
                while True:
                    answer = await http.post("/webhooks/twilio/sms", content=body, headers=headers)
                    if answer.status_code != 503:
                        break
                    retried += 1  # as a provider would, but without its back-off
                    await asyncio.sleep(0.01)
                latencies.append(time.perf_counter() - began)
                answer.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(f) for f in payloads))
        return time.perf_counter() - start, latencies, retried


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(store: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVTHREAD_STORE=store, PUBLIC_URL=PUBLIC, TWILIO_AUTH_TOKEN=TOKEN)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "examples.production.app:from_environment",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"uvicorn exited with status {proc.returncode}") from None
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("uvicorn did not start")


def drop_schemas(url: str, schemas: list[str]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--store", default="sqlite", help="sqlite (a fresh file each), or a postgresql:// URL"
    )
    args = parser.parse_args()
    n = args.messages or (200 if args.quick else 2000)
    payloads = forms(n)
    with tempfile.TemporaryDirectory() as tmp:

        def store(name: str) -> str:
            if args.store == "sqlite":
                return f"sqlite:///{Path(tmp) / name}.db"
            sep = "&" if "?" in args.store else "?"
            return f"{args.store}{sep}schema=bench_webhooks_{name}_{os.getpid()}"

        direct_s = asyncio.run(direct(store("direct"), payloads, args.concurrency))
        port = free_port()
        server = serve(store("http"), port)
        try:
            http_s, latencies, retried = asyncio.run(
                through_http(f"http://127.0.0.1:{port}", payloads, args.concurrency)
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
            if args.store != "sqlite":
                drop_schemas(
                    args.store, [f"bench_webhooks_{x}_{os.getpid()}" for x in ("direct", "http")]
                )
    kind = "SQLite" if args.store == "sqlite" else "PostgreSQL"
    print(f"convthread bench_webhooks ({'quick' if args.quick else 'full'} run, {kind})")
    print(
        f"  {n} signed SMS webhooks from {max(1, n // 20)} customers, {args.concurrency} at a time"
    )
    print(f"  direct AsyncConversations.apply:   {n / direct_s:>8,.0f} msg/s")
    print(
        f"  through uvicorn + FastAPI (HTTP):  {n / http_s:>8,.0f} req/s"
        f"  (503 answered and retried: {retried})"
    )
    print(
        f"  latency per webhook: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
        f"mean {statistics.fmean(latencies) * 1000:.1f} ms"
    )
    print(f"  ratio HTTP / direct: {direct_s / http_s:.2f}")


if __name__ == "__main__":
    main()
