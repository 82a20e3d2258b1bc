"""10,000 tasks with and without a prompt-cache folder (``serve --prompt-cache-dir``).

    python benchmarks/cache_folder.py --artifact runs/sentiment --tasks 10000 --seconds 60 --threads 2

Each phase is one server, started alone, under the classification load of benchmarks/serving.py
(``--clients`` closed-loop clients classifying 2 texts each with a random task):

1. one task;
2. ``--tasks`` tasks with memory only (``--prompt-cache-mb``, the server's default): a task's
   cache is computed at its first request and again after each eviction;
3. the folder filled: a server given the folder and room in memory for every cache computes
   them all at start and writes them there (its time to ready is the fill time);
4. ``--tasks`` tasks restarted on that folder with the same memory budget as phase 2: a miss in
   memory reads the cache back instead of computing it.

The tasks are copies of the artifact, each moved by a tiny random amount, so that every task's
prompt (and so its cache in the folder) is its own. Prints the table of RESULTS.md and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from served import Server, prompts_dir
from server_load import classify_load_flags, write_results
from serving import RESULTS, classify


def fill(args: argparse.Namespace, folder: Path, cache_dir: Path) -> dict:
    """Phase 3: start a server that warms every task's cache into ``cache_dir``, then stop it."""
    filling = copy.copy(args)
    filling.prompt_cache_mb, filling.prompt_cache_dir = 10**6, cache_dir  # room for all: warmed at start
    server = Server(filling, folder)
    try:
        files = list(cache_dir.glob("*/*.safetensors"))
        size = sum(f.stat().st_size for f in files) / 2**20
        return {"fill_s": server.ready_s, "files": len(files), "folder_mb": size}
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classify_load_flags(parser)
    parser.add_argument("--out", default=str(RESULTS / "cache_folder.json"))
    args = parser.parse_args()
    args.prompt_cache_dir = None
    results: dict = {"setting": vars(args).copy()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one, many = prompts_dir(Path(args.artifact), 1, root), prompts_dir(Path(args.artifact), args.tasks, root)
        results["one_task"] = classify(args, one)
        results["memory_only"] = classify(args, many)
        cache_dir = root / "prompt-caches"
        results["fill"] = fill(args, many, cache_dir)
        args.prompt_cache_dir = cache_dir
        results["with_folder"] = classify(args, many)
    report(args, results)


def report(args: argparse.Namespace, results: dict) -> None:
    one = results["one_task"]
    print(f"\nclassify, {args.clients} clients x 2 texts, {args.seconds:g} s per phase, --threads {args.threads}")
    print("| phase | req/s | p50 | p99 | RSS | ready | throughput vs 1 task | p99 vs 1 task | RSS over 1 task |")
    print("|---|---|---|---|---|---|---|---|---|")
    results["ratios"] = {}
    for name, label in (
        ("one_task", "1 task"),
        ("memory_only", f"{args.tasks:,} tasks, memory only"),
        ("with_folder", f"{args.tasks:,} tasks, restarted on a filled --prompt-cache-dir"),
    ):
        r = results[name]
        ratios = {
            "throughput": r["requests_per_second"] / one["requests_per_second"],
            "p99": r["p99_ms"] / one["p99_ms"],
            "rss_over_mb": r["rss_mb"] - one["rss_mb"],
        }
        results["ratios"][name] = ratios
        print(
            f"| {label} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
            f"{r['rss_mb']:.0f} MB | {r['ready_s']:.1f} s | {ratios['throughput']:.2f}x | {ratios['p99']:.2f}x | "
            f"{ratios['rss_over_mb']:+.0f} MB |"
        )
    for name in ("memory_only", "with_folder"):
        r = results[name]
        counts = [f"{k.removeprefix('prompt_cache_')} {v:.0f}" for k, v in r.items() if k.startswith("prompt_cache_")]
        print(f"{name}: prompt caches {', '.join(counts)}")
    f = results["fill"]
    print(f"\nfolder filled by a server warming all {args.tasks:,} tasks: {f['fill_s']:.0f} s, {f['files']:,} files, ")
    print(f"{f['folder_mb']:.0f} MB")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
