"""How long the command line takes to answer before it does any work: ``--help`` and a mistyped
setting.

    python benchmarks/cli_startup.py --runs 5
    python benchmarks/cli_startup.py --runs 5 --src /tmp/before   # beside another checkout

Each command runs in a fresh ``python -m softprompt`` process from the repository root (wall
clock, the median of ``--runs`` after one unmeasured run that warms the file cache). ``--src
PATH`` runs the same commands with ``PATH/src`` first on ``PYTHONPATH`` (a worktree of an earlier
commit: ``git worktree add /tmp/before <commit>``) and reports the ratio. The machine's load is
recorded: on a shared machine the seconds move with it, so compare trees in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
COMMANDS = {  # label -> (arguments, the exit status it must end with)
    "--help": (["--help"], 0),
    "train --help": (["train", "--help"], 0),
    "config error": (["train", "--config", "configs/sentiment_prompt.yaml", "calibrate=contextal"], 2),
}


def seconds(arguments: list[str], status: int, src: Path, runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh processes running ``softprompt <arguments>`` from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    times = []
    for attempt in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "softprompt", *arguments], cwd=ROOT, env=env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - started
        if done.returncode != status:
            raise SystemExit(f"{' '.join(arguments)} exited {done.returncode}, not {status}: {done.stderr[-500:]}")
        if attempt:  # the first run only warms the file cache
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per command (median)")
    parser.add_argument("--src", type=Path, help="another source tree to compare with (its src/ is imported)")
    parser.add_argument("--out", default=str(RESULTS / "cli_startup.json"))
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.src is not None:
        trees = {"--src": args.src.resolve(), **trees}
    rows = []
    for label, (arguments, status) in COMMANDS.items():
        for tree, src in trees.items():
            times = seconds(arguments, status, src, args.runs)
            rows.append({"command": label, "tree": tree, "src": str(src), "median_s": statistics.median(times)})
            rows[-1]["runs_s"] = [round(t, 3) for t in times]
            print(f"{label} ({tree}): {rows[-1]['median_s']:.2f} s", file=sys.stderr)
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"\n`python -m softprompt ...`, median of {args.runs} fresh processes, {os.cpu_count()} cores, load {load}\n")
    print("| command | " + " | ".join(trees) + (" | ratio |" if len(trees) > 1 else " |"))
    print("|---|" + "---|" * (len(trees) + (len(trees) > 1)))
    for label in COMMANDS:
        medians = [row["median_s"] for row in rows if row["command"] == label]
        ratio = f" {medians[0] / medians[-1]:.1f}x |" if len(medians) > 1 else ""
        print(f"| {label} | " + " | ".join(f"{m:.2f} s" for m in medians) + f" |{ratio}")
    setting = {"runs": args.runs, "cores": os.cpu_count(), "load_1min": load, "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
