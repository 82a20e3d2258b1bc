"""Plain `softprompt serve` against the same server on Ray Serve (`serve --ray`), on the same
classification load, one server at a time, in one run:

    python benchmarks/ray_serving.py --artifact runs/sentiment --tasks 1000 --seconds 20 --clients 16

Runs: 1. `softprompt serve` with ``--threads`` torch threads; 2. `serve --ray --replicas 1` with
the same threads (what Ray's proxy and its hop to the replica cost); 3. `serve --ray --replicas 2`
with half the threads each (on a 2-core machine this shows what routing over replicas costs, not
scaling: the two replicas share the same cores). ``--clients`` closed-loop clients classify 2 texts
each with a random task for ``--seconds``. Prints a table and the ratios, writes
benchmarks/results/ray_serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from capture_cost import FlaggedServer
from served import prompts_dir
from server_load import classify_load_flags, client_loop, summary, write_results

RESULTS = Path(__file__).parent / "results"
REPLICA_HEADER = "x-softprompt-replica"
RUNS = {  # name: (serve flags, threads per process or replica as a share of --threads)
    "plain": ([], 1.0),
    "ray, 1 replica": (["--ray", "--replicas", "1"], 1.0),
    "ray, 2 replicas": (["--ray", "--replicas", "2"], 0.5),
}


async def load(base: str, tasks: list[str], args: argparse.Namespace) -> dict:
    log: list = []
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        until = time.perf_counter() + args.seconds
        await asyncio.gather(*(client_loop(client, tasks, until, i, log, texts=(2, 2)) for i in range(args.clients)))
        replicas = {(await client.get("/healthz")).headers.get(REPLICA_HEADER) for _ in range(20)}
    return {**summary(log, args.seconds), "replicas_answering": len(replicas - {None})}


def run(args: argparse.Namespace, name: str, served: Path) -> dict:
    flags, share = RUNS[name]
    settings = copy.copy(args)
    settings.threads = max(1, int(args.threads * share))
    server = FlaggedServer(settings, served, flags)
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks", timeout=60).json()["tasks"]]
        result = asyncio.run(load(server.base, tasks, args))
    finally:
        server.close()
    result |= {"ready_s": server.ready_s, "threads_each": settings.threads, "tasks": len(tasks)}
    result["non_200"] = sum(n for status, n in result["statuses"].items() if status != "200")
    print(f"{name}: {result['requests_per_second']:.2f} requests/s, p50 {result['p50_ms']:.0f} ms", flush=True)
    return result


def parsed(out: str) -> argparse.Namespace:
    """The flags of a many-task classification load on Ray (this script, ray_routing.py)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    classify_load_flags(parser)
    parser.add_argument("--out", default=str(RESULTS / out))
    return parser.parse_args()


def each_run(args: argparse.Namespace, runs: dict[str, Callable[[Path], dict]]) -> dict:
    """``{"setting", "runs": {name: run(folder)}}``, the folder holding ``args.tasks`` copies of
    ``args.artifact`` as tasks."""
    results: dict = {"setting": vars(args), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        served = prompts_dir(Path(args.artifact), args.tasks, Path(tmp))
        for name, run_one in runs.items():
            results["runs"][name] = run_one(served)
    return results


def main() -> None:
    args = parsed("ray_serving.json")
    report(args, each_run(args, {name: lambda served, name=name: run(args, name, served) for name in RUNS}))


def report(args: argparse.Namespace, results: dict) -> None:
    runs = results["runs"]
    print(f"\n{args.tasks:,} tasks, {args.clients} clients x 2 texts, {args.seconds:g} s per run\n")
    print("| run | threads each | replicas answering | req/s | p50 ms | p99 ms | non-200 | ready s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['threads_each']} | {r['replicas_answering'] or 1} | {r['requests_per_second']:.2f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['non_200']} | {r['ready_s']:.1f} |"
        )
    plain, one, two = (runs[name] for name in RUNS)
    results["ratios"] = {
        "ray 1 replica / plain": one["requests_per_second"] / plain["requests_per_second"],
        "ray 1 replica p50 - plain p50 (ms)": one["p50_ms"] - plain["p50_ms"],
        "ray 2 replicas / ray 1 replica": two["requests_per_second"] / one["requests_per_second"],
    }
    print()
    for what, value in results["ratios"].items():
        print(f"{what}: {value:.2f}")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
