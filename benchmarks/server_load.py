"""The server under load: a bounded load generator against ``softprompt serve`` on 127.0.0.1.

    python benchmarks/server_load.py --prompts DIR --clients 32 --seconds 120 --queue-size 64

Phase 1: ``--clients`` concurrent clients, each sending one classification request after the
other (a random task, 1-4 texts) for ``--seconds``: requests/s, p50/p99 latency, and every status.
Phase 2: a burst of ``--burst`` requests at once, beyond the queue: some are refused with 429,
none hang or fail otherwise, and a request after the burst is answered (recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
TEXTS = ["a great movie", "dull and far too long", "the cast shines", "I want my money back", "fine, not great"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client_loop(client: httpx.AsyncClient, tasks: list[str], until: float, seed: int, log: list) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < until:
        body = {"task": rng.choice(tasks), "texts": rng.sample(TEXTS, rng.randint(1, 4))}
        start = time.perf_counter()
        try:
            status = (await client.post("/v1/classify", json=body)).status_code
        except httpx.HTTPError as exc:
            status = f"error: {type(exc).__name__}"
        log.append((status, time.perf_counter() - start))


async def load(base: str, tasks: list[str], clients: int, seconds: float) -> dict:
    log: list = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(client, tasks, until, i, log) for i in range(clients)))
    ok = sorted(latency for status, latency in log if status == 200)
    return {
        "requests": len(log),
        "statuses": dict(Counter(str(status) for status, _ in log)),
        "requests_per_second": len(ok) / seconds,
        "p50_ms": 1000 * statistics.median(ok) if ok else None,
        "p99_ms": 1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
    }


async def burst(base: str, tasks: list[str], count: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=count)) as client:

        async def one(i: int):
            try:
                return (
                    await client.post("/v1/classify", json={"task": tasks[i % len(tasks)], "texts": TEXTS})
                ).status_code
            except httpx.HTTPError as exc:
                return f"error: {type(exc).__name__}"

        start = time.perf_counter()
        statuses = await asyncio.gather(*(one(i) for i in range(count)))
        seconds = time.perf_counter() - start
        after = (await client.post("/v1/classify", json={"task": tasks[0], "texts": ["recovered?"]})).status_code
    return {"sent": count, "statuses": dict(Counter(str(s) for s in statuses)), "seconds": seconds, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--burst", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "server_load.json"))
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "softprompt", "serve", "--backbone", args.backbone, "--prompts", args.prompts]
    command += ["--port", str(port), "--queue-size", str(args.queue_size), "--threads", str(args.threads)]
    server = subprocess.Popen(command)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        listing = httpx.get(f"{base}/v1/tasks").json()
        tasks = [t["name"] for t in listing["tasks"] if t["kind"] == "classify"]
        steady = asyncio.run(load(base, tasks, args.clients, args.seconds))
        spike = asyncio.run(burst(base, tasks, args.burst))
    finally:
        server.terminate()
        server.wait(timeout=60)
    setting = (
        f"{args.backbone}, {len(tasks)} classification tasks, {args.clients} clients for {args.seconds:.0f} s, "
        f"queue {args.queue_size}, {args.threads} threads"
    )
    print(f"\n{setting}\n")
    print("| phase | requests | statuses | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    print(
        f"| steady | {steady['requests']} | {steady['statuses']} | {steady['requests_per_second']:.1f} | "
        f"{steady['p50_ms']:.0f} | {steady['p99_ms']:.0f} |"
    )
    print(f"| burst of {spike['sent']} | {spike['sent']} | {spike['statuses']} | | | |")
    print(f"\nafter the burst a request got {spike['after']} ({spike['seconds']:.1f} s for the burst)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"setting": setting, "tasks": tasks, "skipped": listing["skipped"], "steady": steady, "burst": spike},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
