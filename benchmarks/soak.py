"""A long mixed load against ``softprompt serve``: does anything grow, does anything fail?

    python benchmarks/soak.py --artifacts DIR --minutes 20 --threads 2

``DIR`` holds a classification and a generation artifact for the backbone (``--backbone``,
default smollm2-135m); quick ones are enough, for example:

    softprompt train --config configs/sentiment_prompt.yaml train.max_steps=20 train.eval_every=20 \\
        data.max_eval=32 train.zero_shot_baseline=false out=DIR/sentiment
    softprompt train task=generation dataset=paradetox-rewrite data.path=PARADETOX.tsv \\
        train.max_steps=20 train.eval_every=20 data.max_eval=8 gen.max_new_tokens=16 out=DIR/polite

For ``--minutes`` the server gets, all at once: classification clients, generation clients,
streamed completions (every other one dropped after its first chunk), chat, a client naming
tasks and models that do not exist (404 expected; names of up to 5,000 characters), a task
changer that adds, replaces and removes a copy of the classifier through the API and through the
watched folder, and a ``/metrics`` scrape every second. Reported: the server's resident memory
(RSS) after the warm-up and at the end (target: growth <= 5%), the largest ``/metrics`` scrape
against the first, and every status by kind of client (target: none but the expected ones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from server_load import TEXTS, free_port, wait_until_ready

RESULTS = Path(__file__).parent / "results"
KEY = "soak-key"
# What each kind of client may be answered; anything else counts as a failure.
EXPECTED = {
    "classify": {"200"},
    "generate": {"200"},
    "stream": {"200", "dropped"},
    "chat": {"200"},
    "unknown": {"404"},
    "changes": {"200"},
    "live_task": {"200", "404"},  # asks for the task the changer adds and removes
    "metrics": {"200"},
}


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Load:
    """The clients, their logs and the server's memory over time."""

    def __init__(self, base: str, pid: int, until: float, warm_until: float, artifacts: Path, watched: Path):
        self.base, self.pid, self.until, self.warm_until = base, pid, until, warm_until
        self.artifacts, self.watched = artifacts, watched
        self.statuses: dict[str, Counter] = {kind: Counter() for kind in EXPECTED}
        self.memory: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.scrape_bytes: list[int] = []
        self.started = time.perf_counter()

    def note(self, kind: str, status: int | str) -> None:
        self.statuses[kind][str(status)] += 1

    async def send(self, kind: str, request) -> httpx.Response | None:
        try:
            answer = await request
        except httpx.HTTPError as exc:
            self.note(kind, f"error: {type(exc).__name__}")
            return None
        self.note(kind, answer.status_code)
        return answer

    async def classify(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {"task": "sentiment", "texts": rng.sample(TEXTS, rng.randint(1, 4))}
        await self.send("classify", http.post("/v1/classify", json=body))

    async def generate(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {"task": "polite", "prompt": rng.choice(TEXTS), "max_new_tokens": rng.randint(4, 32), "seed": 1}
        await self.send("generate", http.post("/v1/generate", json=body))

    async def stream(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {"model": "polite", "prompt": rng.choice(TEXTS), "max_tokens": 24, "stream": True}
        drop = rng.random() < 0.5
        try:
            async with http.stream("POST", "/v1/completions", json=body) as answer:
                async for line in answer.aiter_lines():
                    if drop and line.startswith("data:"):
                        self.note("stream", "dropped")  # closes the connection mid-stream
                        return
                self.note("stream", answer.status_code)
        except httpx.HTTPError as exc:
            self.note("stream", f"error: {type(exc).__name__}")

    async def chat(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        content = [{"type": "text", "text": rng.choice(TEXTS)}]
        body = {"model": "polite", "messages": [{"role": "user", "content": content}], "max_tokens": 16}
        await self.send("chat", http.post("/v1/chat/completions", json=body))

    async def unknown(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        name = "".join(rng.choices(string.ascii_letters, k=rng.choice([8, 300, 5_000])))
        if rng.random() < 0.5:
            await self.send("unknown", http.post("/v1/classify", json={"task": name, "texts": ["a"]}))
        else:
            await self.send("unknown", http.post("/v1/completions", json={"model": name, "prompt": "a"}))
        await asyncio.sleep(0.05)

    async def changes(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        """Add, ask, replace and remove a task through the API; then the same through the folder."""
        source = str(self.artifacts / "sentiment")
        await self.send("changes", http.post("/v1/tasks/live", json={"path": source}))
        await self.send("live_task", http.post("/v1/classify", json={"task": "live", "texts": ["a"]}))
        await self.send("changes", http.post("/v1/tasks/live", json={"path": source}))
        await self.send("changes", http.delete("/v1/tasks/live"))
        copy = self.watched / "watched"
        await asyncio.to_thread(shutil.copytree, self.artifacts / "sentiment", copy, dirs_exist_ok=True)
        await asyncio.sleep(3)
        await self.send("live_task", http.post("/v1/classify", json={"task": "watched", "texts": ["a"]}))
        await asyncio.to_thread(shutil.rmtree, copy)
        await asyncio.sleep(3)

    async def scrape(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        answer = await self.send("metrics", http.get("/metrics"))
        if answer is not None:
            self.scrape_bytes.append(len(answer.content))
        now = time.perf_counter()
        if now >= self.warm_until and (not self.memory or now - self.started - self.memory[-1][0] >= 10):
            self.memory.append((now - self.started, resident_mb(self.pid)))
        await asyncio.sleep(1.0)

    async def run(self, clients: dict[str, int]) -> None:
        limits = httpx.Limits(max_connections=sum(clients.values()) + 4)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=self.base, timeout=120, limits=limits, headers=headers) as http:

            async def loop(kind: str, seed: int) -> None:
                rng, act = random.Random(seed), getattr(self, kind)
                while time.perf_counter() < self.until:
                    await act(http, rng)

            roles = [kind for kind, count in clients.items() for _ in range(count)]
            await asyncio.gather(*(loop(kind, i) for i, kind in enumerate(roles)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, help="a folder with the artifacts 'sentiment' and 'polite'")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=120, help="seconds before memory is first read")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = parser.parse_args()
    artifacts = Path(args.artifacts).resolve()
    clients = {"classify": 6, "generate": 2, "stream": 2, "chat": 1, "unknown": 1, "changes": 1, "scrape": 1}
    with tempfile.TemporaryDirectory() as scratch:
        served = Path(scratch) / "served"
        for name in ("sentiment", "polite"):
            shutil.copytree(artifacts / name, served / name, ignore=shutil.ignore_patterns("checkpoint", "*.png"))
        port = free_port()
        command = [sys.executable, "-m", "softprompt", "serve", "--backbone", args.backbone, "--artifacts", str(served)]
        command += ["--port", str(port), "--threads", str(args.threads), "--api-key", KEY, "--watch", "1"]
        command += ["--artifacts-root", str(artifacts)]  # the changes client adds tasks from there
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            ready = wait_until_ready(base)
            start = time.perf_counter()
            load = Load(base, server.pid, start + 60 * args.minutes, start + args.warmup, artifacts, served)
            asyncio.run(load.run(clients))
        finally:
            server.terminate()
            server.wait(timeout=60)
    first, last = load.memory[0][1], load.memory[-1][1]
    peak = max(mb for _, mb in load.memory)
    unexpected = {
        kind: {s: n for s, n in counts.items() if s not in EXPECTED[kind]} for kind, counts in load.statuses.items()
    }
    unexpected = {kind: found for kind, found in unexpected.items() if found}
    result = {
        "setting": f"{args.backbone}, {args.minutes:g} min, {args.threads} threads, clients {clients}",
        "ready_s": ready,
        "rss_mb_after_warmup": first,
        "rss_mb_end": last,
        "rss_mb_peak": peak,
        "rss_growth": last / first - 1,
        "metrics_bytes_first": load.scrape_bytes[0],
        "metrics_bytes_max": max(load.scrape_bytes),
        "statuses": {kind: dict(counts) for kind, counts in load.statuses.items()},
        "unexpected": unexpected,
        "memory": load.memory,
    }
    print(f"\n{result['setting']}\n")
    print("| client | statuses |\n|---|---|")
    for kind, counts in load.statuses.items():
        print(f"| {kind} | {dict(counts)} |")
    print(
        f"\nRSS after {args.warmup:.0f} s warm-up {first:.0f} MB, at the end {last:.0f} MB "
        f"({100 * result['rss_growth']:+.1f}%; target <= +5%), peak {peak:.0f} MB"
    )
    print(f"/metrics: {load.scrape_bytes[0]:,} bytes at first, {max(load.scrape_bytes):,} at most")
    print(f"unexpected statuses: {unexpected or 'none'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
