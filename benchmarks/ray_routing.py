"""Prompt-cache hit rate on `serve --ray --replicas 2` with requests routed by task against spread at
random, in one run:

    python benchmarks/ray_routing.py --artifact runs/sentiment --tasks 1000 --seconds 120 --prompt-cache-mb 200

Each mode starts its own 2-replica application (1 thread each), whose replicas keep prompt caches
up to ``--prompt-cache-mb`` each: less than every task's (about 0.37 MB per task on SmolLM2), so
the two replicas' caches hold every task only if each replica serves its own share of them.
``routed``: every request names its task in ``serve_multiplexed_model_id`` (Ray's
``serve.multiplexed``), so a task's requests go to the replica that took its first one; ``random``:
no header, so Ray's router spreads requests by load alone. A warm-up sweep classifies every task
once (so that each has a replica), then ``--clients`` clients classify a random task for
``--seconds``; the hit rate is the replicas' prompt-cache hits over hits and misses in that phase,
read from each replica's ``/metrics``. Prints a table, writes benchmarks/results/ray_routing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import re
import time
from pathlib import Path

import httpx

from capture_cost import FlaggedServer
from ray_serving import each_run, parsed
from server_load import TEXTS, summary, write_results

RESULTS = Path(__file__).parent / "results"
REPLICA_HEADER = "x-softprompt-replica"
ROUTING_HEADER = "serve_multiplexed_model_id"
COUNTER = re.compile(r'^softprompt_prompt_cache_(hits|misses)_total\{replica="([^"]+)"\} (\S+)$', re.M)


async def classify(client: httpx.AsyncClient, task: str, routed: bool) -> int | str:
    headers = {ROUTING_HEADER: task} if routed else {}
    body = {"task": task, "texts": random.sample(TEXTS, 2)}
    try:
        return (await client.post("/v1/classify", json=body, headers=headers)).status_code
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}"


async def cache_counters(client: httpx.AsyncClient, replicas: int = 2) -> dict[str, dict[str, float]]:
    """Each replica's prompt-cache hits and misses (``/metrics`` answers from one replica a time)."""
    seen: dict[str, dict[str, float]] = {}
    for _ in range(200):
        for kind, replica, value in COUNTER.findall((await client.get("/metrics")).text):
            seen.setdefault(replica, {})[kind] = float(value)
        if len(seen) >= replicas:
            return seen
    raise RuntimeError(f"/metrics answered from {len(seen)} replica(s) of {replicas}")


async def measure(base: str, tasks: list[str], routed: bool, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        pending = iter(tasks)

        async def sweep() -> None:  # every task once, so that each has a replica
            for task in pending:
                await classify(client, task, routed)

        started = time.perf_counter()
        await asyncio.gather(*(sweep() for _ in range(args.clients)))
        warm_s = time.perf_counter() - started
        await asyncio.sleep(3)  # Ray pushes which replica holds which task every few seconds
        before = await cache_counters(client)
        log: list = []
        until = time.perf_counter() + args.seconds

        async def loop(seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < until:
                start = time.perf_counter()
                status = await classify(client, rng.choice(tasks), routed)
                log.append((status, time.perf_counter() - start))

        await asyncio.gather(*(loop(i) for i in range(args.clients)))
        after = await cache_counters(client)
    by_replica = {
        name: {kind: after[name][kind] - before.get(name, {}).get(kind, 0.0) for kind in ("hits", "misses")}
        for name in after
    }
    hits = sum(r["hits"] for r in by_replica.values())
    misses = sum(r["misses"] for r in by_replica.values())
    return {
        **summary(log, args.seconds),
        "warm_up_s": warm_s,
        "by_replica": by_replica,
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else None,
    }


def run(args: argparse.Namespace, served: Path, routed: bool) -> dict:
    settings = copy.copy(args)
    settings.threads = 1
    server = FlaggedServer(settings, served, ["--ray", "--replicas", "2"])
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks", timeout=60).json()["tasks"]]
        result = asyncio.run(measure(server.base, tasks, routed, args))
    finally:
        server.close()
    name = "routed" if routed else "random"
    print(f"{name}: hit rate {result['hit_rate']:.3f}, {result['requests_per_second']:.2f} requests/s", flush=True)
    return {**result, "ready_s": server.ready_s, "tasks": len(tasks)}


def main() -> None:
    args = parsed("ray_routing.json")
    results = each_run(
        args, {"random": lambda served: run(args, served, False), "routed": lambda s: run(args, s, True)}
    )
    runs = results["runs"]
    print(f"\n{args.tasks:,} tasks, 2 replicas x 1 thread, {args.prompt_cache_mb} MB of prompt caches each,")
    print(f"{args.clients} clients x 2 texts, {args.seconds:g} s after a warm-up sweep of every task\n")
    print("| routing | hits | misses | hit rate | req/s | p50 ms | p99 ms | non-200 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        non_200 = sum(n for status, n in r["statuses"].items() if status != "200")
        print(
            f"| {name} | {r['hits']:.0f} | {r['misses']:.0f} | {r['hit_rate']:.3f} | {r['requests_per_second']:.2f} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {non_200} |"
        )
    results["ratios"] = {
        "routed / random requests per second": (
            runs["routed"]["requests_per_second"] / runs["random"]["requests_per_second"]
        )
    }
    print(f"\nrouted / random requests per second: {results['ratios']['routed / random requests per second']:.2f}")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
