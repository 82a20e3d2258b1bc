"""Which precision decodes faster on this CPU: fp32 or bf16, through both decoding paths.

    python benchmarks/decode_precision.py --artifact runs/lr-search/prompt_tuning-lr0.01 --threads 2

A generation artifact with a leading soft prompt is loaded on the bundled backbone in each
precision, and greedy continuations of ``--tokens`` tokens are decoded for batches of 1 and 8
inputs, by transformers' ``generate`` (``softprompt generate``, ``Model.generate``) and by the
server's running batch (``softprompt serve``), in alternating rounds (median). Generated tokens
per second; the ratio is fp32 over bf16. Training precision does not bind decoding: an
artifact trained in bf16 loads in fp32 (``precision=auto`` on a CPU) unless told otherwise.

Then a split of 64 inputs (batches of 8) on the bf16 backbone, as a bf16 training run decodes
its test split: ``decode``'s length-sorted batches in bf16 (as before), and ``decode`` itself,
which holds the weights in float32 meanwhile (``Backbone.decoding``; both casts are timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from softprompt.backbones import load_backbone
from softprompt.config import GenConfig
from softprompt.core.batching import length_sorted_batches
from softprompt.generation.decode import decode, decode_batch
from softprompt.generation.running import RunningBatch
from softprompt.serving.registry import writer_of
from softprompt.serving.writing import WriteJob, sample_request
from softprompt.tasks.loading import load_model

RESULTS = Path(__file__).parent / "results"
TEXTS = [
    "you are a stupid idiot and nobody likes you",
    "shut the hell up , this is crap",
    "what a dumb fucking idea , man",
    "that guy is a total moron",
    "this damn movie is garbage",
    "stop being such an ass about it",
    "who the hell wrote this shit",
    "you people are pathetic losers",
]


def with_generate(model, texts: list[str], tokens: int) -> int:
    prompts = [model.encode_prompt({"text": t}) for t in texts]
    rows = decode_batch(model.backbone, model.method, prompts, GenConfig(max_new_tokens=tokens))
    return sum(len(r) for r in rows)


def with_running_batch(model, writer, texts: list[str], tokens: int) -> int:
    batch = RunningBatch(model.backbone)
    jobs = [WriteJob(None, t, tokens, 0.0) for t in texts]
    batch.admit([(i, sample_request(job, writer)) for i, job in enumerate(jobs)])
    finished = []
    while batch.members:
        finished += batch.step(4)
    return sum(len(m.tokens[0]) for m in finished)


def split_rates(model, tokens: int, rounds: int) -> dict[str, list[float]]:
    """Tokens/s decoding 64 inputs in batches of 8 on ``model``'s (bf16) backbone: the batches of
    ``decode`` in bf16, and ``decode`` (float32 meanwhile), in alternating rounds. Tokens are
    counted in the texts, the same way for both."""
    backbone, tokenizer = model.backbone, model.backbone.tokenizer
    prompts = [model.encode_prompt({"text": t}) for t in TEXTS * 8]
    settings, rates = GenConfig(max_new_tokens=tokens), {"in bf16": [], "held in fp32": []}

    def in_bf16() -> list[str]:  # decode() as it was: the same length-sorted batches, no hold
        texts = [""] * len(prompts)
        for index in length_sorted_batches([len(p.ids) for p in prompts], 8):
            rows = decode_batch(backbone, model.method, [prompts[i] for i in index], settings)
            for i, ids in zip(index, rows, strict=True):
                texts[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
        return texts

    runs = {"in bf16": in_bf16, "held in fp32": lambda: decode(backbone, model.method, prompts, settings, 8)}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            texts = run()
            elapsed = time.perf_counter() - started
            rates[name].append(sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="a generation artifact with a leading soft prompt")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "decode_precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = {}
    for precision in ("fp32", "bf16"):
        model, _ = load_model(args.artifact, load_backbone(args.backbone, "cpu", precision))
        loaded[precision] = (model, writer_of(model, Path(args.artifact)))
    paths = {"generate": with_generate, "running batch": with_running_batch}
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for precision, (model, writer) in loaded.items():
            for path, run in paths.items():
                for size in (1, 8):
                    extra = (writer,) if path == "running batch" else ()
                    started = time.perf_counter()
                    made = run(model, *extra, TEXTS[:size], args.tokens)
                    key = f"{path}|{size}|{precision}"
                    rates.setdefault(key, []).append(made / (time.perf_counter() - started))
    rows = []
    print(f"\n{args.backbone}, {args.threads} threads, greedy, {args.tokens} new tokens, median of {args.rounds}\n")
    print("| path | batch | fp32 tokens/s | bf16 tokens/s | fp32 / bf16 |\n|---|---|---|---|---|")
    for path in paths:
        for size in (1, 8):
            fp32 = statistics.median(rates[f"{path}|{size}|fp32"])
            bf16 = statistics.median(rates[f"{path}|{size}|bf16"])
            rows.append({"path": path, "batch": size, "fp32": fp32, "bf16": bf16, "ratio": fp32 / bf16})
            print(f"| {path} | {size} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |")
    split = split_rates(loaded["bf16"][0], args.tokens, args.rounds)
    before, now = statistics.median(split["in bf16"]), statistics.median(split["held in fp32"])
    print(f"\nbf16 backbone, 64 inputs: {before:.1f} tokens/s in bf16, {now:.1f} held in fp32 ({now / before:.2f}x)")
    result = {"setting": vars(args), "rows": rows, "rates": rates, "split": split}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
