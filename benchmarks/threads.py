"""How many torch threads a training step should use when the machine is shared.

    python benchmarks/threads.py --backbone smollm2-135m --steps 5

The step of ``benchmarks/train_speed.py`` (softprompt's prompt-tuning step, batch 16) with 1
thread and with one per core, alone and beside a competing job (another process multiplying
float32 matrices on one thread per core, as a second training run on the machine would). The
threads setting under test is the process's own; the competitor is the same in both rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).parent

COMPETITOR = """
import torch
torch.set_num_threads({threads})
a = torch.randn(1024, 1024)
while True:
    a = (a @ a).tanh()
"""


def step_seconds(args: argparse.Namespace, threads: int) -> float:
    command = [sys.executable, str(HERE / "train_speed.py"), "--impl", "ours", f"--backbone={args.backbone}"]
    command += [f"--threads={threads}", f"--steps={args.steps}", "--warmup=1", "--batch=16", "--soft=20"]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["median_step_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "threads.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for busy in (False, True):
        competitor = None
        if busy:
            code = COMPETITOR.format(threads=cores)
            competitor = subprocess.Popen([sys.executable, "-c", code])
            time.sleep(2)
        try:
            for threads in sorted({1, cores}):
                seconds = step_seconds(args, threads)
                rows.append({"competing_job": busy, "threads": threads, "step_seconds": seconds})
                print(f"competing job {busy}, threads {threads}: {seconds:.2f} s/step", file=sys.stderr)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print(f"\n{args.backbone}, prompt-tuning step, batch 16, {cores} cores, median of {args.steps} steps\n")
    print("| machine | threads | s/step |\n|---|---|---|")
    for row in rows:
        machine = "beside a competing job" if row["competing_job"] else "alone"
        print(f"| {machine} | {row['threads']} | {row['step_seconds']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cores": cores, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
