"""The server under load: a bounded load generator against ``softprompt serve`` on 127.0.0.1.

    python benchmarks/server_load.py --artifacts DIR --clients 32 --seconds 120 --queue-size 64

Phase 1: ``--clients`` concurrent clients, each sending one classification request after the
other (a random task, 1-4 texts) for ``--seconds``: requests/s, p50/p99 latency, and every status.
Phase 2 (soak): as many clients for as long, mixing classification with generation, slow uploads,
clients that disconnect mid-generation, oversized bodies (413 expected) and a client without the
API key (401 expected): no request may be lost or fail other than those, and classification's
p99 latency is compared with phase 1's.
Phase 3: a burst of ``--burst`` requests at once, beyond the queue: some are refused with 429,
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


def classify_load_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a many-task classification load (serving.py, capture_cost.py)."""
    parser.add_argument("--artifact", required=True, help="a classification artifact (e.g. runs/sentiment)")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-cache-mb", type=float, help="the server's --prompt-cache-mb (default: its own)")
    parser.add_argument("--prompt-cache-dtype", help="the server's --prompt-cache-dtype (default: its own)")


TEXTS = ["a great movie", "dull and far too long", "the cast shines", "I want my money back", "fine, not great"]


def write_results(results: dict, out: str | Path) -> None:
    """Write a benchmark's results as JSON at ``out`` (its folder made) and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client_loop(
    client: httpx.AsyncClient, tasks: list[str], until: float, seed: int, log: list, texts: tuple[int, int] = (1, 4)
) -> None:
    """Classify one request after the other until ``until``: a random task, ``texts`` (fewest,
    most) texts each; every status and latency goes to ``log``."""
    rng = random.Random(seed)
    while time.perf_counter() < until:
        body = {"task": rng.choice(tasks), "texts": rng.sample(TEXTS, rng.randint(*texts))}
        start = time.perf_counter()
        try:
            status = (await client.post("/v1/classify", json=body)).status_code
        except httpx.HTTPError as exc:
            status = f"error: {type(exc).__name__}"
        log.append((status, time.perf_counter() - start))


def wait_until_ready(base: str, seconds: float = 600) -> float:
    """Poll ``/healthz`` until the server answers; the seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return time.perf_counter() - started


def summary(log: list, seconds: float) -> dict:
    ok = sorted(latency for status, latency in log if status == 200)
    return {
        "requests": len(log),
        "statuses": dict(Counter(str(status) for status, _ in log)),
        "requests_per_second": len(ok) / seconds,
        "p50_ms": 1000 * statistics.median(ok) if ok else None,
        "p99_ms": 1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
    }


async def load(base: str, tasks: list[str], clients: int, seconds: float, headers: dict) -> dict:
    log: list = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, headers=headers) as client:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(client, tasks, until, i, log) for i in range(clients)))
    return summary(log, seconds)


async def timed(log: list, request) -> None:
    start = time.perf_counter()
    try:
        status = (await request).status_code
    except httpx.TimeoutException:
        status = "disconnected"  # the client gave up on purpose
    except httpx.HTTPError as exc:
        status = f"error: {type(exc).__name__}"
    log.append((status, time.perf_counter() - start))


async def slow_body(body: dict):
    """An upload that trickles in over about a second."""
    data = json.dumps(body).encode()
    for i in range(0, len(data), max(1, len(data) // 3)):
        await asyncio.sleep(0.3)
        yield data[i : i + max(1, len(data) // 3)]


async def soak(base: str, tasks: list[str], clients: int, seconds: float, key: str) -> dict:
    """Phase 2: classification clients beside generation, slow, disconnecting, oversized and
    unauthorised ones; every kind keeps its own log."""
    headers = {"Authorization": f"Bearer {key}"}
    logs: dict[str, list] = {kind: [] for kind in ("classify", "generate", "slow", "disconnect", "oversized", "no_key")}
    until = time.perf_counter() + seconds
    roles = ["generate"] * 4 + ["slow"] * 2 + ["disconnect", "oversized", "no_key"]
    roles += ["classify"] * max(1, clients - len(roles))
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, headers=headers) as client:

        async def role_loop(role: str, seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < until:
                body = {"task": rng.choice(tasks), "texts": rng.sample(TEXTS, rng.randint(1, 4))}
                if role == "classify":
                    request = client.post("/v1/classify", json=body)
                elif role == "generate":
                    gen = {"prompt": rng.choice(TEXTS), "max_new_tokens": 48, "samples": 2, "seed": seed}
                    request = client.post("/v1/generate", json=gen)
                elif role == "slow":
                    slow_headers = {"content-type": "application/json"}
                    request = client.post("/v1/classify", content=slow_body(body), headers=slow_headers)
                elif role == "disconnect":
                    gen = {"prompt": rng.choice(TEXTS), "max_new_tokens": 256}
                    request = client.post("/v1/generate", json=gen, timeout=0.5)
                elif role == "oversized":
                    request = client.post("/v1/classify", json={"task": body["task"], "texts": ["x" * 3_000_000]})
                else:
                    request = client.post("/v1/classify", json=body, headers={"Authorization": "Bearer wrong"})
                await timed(logs[role], request)
                if role in ("oversized", "no_key", "disconnect"):
                    await asyncio.sleep(1.0)  # now and then, not a flood

        await asyncio.gather(*(role_loop(role, i) for i, role in enumerate(roles)))
    expected = {"oversized": {"413"}, "no_key": {"401"}, "disconnect": {"disconnected", "200"}}
    result = {kind: summary(log, seconds) for kind, log in logs.items()}
    failed = {
        kind: {s: n for s, n in r["statuses"].items() if s not in expected.get(kind, {"200"})}
        for kind, r in result.items()
    }
    return {"by_kind": result, "unexpected": {k: v for k, v in failed.items() if v}}


async def burst(base: str, tasks: list[str], count: int, headers: dict) -> dict:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits, headers=headers) as client:

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
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--burst", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--soak", action="store_true", help="also run phase 2 (mixed, slow, disconnecting clients)")
    parser.add_argument("--out", default=str(RESULTS / "server_load.json"))
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "softprompt", "serve", "--backbone", args.backbone, "--artifacts", args.artifacts]
    command += ["--port", str(port), "--queue-size", str(args.queue_size), "--threads", str(args.threads)]
    key = "benchmark-key"
    command += ["--api-key", key]
    headers = {"Authorization": f"Bearer {key}"}
    server = subprocess.Popen(command)
    try:
        wait_until_ready(base)
        listing = httpx.get(f"{base}/v1/tasks", headers=headers).json()
        tasks = [t["name"] for t in listing["tasks"] if t["kind"] == "classify"]
        steady = asyncio.run(load(base, tasks, args.clients, args.seconds, headers))
        mixed = asyncio.run(soak(base, tasks, args.clients, args.seconds, key)) if args.soak else None
        spike = asyncio.run(burst(base, tasks, args.burst, headers))
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
    if mixed:
        for kind, r in mixed["by_kind"].items():
            p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
            p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] is not None else "-"
            print(
                f"| soak: {kind} | {r['requests']} | {r['statuses']} | {r['requests_per_second']:.1f} | {p50} | {p99} |"
            )
    print(f"| burst of {spike['sent']} | {spike['sent']} | {spike['statuses']} | | | |")
    if mixed:
        ratio = mixed["by_kind"]["classify"]["p99_ms"] / steady["p99_ms"]
        mixed["classify_p99_ratio"] = ratio
        print(f"\nsoak: classify p99 {ratio:.2f}x its p99 without generation (target < 3x)")
        print(f"soak: unexpected statuses (lost or failed requests): {mixed['unexpected'] or 'none'}")
    print(f"\nafter the burst a request got {spike['after']} ({spike['seconds']:.1f} s for the burst)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "setting": setting,
                "tasks": tasks,
                "skipped": listing["skipped"],
                "steady": steady,
                "soak": mixed,
                "burst": spike,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
