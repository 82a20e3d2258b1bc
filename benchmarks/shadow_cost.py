"""What a shadow candidate costs classification throughput, measured on one running server whose
candidates come and go between phases, so that every ratio compares phases minutes apart on the
same process (capture_cost.py's separate servers differ by more than the effect: two identical
1,000-task servers started one after the other gave 10.1 and 12.2 requests/s):

    python benchmarks/shadow_cost.py --artifact runs/sentiment --tasks 1000 --seconds 20 --threads 2

One server with ``--tasks`` tasks and ``--capture`` (a fresh SQLite file). ``--clients``
closed-loop clients classify 2 texts each with a random task for ``--seconds`` per phase, in the
order of ``--phases``: ``none`` (no candidate), ``one`` (a shadow candidate, share 0, on the first
task; posted before the phase, dropped after) and ``every`` (a shadow candidate on every task).
Each ``one``/``every`` phase is divided by the mean of the ``none`` phases just before and after it;
the report gives each such ratio and their median. Posting and dropping are not timed into any
phase. Prints a table and writes benchmarks/results/shadow_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from capture_cost import POSTERS, FlaggedServer, post_candidates
from served import prompts_dir
from server_load import classify_load_flags, client_loop, summary, write_results

RESULTS = Path(__file__).parent / "results"
TARGETS = {"one": 0.95, "every": 0.5}  # the issue's: one shadow of many costs nothing; every task's, its rows


async def drop_candidates(client: httpx.AsyncClient, names: list[str]) -> float:
    limit = asyncio.Semaphore(POSTERS)

    async def one(name: str) -> None:
        async with limit:
            answer = await client.delete(f"/v1/tasks/{name}/candidate")
            answer.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(name) for name in names))
    return time.perf_counter() - started


async def phases(args: argparse.Namespace, base: str, incoming: Path) -> list[dict]:
    limits = httpx.Limits(max_connections=max(args.clients, POSTERS))
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        tasks = [t["name"] for t in (await client.get("/v1/tasks")).json()["tasks"]]
        done: list[dict] = []
        for kind in args.phases.split(","):
            shadowed = {"none": [], "one": tasks[:1], "every": tasks}[kind]
            posted = await post_candidates(client, shadowed, incoming) if shadowed else {}
            log: list = []
            until = time.perf_counter() + args.seconds
            await asyncio.gather(
                *(client_loop(client, tasks, until, i, log, texts=(2, 2)) for i in range(args.clients))
            )
            result = {"phase": kind, **summary(log, args.seconds), **posted}
            if shadowed:
                result["dropping_s"] = await drop_candidates(client, shadowed)
            print(f"{kind}: {result['requests_per_second']:.2f} requests/s, statuses {result['statuses']}", flush=True)
            done.append(result)
    return done


def ratios(done: list[dict]) -> dict[str, list[float]]:
    """Each shadowed phase over the mean of the ``none`` phases beside it."""
    out: dict[str, list[float]] = {kind: [] for kind in TARGETS}
    for i, phase in enumerate(done):
        if phase["phase"] == "none":
            continue
        beside = [
            done[j]["requests_per_second"] for j in (i - 1, i + 1) if 0 <= j < len(done) and done[j]["phase"] == "none"
        ]
        if beside:
            out[phase["phase"]].append(phase["requests_per_second"] / statistics.mean(beside))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classify_load_flags(parser)
    parser.add_argument("--phases", default="none,one,none,one,none,every,none,every,none")
    parser.add_argument("--out", default=str(RESULTS / "shadow_cost.json"))
    args = parser.parse_args()
    if not set(args.phases.split(",")) <= {"none", *TARGETS}:
        parser.error("--phases: a comma list of none, one and every")
    with tempfile.TemporaryDirectory() as tmp:
        served = prompts_dir(Path(args.artifact), args.tasks, Path(tmp))
        incoming = served / ".incoming" / "v2"  # under the served folder: a POST may name it; not a task
        shutil.copytree(args.artifact, incoming, ignore=shutil.ignore_patterns("checkpoint*", "*.png"))
        server = FlaggedServer(args, served, ["--capture", str(Path(tmp) / "capture.db")])
        try:
            done = asyncio.run(phases(args, server.base, incoming))
            memory = server.rss_mb()
        finally:
            server.close()
    report(args, {"setting": vars(args), "phases": done, "ready_s": server.ready_s, **memory})


def report(args: argparse.Namespace, results: dict) -> None:
    print(f"\n{args.tasks:,} tasks, capture on, {args.clients} clients x 2 texts, {args.seconds:g} s per phase\n")
    print("| phase | req/s | p50 ms | p99 ms | non-200 | candidates posted in | dropped in |")
    print("|---|---|---|---|---|---|---|")
    for n, p in enumerate(results["phases"], 1):
        non_200 = sum(count for status, count in p["statuses"].items() if status != "200")
        posted = f"{p['posting_s']:.1f} s" if "posting_s" in p else "-"
        dropped = f"{p['dropping_s']:.1f} s" if "dropping_s" in p else "-"
        print(
            f"| {n}. {p['phase']} | {p['requests_per_second']:.2f} | {p['p50_ms']:.0f} | {p['p99_ms']:.0f} | "
            f"{non_200} | {posted} | {dropped} |"
        )
    results["ratios"] = {}
    print()
    for kind, measured in ratios(results["phases"]).items():
        if measured:
            middle = statistics.median(measured)
            results["ratios"][kind] = {"each": measured, "median": middle, "target": TARGETS[kind]}
            verdict = "PASS" if middle >= TARGETS[kind] else "MISS"
            shown = ", ".join(f"{r:.2f}x" for r in measured)
            print(
                f"shadow on {kind} task(s) / none: {shown}; median {middle:.2f}x (target >= {TARGETS[kind]}x) {verdict}"
            )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
