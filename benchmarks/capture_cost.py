"""What keeping every answer, and checking a candidate in the shadow of the live version, costs
classification throughput: the same load as serving.py's classify phase, side by side in one run,
one server at a time (``softprompt serve`` on 127.0.0.1):

    python benchmarks/capture_cost.py --artifact runs/sentiment --tasks 1000 --seconds 30 --threads 2

``--clients`` closed-loop clients classify 2 texts each with a random served task for
``--seconds`` against six servers: 1. one task without capture; 2. one task with ``--capture``
(a fresh SQLite file); 3. ``--tasks`` tasks without capture; 4. ``--tasks`` tasks with capture;
5. as 4 with a shadow candidate (a second copy of the artifact, share 0) on the first task;
6. as 4 with a shadow candidate on every task (how long posting them took is reported). A shadow
runs each request of its task twice in the same batch, so 6 pays for every row twice; the others
should cost next to nothing. Each run reports requests/s, p50/p99 latency, its non-200 answers
(none expected), the server's peak resident memory and, with capture, the rows in the store: every
answered request must be there, one served row per text (and one shadow row per text of a
shadowed task). ``--only 4,6`` reruns some of them; a ratio is printed when both its runs ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from served import Server, prompts_dir
from server_load import classify_load_flags, client_loop, free_port, summary, wait_until_ready

RESULTS = Path(__file__).parent / "results"
TEXTS_PER_REQUEST = 2
POSTERS = 8  # candidates posted at once in run 6

# number: (tasks: "1" or "N", capture, shadows: "none", "one" or "every")
CONFIGS = {
    1: ("1", False, "none"),
    2: ("1", True, "none"),
    3: ("N", False, "none"),
    4: ("N", True, "none"),
    5: ("N", True, "one"),
    6: ("N", True, "every"),
}
# (measured, against, what, target): throughput of run ``measured`` over run ``against``
RATIOS = (
    (2, 1, "capture on/off, 1 task", 0.95),
    (4, 3, "capture on/off, N tasks", 0.95),
    (5, 4, "one shadow of N vs none (capture on)", 0.95),
    (6, 4, "a shadow on every task vs none (capture on)", 0.5),
)


class FlaggedServer(Server):
    """serving.py's :class:`Server` started with serve flags of its own (``--capture DB``), which
    its constructor cannot pass; memory, batch rows and closing are its."""

    def __init__(self, args: argparse.Namespace, served: Path, flags: list[str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "softprompt", "serve", "--backbone", args.backbone, "--artifacts", str(served)]
        command += ["--port", str(self.port), "--threads", str(args.threads), "--queue-size", "256", *flags]
        if args.prompt_cache_mb is not None:
            command += ["--prompt-cache-mb", str(args.prompt_cache_mb)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        started = time.perf_counter()  # loading included; a server that dies is not waited for
        while self.process.poll() is None and time.perf_counter() - started < 600:
            if wait_until_ready(self.base, seconds=2) < 2:  # /healthz answered within this poll
                break
        self.ready_s = time.perf_counter() - started
        if self.process.poll() is not None:
            raise RuntimeError(f"softprompt serve exited with {self.process.returncode}: {' '.join(command)}")


async def post_candidates(client: httpx.AsyncClient, names: list[str], path: Path) -> dict:
    """A shadow candidate (``path``, share 0) on each of ``names``, ``POSTERS`` at a time."""
    statuses: list = []
    limit = asyncio.Semaphore(POSTERS)

    async def one(name: str) -> None:
        async with limit:
            answer = await client.post(f"/v1/tasks/{name}/candidate", json={"path": str(path), "share": 0.0})
            statuses.append(answer.status_code)
            if answer.status_code != 200 and statuses.count(answer.status_code) == 1:
                print(f"POST /v1/tasks/{name}/candidate: {answer.status_code} {answer.text[:300]}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(one(name) for name in names))
    return {
        "candidates": len(names),
        "posting_s": time.perf_counter() - started,
        "candidate_statuses": {str(k): n for k, n in Counter(statuses).items()},
    }


def stored_rows(db: Path, shadowed: list[str]) -> dict:
    """The store's rows after the server stopped: served and shadow ones, and the served ones of
    the shadowed tasks (what the shadow rows should match)."""
    with sqlite3.connect(db) as store:

        def count(where: str, *values: str) -> int:
            return store.execute(f"select count(*) from requests where {where}", values).fetchone()[0]

        served = count("role = 'served'")
        shadow = count("role = 'shadow'")
        if len(shadowed) == 1:
            of_shadowed = count("role = 'served' and task = ?", shadowed[0])
        else:
            of_shadowed = served if shadowed else 0
    return {"served_rows": served, "shadow_rows": shadow, "served_rows_of_shadowed_tasks": of_shadowed}


def run_config(args: argparse.Namespace, number: int, root: Path) -> dict:
    count, capture, shadows = CONFIGS[number]
    work = root / f"run{number}"
    served = prompts_dir(Path(args.artifact), 1 if count == "1" else args.tasks, work)
    flags: list[str] = []
    db = work / "capture.db"
    if capture:
        flags += ["--capture", str(db)]
    incoming = served / ".incoming" / "v2"  # under the served folder: a POST may name it; not a task
    if shadows != "none":
        shutil.copytree(args.artifact, incoming, ignore=shutil.ignore_patterns("checkpoint*", "*.png"))
    server = FlaggedServer(args, served, flags)
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks").json()["tasks"]]
        shadowed = {"none": [], "one": tasks[:1], "every": tasks}[shadows]

        async def run() -> dict:
            log: list = []
            limits = httpx.Limits(max_connections=max(args.clients, POSTERS))
            async with httpx.AsyncClient(base_url=server.base, timeout=300, limits=limits) as client:
                posted = await post_candidates(client, shadowed, incoming) if shadowed else {}
                until = time.perf_counter() + args.seconds
                await asyncio.gather(
                    *(client_loop(client, tasks, until, i, log, texts=(2, 2)) for i in range(args.clients))
                )
                if shadows == "one":
                    described = (await client.get(f"/v1/tasks/{tasks[0]}")).json()
                    posted["compared"] = (described.get("candidate") or {}).get("compared")
            return {**summary(log, args.seconds), **posted}

        result = asyncio.run(run())
        result |= {**server.rss_mb(), **server.batch_rows(), "ready_s": server.ready_s, "tasks": len(tasks)}
    finally:
        server.close()
    result |= {"capture": capture, "shadows": shadows, "shadowed_tasks": len(shadowed)}
    result["non_200"] = sum(n for status, n in result["statuses"].items() if status != "200")
    if capture:
        result |= stored_rows(db, shadowed)
        answered = result["statuses"].get("200", 0)
        result["all_answers_captured"] = result["served_rows"] == TEXTS_PER_REQUEST * answered
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classify_load_flags(parser)
    parser.add_argument("--only", help="a comma list of the runs to do (1-6; default: all)")
    parser.add_argument("--out", default=str(RESULTS / "capture_cost.json"))
    args = parser.parse_args()
    chosen = sorted(CONFIGS) if not args.only else sorted({int(n) for n in args.only.split(",") if n.strip()})
    if not set(chosen) <= set(CONFIGS):
        parser.error(f"--only: runs are numbered 1-{len(CONFIGS)}, got {args.only}")
    results: dict = {"setting": vars(args), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for number in chosen:
            results["runs"][str(number)] = run_config(args, number, Path(tmp))
    report(args, results)


def describe(args: argparse.Namespace, number: int) -> str:
    count, capture, shadows = CONFIGS[number]
    tasks = "1 task" if count == "1" else f"{args.tasks:,} tasks"
    shadow = {"none": "", "one": ", shadow on 1 task", "every": ", shadow on every task"}[shadows]
    return f"{number}. {tasks}, capture {'on' if capture else 'off'}{shadow}"


def report(args: argparse.Namespace, results: dict) -> None:
    runs = results["runs"]
    print(
        f"\n{args.backbone}, {args.clients} clients x {TEXTS_PER_REQUEST} texts, {args.seconds:g} s per run, "
        f"--threads {args.threads}\n"
    )
    print("| run | req/s | p50 ms | p99 ms | non-200 | served rows (2 x 200s) | shadow rows | peak RSS MB | ready s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in runs.items():
        rows, shadow_rows = "-", "-"
        if r["capture"]:
            rows = f"{r['served_rows']:,} ({TEXTS_PER_REQUEST * r['statuses'].get('200', 0):,})"
            rows += "" if r["all_answers_captured"] else " MISSING"
            if r["shadows"] != "none":
                shadow_rows = f"{r['shadow_rows']:,} of {r['served_rows_of_shadowed_tasks']:,}"
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] is not None else "-"
        print(
            f"| {describe(args, int(key))} | {r['requests_per_second']:.1f} | {p50} | {p99} | {r['non_200']} | "
            f"{rows} | {shadow_rows} | {r['peak_rss_mb']:.0f} | {r['ready_s']:.1f} |"
        )
    for key, r in runs.items():
        if r["shadows"] != "none":
            compared = f"; GET /v1/tasks/NAME then showed candidate.compared {r['compared']}" if "compared" in r else ""
            print(
                f"\nrun {key}: {r['candidates']:,} shadow candidate(s) posted in {r['posting_s']:.1f} s "
                f"({POSTERS} at a time; statuses {r['candidate_statuses']}){compared}"
            )
    results["ratios"] = {}
    print()
    for measured, against, what, target in RATIOS:
        if str(measured) in runs and str(against) in runs:
            ratio = runs[str(measured)]["requests_per_second"] / runs[str(against)]["requests_per_second"]
            passed = ratio >= target
            results["ratios"][what] = {"runs": [measured, against], "ratio": ratio, "target": target, "pass": passed}
            verdict = "PASS" if passed else "MISS"
            print(f"{what} (run {measured} / run {against}): {ratio:.2f}x (target >= {target:g}x) {verdict}")
    failed = [key for key, r in runs.items() if r["non_200"] or not r.get("all_answers_captured", True)]
    print(f"runs with non-200 answers or uncaptured ones: {', '.join(failed) if failed else 'none'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
