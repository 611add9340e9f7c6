"""`make bench-api`: the prediction API under open-loop load on loopback, as a client meets it.

Starts `engagement-dagster serve` (one uvicorn worker) on a free port over the registry of the local
lake, then:

- cold start: process start to the first answered `POST /predict`;
- cache misses: `--rate` requests a second for `--seconds`, each a different customer of the lake's
  latest week, sent on a fixed schedule whatever the answers do (open loop: a slow answer does not
  slow the load down, so queueing shows in the latencies instead of hiding);
- cache hits: the same customers again, same rate;
- batches of 1,000 customers, one at a time.

Latency is reported twice: server-side (the `latency_ms` the API measures from the request's
validation to its answer) and client-side (from the scheduled send time to the last byte).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engagement_dagster.core.settings import PROJECT_ROOT, lake_dir

BENCH_KEY = "bench-api-key"


def as_request(frame) -> list[dict]:
    """Rows of raw customers as a client sends them: exact floats (JSON round-trips a Python float),
    dates as YYYY-MM-DD, nulls as null; only the fields the API takes."""
    import math

    from engagement_dagster.api.schema import CustomerRecord

    def plain(value):
        value = value.item() if hasattr(value, "item") else value
        if hasattr(value, "isoformat"):
            return value.isoformat()[:10]
        return None if isinstance(value, float) and math.isnan(value) else value

    fields = [name for name in CustomerRecord.model_fields if name in frame.columns]
    return [{name: plain(value) for name, value in zip(fields, row, strict=True)}
            for row in frame[fields].itertuples(index=False)]


def customer_records(lake: Path, limit: int | None = None, week: str | None = None) -> tuple[str, list[dict]]:
    """Raw customers of a week of the lake (default the latest), as the API takes them."""
    import pandas as pd

    weeks = sorted((lake / "raw" / "customers").glob("snapshot_week=*"))
    if week is not None:
        weeks = [w for w in weeks if w.name == f"snapshot_week={week}"]
    if not weeks:
        raise SystemExit(f"no raw snapshot under {lake}/raw/customers: run `make run` first")
    week = weeks[-1].name.split("=", 1)[1]
    frame = pd.concat(pd.read_parquet(p) for p in sorted(weeks[-1].glob("*.parquet")))
    return week, as_request(frame if limit is None else frame.head(limit))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "ENGAGEMENT_API_KEYS": BENCH_KEY, "ENGAGEMENT_API_CACHE": "memory"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engagement_dagster.cli", "serve", "--port", str(port)],
                               cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, started


def first_answer(port: int, body: bytes, started: float, timeout: float = 120.0) -> float:
    """Seconds from the server process's start to its first answered prediction."""
    import httpx

    deadline = started + timeout
    while time.perf_counter() < deadline:
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/predict", content=body, timeout=5,
                                  headers={"x-api-key": BENCH_KEY, "content-type": "application/json"})
            if response.status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise SystemExit("the API did not answer within 120 s")


async def open_loop(port: int, bodies: list[bytes], rate: float) -> dict:
    """Sends `bodies` at `rate` a second on a fixed schedule; the latencies and errors."""
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    server, client, errors, cached = [], [], 0, 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10,
                                 headers={"x-api-key": BENCH_KEY, "content-type": "application/json"}) as http:
        start = time.perf_counter() + 0.05

        async def one(i: int, body: bytes):
            nonlocal errors, cached
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                response = await http.post("/predict", content=body)
            except httpx.HTTPError:
                errors += 1
                return
            client.append((time.perf_counter() - due) * 1000)
            if response.status_code != 200:
                errors += 1
                return
            answer = response.json()
            server.append(answer["latency_ms"])
            cached += bool(answer["cached"])

        await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))
    return {"server": server, "client": client, "errors": errors, "cached": cached, "sent": len(bodies)}


def percentiles(values: list[float]) -> str:
    if not values:
        return "– | – | –"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"{p50:.2f} | {p95:.2f} | {p99:.2f}"


def batch_latency(port: int, records: list[dict], week: str, repeat: int) -> tuple[list[float], list[float], int]:
    import httpx

    server, client, errors = [], [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"x-api-key": BENCH_KEY, "content-type": "application/json"}) as http:
        for i in range(repeat):
            # A different week each time: different features, so every batch is computed, never cached.
            body = json.dumps({"customers": records, "snapshot_week": f"2030-01-{i + 1:02d}"}).encode()
            started = time.perf_counter()
            response = http.post("/predict/batch", content=body)
            client.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1
                continue
            server.append(response.json()["latency_ms"])
    return server, client, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.api.bench")
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--batch", type=int, default=1000, help="customers per batch request (default 1000)")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)

    count = int(args.rate * args.seconds)
    week, records = customer_records(lake_dir(), max(count, args.batch))
    bodies = [json.dumps({**r, "snapshot_week": week}).encode() for r in records[:count]]
    port = free_port()
    process, started = start_server(port)
    try:
        cold = first_answer(port, bodies[0], started)
        # The first customer is cached now: the miss phase starts from the second.
        misses = asyncio.run(open_loop(port, bodies[1:], args.rate))
        hits = asyncio.run(open_loop(port, bodies[1:], args.rate))
        batch_server, batch_client, batch_errors = batch_latency(port, records[: args.batch], week, args.batches)
    finally:
        process.terminate()
        process.wait(timeout=30)

    cores = os.cpu_count()
    print(f"machine: {cores} cores; one uvicorn worker; load generator on the same machine, loopback")
    print(f"customers of week {week} from {lake_dir()}; open loop at {args.rate:g} requests/s for {args.seconds:g} s")
    print()
    print("| phase | requests | errors | cached | server p50 ms | p95 | p99 | client p50 ms | p95 | p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, phase in (("cache miss", misses), ("cache hit", hits)):
        print(f"| {name} | {phase['sent']} | {phase['errors']} | {phase['cached']} | "
              f"{percentiles(phase['server'])} | {percentiles(phase['client'])} |")
    print(f"| batch of {args.batch} | {args.batches} | {batch_errors} | 0 | {percentiles(batch_server)} | "
          f"{percentiles(batch_client)} |")
    print()
    print(f"cold start (process start to the first answered prediction): {cold:.2f} s")
    return 0 if not (misses["errors"] or hits["errors"] or batch_errors) else 1


if __name__ == "__main__":
    sys.exit(main())
