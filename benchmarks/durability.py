"""Durability of capture: a server with `--capture` is killed with SIGKILL under load, several
times. Every classification answered with 200 must be in the store, every feedback answered
with 200 must be there, the store must pass SQLite's integrity check, and the restarted server
must serve the version that was live (promoted before the first kill).

    python benchmarks/durability.py --artifact runs/sentiment --kills 5

Without ``--artifact``, a zero-shot Rotten Tomatoes artifact is made; the version promoted
beside it is a prompt trained for 2 steps (only its weights' hash matters here). Prints a table
and writes benchmarks/results/durability.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from server_load import free_port, wait_until_ready

RESULTS = Path(__file__).parent / "results"
KEY = "durability-admin"
TEXTS = ["a gripping, beautifully acted film", "a dull, lifeless mess", "fine", "not my thing at all"]


def softprompt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "softprompt", *args, "--quiet"], check=True)


def start(served: Path, db: Path, port: int, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "softprompt", "serve", "--artifacts", str(served), "--capture", str(db)]
    command += ["--admin-key", KEY, "--port", str(port), "--precision", "fp32", "--threads", str(threads)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def load(base: str, seconds: float, answered: list[str], labelled: list[str]) -> None:
    """Four clients classify and label half their answers until the server dies (or time ends)."""
    draw = random.Random(len(answered))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    answer = await http.post("/v1/classify", json={"task": "sentiment", "texts": [draw.choice(TEXTS)]})
                    if answer.status_code != 200:
                        continue
                    mine = answer.json()["id"]  # not answered[-1]: the other clients append too
                    answered.append(mine)
                    if draw.random() < 0.5:
                        given = await http.post("/v1/feedback", json={"id": mine, "label": "positive"})
                        if given.status_code == 200:
                            labelled.append(mine)
                except httpx.HTTPError:
                    return  # the server is gone

    await asyncio.gather(*(client() for _ in range(4)))


def check(db: Path, answered: list[str], labelled: list[str]) -> dict:
    with sqlite3.connect(db) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        stored = {row[0] for row in conn.execute("SELECT id FROM requests WHERE role = 'served'")}
        given = {row[0] for row in conn.execute("SELECT request_id FROM feedback")}
    return {
        "answered": len(answered),
        "missing_answers": len(set(answered) - stored),
        "feedback": len(labelled),
        "missing_feedback": len(set(labelled) - given),
        "integrity": integrity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="a Rotten Tomatoes classifier (default: a zero-shot one, made here)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "durability.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="durability-"))
    served, db = work / "served", work / "capture.db"
    if args.artifact:
        shutil.copytree(args.artifact, served / "sentiment", ignore=shutil.ignore_patterns("checkpoint*"))
    else:
        softprompt("train", "dataset=rotten-tomatoes", "method=none", "precision=fp32", "data.max_eval=16",
                   f"out={served / 'sentiment'}")  # fmt: skip
    candidate = served / ".incoming" / "v2"
    quick = ["train.max_steps=2", "train.eval_every=2", "data.max_eval=16", "precision=fp32", f"out={candidate}"]
    softprompt("train", "dataset=rotten-tomatoes", "method=prompt_tuning", "template={soft:4}Review: {text}", *quick)
    port = free_port()
    base, admin = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    server = start(served, db, port, args.threads)
    wait_until_ready(base)
    posted = httpx.post(
        f"{base}/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0}, headers=admin
    )
    assert posted.status_code == 200, posted.text
    live = httpx.post(f"{base}/v1/tasks/sentiment/promote", headers=admin, timeout=60).json()["live"]["version"]
    trials, rng = [], random.Random(0)
    for trial in range(1, args.kills + 1):
        answered: list[str] = []
        labelled: list[str] = []
        kill_after = rng.uniform(3, 8)
        asyncio.run(killed_under_load(base, server, kill_after, answered, labelled))
        server.wait()
        figures = check(db, answered, labelled)
        server = start(served, db, port, args.threads)
        ready = wait_until_ready(base)
        serving = httpx.get(f"{base}/v1/tasks/sentiment").json()["live"]["version"]
        trials.append({"trial": trial, "killed_after_s": round(kill_after, 1), **figures})
        trials[-1].update(restart_s=round(ready, 1), live_version_kept=serving == live)
    server.terminate()
    server.wait()
    report(trials)
    ok = all(
        t["missing_answers"] == 0 and t["missing_feedback"] == 0 and t["integrity"] == "ok" and t["live_version_kept"]
        for t in trials
    )
    print(f"\nevery answered request and feedback stored, store intact, live version kept: {'PASS' if ok else 'MISS'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"trials": trials, "passed": ok}, indent=2))


async def killed_under_load(
    base: str, server: subprocess.Popen, after: float, answered: list[str], labelled: list[str]
) -> None:
    traffic = asyncio.create_task(load(base, 60, answered, labelled))
    await asyncio.sleep(after)
    server.send_signal(signal.SIGKILL)  # under load, mid-batch
    await traffic


def report(trials: list[dict]) -> None:
    head = ("kill", "after", "answered", "missing", "feedback", "missing", "store", "restart", "live kept")
    print("\n" + " ".join(f"{h:>9}" for h in head))
    for t in trials:
        cells = (t["trial"], f"{t['killed_after_s']}s", t["answered"], t["missing_answers"], t["feedback"])
        cells += (t["missing_feedback"], t["integrity"], f"{t['restart_s']}s", t["live_version_kept"])
        print(" ".join(f"{c!s:>9}" for c in cells))


if __name__ == "__main__":
    main()
