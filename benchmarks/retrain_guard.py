"""Which guard against forgetting `softprompt retrain` should use by default: the same parent and
the same skewed feedback, retrained three ways in one run (no guard, replay of the parent's own
training rows, EWC), each judged by the gate and scored on the test split.

    python benchmarks/retrain_guard.py --feedback 400 --negative-share 0.85 --steps 60 --threads 2

The parent is the demo's recipe (configs/sentiment_prompt.yaml) trained for ``--parent-steps``
steps on the Rotten Tomatoes training split. The feedback is what users who mostly report one
kind of mistake would give: ``--feedback`` rows of the training pool with their gold labels,
``--negative-share`` of them negative (the pool is half and half), written to a fresh SQLite store
as text feedback. Each arm runs `softprompt retrain PARENT --db DB out=DIR` with its guard
setting and ``train.max_steps=--steps``; the gate's figures come from the new version's
``task.json`` and the test accuracy from `softprompt eval --split test`. Prints a table and
writes benchmarks/results/retrain_guard.json. Accuracies, not timings: the times shown are only
for scale.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feedback_loop import evaluate, train_pool

RESULTS = Path(__file__).parent / "results"
TASK = "sentiment"
ARMS = {  # name: the retrain settings that choose its guard
    "none": ["retrain.replay=0"],
    "replay": ["retrain.guard=replay", "retrain.replay=1"],
    "ewc": ["retrain.guard=ewc"],
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprompt", *args], capture_output=True, text=True)


def skewed_feedback(count: int, negative_share: float, seed: int) -> list[tuple[str, str]]:
    """``count`` (text, gold label) rows of the training pool, ``negative_share`` of them negative,
    in a shuffled order (the newest 20% are the gate's held-out test)."""
    pool = train_pool(seed)
    negatives = [row for row in pool if row[1] == "negative"]
    positives = [row for row in pool if row[1] == "positive"]
    wanted = round(count * negative_share)
    rows = negatives[:wanted] + positives[: count - wanted]
    random.Random(seed).shuffle(rows)
    return rows


def write_store(db: Path, rows: list[tuple[str, str]]) -> None:
    from softprompt.lifecycle.store import Feedback, Store

    store = Store(str(db))
    for number, (text, label) in enumerate(rows):
        store.add_feedback(Feedback(task=TASK, kind="classify", text=text, label=label, time=1e9 + number))
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feedback", type=int, default=400)
    parser.add_argument("--negative-share", type=float, default=0.85)
    parser.add_argument("--parent-steps", type=int, default=120)
    parser.add_argument("--steps", type=int, default=60, help="training steps of each retrain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the artifacts here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="retrain-guard-"))
    parent = work / TASK
    common = ["precision=fp32", f"threads={args.threads}"]
    if not (parent / "task.json").exists():
        started = time.perf_counter()
        trained = run("train", "--config", "configs/sentiment_prompt.yaml", *common, f"out={parent}", "--quiet",
                      f"train.max_steps={args.parent_steps}", f"train.eval_every={args.parent_steps}",
                      "train.zero_shot_baseline=false", "--overwrite")  # fmt: skip
        if trained.returncode != 0:
            sys.exit(f"training the parent failed:\n{trained.stderr[-2000:]}")
        print(f"parent: {args.parent_steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    db = work / "feedback.db"
    db.unlink(missing_ok=True)
    rows = skewed_feedback(args.feedback, args.negative_share, args.seed)
    write_store(db, rows)
    results = {"parent_test": evaluate(str(parent), "test", args.threads), "arms": {}}
    print(f"parent test accuracy {results['parent_test']:.1%}; feedback {len(rows)} rows, "
          f"{args.negative_share:.0%} negative", flush=True)  # fmt: skip
    for arm, settings in ARMS.items():
        out = work / f"retrained-{arm}"
        started = time.perf_counter()
        answer = run("retrain", str(parent), "--db", str(db), "--task", TASK, f"out={out}", *common, *settings,
                     f"train.max_steps={args.steps}", f"seed={args.seed}", "--overwrite", "--quiet")  # fmt: skip
        seconds = time.perf_counter() - started
        if answer.returncode not in (0, 3):
            sys.exit(f"retrain ({arm}) failed with {answer.returncode}:\n{answer.stderr[-2000:]}")
        gate = json.loads((out / "task.json").read_text())["lineage"]["gate"]
        results["arms"][arm] = {
            "settings": settings,
            "exit": answer.returncode,
            "gate": gate,
            "test": evaluate(str(out), "test", args.threads),
            "retrain_s": round(seconds, 1),
        }
        print(f"{arm}: exit {answer.returncode}, {seconds:.0f} s", flush=True)
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    (RESULTS / "retrain_guard.json").write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict) -> None:
    print("| guard | held-out feedback: new (parent) | dev: new (parent) | test: new (parent) | gate | retrain |")
    print("|---|---|---|---|---|---|")
    for arm, got in results["arms"].items():
        held, dev = got["gate"]["held_out"], got["gate"]["dev"]
        verdict = "passed" if got["gate"]["passed"] else "failed: " + ", ".join(got["gate"]["failed"])
        print(f"| {arm} | {held['candidate']:.1%} ({held['parent']:.1%}, n={held['n']}) "
              f"| {dev['candidate']:.1%} ({dev['parent']:.1%}) | {got['test']:.1%} ({results['parent_test']:.1%}) "
              f"| {verdict} | {got['retrain_s']:.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
