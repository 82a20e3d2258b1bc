"""Learning from use: a Rotten Tomatoes server starts from a zero-shot artifact, a client replays
the training pool as traffic, a simulated labeller posts the gold label for a share of the
answered requests, and `softprompt loop` runs beside the server (retrain, shadow, promote). At
the end every version that was live is scored on the test and dev splits.

    python benchmarks/feedback_loop.py --every 250 --rounds 4 --threads 2

Prints a table (live test accuracy after each round against the feedback labels used so far)
and writes benchmarks/results/feedback_loop.json and .png. Accuracies are not timings: other work
on the machine only makes the run slower.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
KEY = "benchmark-admin"
TEMPLATE = "{soft:8}Review: {text}\\nSentiment:{soft:8}"  # the demo's (configs/sentiment_prompt.yaml)


def softprompt(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprompt", *args], check=True, **kwargs)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_pool(seed: int) -> list[tuple[str, str]]:
    """The Rotten Tomatoes training split (text, gold label), shuffled: the traffic."""
    from softprompt.config import load_config
    from softprompt.tasks import get_task

    config = load_config(base={"dataset": "rotten-tomatoes", "method": "none"})
    pool = [(e.fields["text"], e.label) for e in get_task(config.task).load_splits(config, None).train]
    random.Random(seed).shuffle(pool)
    return pool


class Budget:
    """The labeller's budget, read from the loop's state file: labels up to the next round's
    trigger while the loop waits, ``shadow`` more while it shadows, none while it retrains. On a
    2-core CPU a retrain takes many minutes while traffic goes on; without a budget the labels
    that pile up meanwhile would all train the next version, and "labels used" would measure the
    machine's speed instead of the method."""

    def __init__(self, state: Path, every: int, shadow: int):
        self.state, self.every, self.shadow = state, every, shadow
        self.read_at, self.allowed = 0.0, every

    def allows(self, posted: int) -> bool:
        if time.monotonic() - self.read_at > 1:
            self.read_at = time.monotonic()
            try:
                state = json.loads(self.state.read_text())
            except (OSError, ValueError):
                state = {"phase": "waiting", "seen": 0}
            seen = state.get("seen", 0)
            allowances = {
                "waiting": seen + self.every,
                "retraining": posted,
                "shadowing": seen + self.every + self.shadow,
            }
            self.allowed = allowances[state["phase"]]  # retraining: hold still
        return posted < self.allowed


async def replay(
    base: str, pool: list[tuple[str, str]], share: float, done: asyncio.Event, log: dict, budget: Budget
) -> None:
    """Four clients send the pool as traffic (cycling) until ``done``; a labeller posts the gold
    label for ``share`` of the answers, within ``budget``. Every status that is not 200 is counted."""
    draw = random.Random(1)
    position = iter(range(10**9))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            while not done.is_set():
                text, gold = pool[next(position) % len(pool)]
                answer = await http.post("/v1/classify", json={"task": "sentiment", "texts": [text]})
                log["requests"] += 1
                if answer.status_code != 200:
                    log["failed"].append(answer.status_code)
                    continue
                if draw.random() < share and budget.allows(log["labels"]):
                    given = await http.post("/v1/feedback", json={"id": answer.json()["id"], "label": gold})
                    log["labels"] += given.status_code == 200
                    if given.status_code != 200:
                        log["failed"].append(given.status_code)

    await asyncio.gather(*(client() for _ in range(4)))


def evaluate(artifact: str, split: str, threads: int) -> float:
    answer = softprompt("eval", artifact, "--split", split, "--json", "--quiet", "--precision", "fp32",
                        "--threads", str(threads), capture_output=True, text=True)  # fmt: skip
    return json.loads(answer.stdout)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--label-share", type=float, default=0.25)
    parser.add_argument("--shadow-requests", type=int, default=100)
    parser.add_argument("--steps", type=int, default=80, help="training steps of each retrain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=120, help="stop the traffic after this long")
    parser.add_argument("--out", default=str(RESULTS / "feedback_loop.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    served, db = work / "served", work / "capture.db"
    started = time.time()
    softprompt("train", "dataset=rotten-tomatoes", "method=none", "precision=fp32", f"threads={args.threads}",
               f"out={served / 'sentiment'}", "--quiet")  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "softprompt", "serve", "--artifacts", str(served), "--capture", str(db),
         "--admin-key", KEY, "--port", str(port), "--precision", "fp32", "--threads", "1"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    retrain = [f"template={TEMPLATE}", "prompt.init=labels", "train.lr=0.01", "train.batch_size=16",
               f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", "train.patience=0",
               f"threads={args.threads}"]  # fmt: skip
    state = work / "loop-state.json"
    loop = subprocess.Popen(
        [sys.executable, "-m", "softprompt", "loop", "--server", base, "--db", str(db), "--task", "sentiment",
         "--every", str(args.every), "--shadow-requests", str(args.shadow_requests), "--rounds", str(args.rounds),
         "--state", str(state), *retrain],
        env={**os.environ, "SOFTPROMPT_ADMIN_KEY": KEY},
    )  # fmt: skip
    log = {"requests": 0, "labels": 0, "failed": []}

    async def run() -> None:
        done = asyncio.Event()
        budget = Budget(state, args.every, 2 * args.shadow_requests)
        traffic = asyncio.create_task(replay(base, train_pool(0), args.label_share, done, log, budget))
        deadline = time.time() + 60 * args.minutes
        while loop.poll() is None and time.time() < deadline:
            await asyncio.sleep(2)
        done.set()
        await traffic

    try:
        asyncio.run(run())
    finally:
        loop.terminate()
        server.terminate()
        server.wait()
    history = json.loads(state.read_text())["history"] if state.is_file() else []
    zero = str(served / "sentiment")
    live, rows = zero, [{"round": 0, "feedback": 0, "outcome": "start (zero-shot)", "live_path": zero}]
    for record in history:  # "live"/"candidate": the shadow's scores on feedback, when it got that far
        if record["outcome"] == "promoted":
            live = record["version"]
        rows.append({**record, "live_path": live})
    scores: dict[str, tuple[float, float]] = {}
    for row in rows:
        row["labels_used"] = labels_used(row["live_path"])
        if row["live_path"] not in scores:
            scores[row["live_path"]] = (evaluate(row["live_path"], "test", 2), evaluate(row["live_path"], "dev", 2))
        row["test"], row["dev"] = scores[row["live_path"]]
    print(
        f"\n{'round':>5} {'labels':>7} {'outcome':<20} {'shadow: new vs live':<20} {'live':>6} {'test':>6} {'dev':>6}"
    )
    for row in rows:
        shadow = f"{row['candidate']:.3f} vs {row['live']:.3f}" if "metric" in row else ""
        print(
            f"{row['round']:>5} {row['feedback']:>7} {row['outcome']:<20} {shadow:<20} {row['labels_used']:>6} "
            f"{100 * row['test']:>5.1f}% {100 * row['dev']:>5.1f}%"
        )
    print("labels: feedback in force at the round's end; live: the labels the live version trained on (and held out)")
    drops = [100 * (b["dev"] - a["dev"]) for a, b in itertools.pairwise(rows) if b["live_path"] != a["live_path"]]
    summary = {
        "requests": log["requests"],
        "labels_posted": log["labels"],
        "failed_requests": len(log["failed"]),
        "failed_statuses": sorted(set(log["failed"])),
        "largest_dev_drop_points": -min(drops, default=0.0),
        "minutes": round((time.time() - started) / 60, 1),
        "settings": vars(args),
        "rounds": rows,
    }
    print(
        f"\nrequests {log['requests']:,}, labels posted {log['labels']:,}, failed {len(log['failed'])}; largest dev "
        f"drop at a promotion {summary['largest_dev_drop_points']:.2f} points; {summary['minutes']} min"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    plot(rows, Path(args.out).with_suffix(".png"))


def labels_used(artifact: str) -> int:
    """Feedback labels a version trained on and was gated with (its lineage; 0 for the start)."""
    meta = json.loads((Path(artifact) / "task.json").read_text())
    lineage = meta.get("lineage")
    if not lineage:
        return 0
    return lineage["feedback"]["train"]["count"] + lineage["feedback"]["held_out"]["count"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4))
    axis.step([r["labels_used"] for r in rows], [100 * r["test"] for r in rows], "o-", where="post", label="live test")
    axis.step([r["labels_used"] for r in rows], [100 * r["dev"] for r in rows], "s--", where="post", label="live dev")
    axis.axhline(85.6, color="tab:gray", ls=":", label="demo, all 8,530 train labels")
    axis.set_xlabel("feedback labels used")
    axis.set_ylabel("accuracy (%)")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
