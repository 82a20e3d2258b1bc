"""SIGKILL at chosen points of a real training process: during a step, while the checkpoint is
written, while the artifact is written. Every time, the directory holds no half-written artifact,
and resuming reaches exactly the weights and log of an uninterrupted run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from softprompt.artifact import read_artifact

# Run in the child: kill this very process (SIGKILL, no cleanup) at the n-th call of a target,
# after half of a file was written when the target writes one.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import safetensors.torch, torch
    target, n = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}

    def due():
        calls["n"] += 1
        return calls["n"] == n

    if target == "step":
        real_step = torch.optim.AdamW.step
        def step(self, *a, **k):
            if due():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self, *a, **k)
        torch.optim.AdamW.step = step
    else:  # "checkpoint" or "artifact": a safetensors write, killed halfway
        real_save = safetensors.torch.save_file
        def save(tensors, path, metadata=None):
            wanted = "checkpoint" in str(path)
            if wanted == (target == "checkpoint") and due():
                real_save(tensors, path, metadata=metadata)
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(tensors, path, metadata=metadata)
        safetensors.torch.save_file = save
    from softprompt.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)


def _log(out):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (out / "log.jsonl").open()]


@pytest.fixture
def train_args(base_args):
    steps = ["train.max_steps=8", "train.eval_every=2", "train.lr=0.05", "train.patience=0", "threads=1"]
    return ["train", *base_args, *steps]


def _run(args, killer=None):
    command = [sys.executable, "-c", KILLER, *killer, *args] if killer else [sys.executable, "-m", "softprompt", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_sigkill_at_random_points_always_resumes_to_the_uninterrupted_run(train_args, tmp_path):
    straight = tmp_path / "straight"
    assert _run([*train_args, f"out={straight}"]).returncode == 0
    expected = read_artifact(straight)
    rng = random.Random(20261202)  # fixed: the same points every run of the suite
    points = [("step", rng.randint(1, 8)), ("checkpoint", rng.randint(1, 4)), ("artifact", rng.randint(1, 3))]
    points.append(("step", 1))  # before any checkpoint: nothing to resume, start again
    for target, n in points:
        out = tmp_path / f"{target}-{n}"
        killed = _run([*train_args, f"out={out}"], killer=[target, str(n)])
        assert killed.returncode == -9, (target, n, killed.stderr[-500:])
        if (out / "task.json").exists():
            read_artifact(out)  # complete and matching its hash: never half-written
        resumable = (out / "checkpoint" / "state.safetensors").exists()
        finish = _run([*train_args, f"out={out}", "--resume" if resumable else "--overwrite"])
        assert finish.returncode == 0, (target, n, finish.stderr[-500:])
        got = read_artifact(out)
        assert got.state.keys() == expected.state.keys()
        assert all(torch.equal(got.state[k], expected.state[k]) for k in got.state), (target, n)
        assert _log(out) == _log(straight), (target, n)
