"""What the serving benchmarks share: ``softprompt serve`` in a subprocess, a folder of one
artifact copied under many task names, and the generating clients."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server_load import free_port, wait_until_ready

WEIGHTS = "adapter_model.safetensors"


class Server:
    """``softprompt serve`` in a subprocess, ready when /healthz answers."""

    def __init__(self, args: argparse.Namespace, prompts: Path, roots: tuple[Path, ...] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # --prompts: the flag's first name, which --src trees from before the rename know too
        command = [sys.executable, "-m", "softprompt", "serve", "--backbone", args.backbone, "--prompts", str(prompts)]
        command += ["--port", str(self.port), "--threads", str(args.threads), "--queue-size", "256"]
        for root in roots:  # folders besides the served one that POST /v1/tasks/{name} may name
            command += ["--artifacts-root", str(root)]
        if args.prompt_cache_mb is not None:
            command += ["--prompt-cache-mb", str(args.prompt_cache_mb)]
        if getattr(args, "prompt_cache_dtype", None):
            command += ["--prompt-cache-dtype", args.prompt_cache_dtype]
        if getattr(args, "prompt_cache_dir", None):
            command += ["--prompt-cache-dir", str(args.prompt_cache_dir)]
        env = dict(os.environ)
        if getattr(args, "src", None):
            env["PYTHONPATH"] = str(Path(args.src).resolve())
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        self.ready_s = wait_until_ready(self.base)  # from the process's start: loading included

    def rss_mb(self) -> dict[str, float]:
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
        return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}

    def metrics(self) -> dict[str, float]:
        """The server's /metrics samples now, by name with labels (``name{label="x"}``)."""
        lines = httpx.get(f"{self.base}/metrics").text.splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}

    def batch_rows(self, kind: str = "classify") -> dict[str, float]:
        """Model calls of ``kind`` so far and their mean rows, from the server's /metrics."""
        samples = self.metrics()
        calls = samples.get(f'softprompt_batch_rows_count{{kind="{kind}"}}', 0.0)
        rows = samples.get(f'softprompt_batch_rows_sum{{kind="{kind}"}}', 0.0)
        return {"model_calls": calls, "mean_batch_rows": rows / calls if calls else 0.0}

    def prompt_cache_counts(self) -> dict[str, float]:
        """The server's prompt-cache counters so far (kept, read from the folder, computed)."""
        samples = self.metrics()
        names = [n for n in ("hits", "folder_hits", "misses") if f"softprompt_prompt_cache_{n}_total" in samples]
        return {f"prompt_cache_{n}": samples[f"softprompt_prompt_cache_{n}_total"] for n in names}  # (--src: older)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def prompts_dir(artifact: Path, count: int, root: Path) -> Path:
    """``count`` tasks made of ``artifact``: the first is a copy, each other one's weights moved by
    a tiny random amount (1e-4 of their spread), so that every task has a prompt of its own (a
    store keyed by what a prompt holds, as ``--prompt-cache-dir`` is, must not find one for all)."""
    import safetensors.torch
    import torch

    folder = root / f"tasks-{count}"
    folder.mkdir(parents=True)
    weights = safetensors.torch.load_file(str(artifact / WEIGHTS))
    for i in range(count):
        task = folder / f"task{i:05d}"
        shutil.copytree(artifact, task, ignore=shutil.ignore_patterns("checkpoint", "*.png"))
        if i == 0:
            continue
        generator = torch.Generator().manual_seed(i)
        moved = {k: v + 1e-4 * v.float().std() * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
        safetensors.torch.save_file(moved, str(task / WEIGHTS), metadata={"format": "pt"})
        record = json.loads((task / "task.json").read_text())
        record["weights_sha256"] = hashlib.sha256((task / WEIGHTS).read_bytes()).hexdigest()
        (task / "task.json").write_text(json.dumps(record))
    return folder


async def generation_client(
    client: httpx.AsyncClient, until: float, seed: int, counts: list, lengths: tuple[int, int], tasks: list, tokenizer
) -> None:
    """Generate one request after the other until ``until`` (temperature 0.7, a random
    ``max_new_tokens`` in ``lengths`` and a random task of ``tasks``, None: the plain model);
    each answer's tokens, counted by ``tokenizer``, go to ``counts``."""
    rng = random.Random(seed)
    while time.perf_counter() < until:
        body = {"prompt": "Once upon a time", "max_new_tokens": rng.randint(*lengths)}
        body |= {"temperature": 0.7, "seed": rng.randrange(10**6), "task": rng.choice(tasks)}
        answer = await client.post("/v1/generate", json=body)
        if answer.status_code == 200:
            text = answer.json()["completions"][0]
            counts.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
