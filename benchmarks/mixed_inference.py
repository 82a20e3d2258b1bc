"""Inference on a stream that mixes tasks: ours (rows of different prompts in one batch) against
peft (one PeftModel with an adapter per task; the stream grouped by task, ``set_adapter`` between
groups, as peft's prompt tuning cannot mix adapters in a batch).

    python benchmarks/mixed_inference.py --backbone smollm2-135m --tasks 8 --texts 512 --threads 2

The 8 prompts are untrained (seeded random vocabulary tokens, 20 each): speed does not depend on
what a prompt learned. Both implementations get the *same* prompt embeddings, and the script
reports how often their predictions agree: batched peft numbers left-padded rows' positions from
the padding on (ours does not), so it is also run one text at a time on a sample, where the two
must agree.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from train_speed import load_examples, synchronize

RESULTS = Path(__file__).parent / "results"
TEMPLATE = "Review: {text}\nSentiment:"
WORDS = {"positive": "positive", "negative": "negative"}


def build(args: argparse.Namespace):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from softprompt.backbones import load_backbone
    from softprompt.config import PromptConfig
    from softprompt.core.prompt_caches import PromptCaches
    from softprompt.prompts import Template, Verbalizer
    from softprompt.tasks.classification import build_classifier
    from softprompt.tasks.classification.mixed import MixedPromptClassifier

    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone, args.device, args.precision)
    template = Template(f"{{soft:{args.soft}}}" + TEMPLATE)
    models = {
        f"task{i}": build_classifier(
            backbone, "prompt_tuning", template, Verbalizer(WORDS), PromptConfig(args.soft, "vocab"), i, 256
        )
        for i in range(args.tasks)
    }
    mixed = MixedPromptClassifier(models, PromptCaches(backbone))  # the server's setting: caches kept
    texts = [e.text for e in load_examples(args.texts, args.texts_file, "test")]
    rng = random.Random(0)
    stream = [(rng.choice(list(models)), text) for text in texts]
    # peft: the same prompts as adapters of one model.
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.soft)
    peft_model = get_peft_model(backbone.model, config, adapter_name="task0")
    for name in list(models)[1:]:
        peft_model.add_adapter(name, config)
    with torch.no_grad():
        for name, model in models.items():
            peft_model.prompt_encoder[name].embedding.weight.copy_(model.method.soft_embeddings())
    peft_model.eval()
    return backbone, models, mixed, stream, peft_model


def run_ours(mixed, stream, batch: int) -> list[int]:
    from softprompt.data.records import Example
    from softprompt.tasks.classification.mixed import classify_mixed

    probabilities = classify_mixed(mixed, [(task, Example({"text": text})) for task, text in stream], batch)
    return [int(p.argmax()) for p in probabilities]


def run_peft(peft_model, backbone, models, stream, batch: int) -> list[int]:
    import torch

    tokenizer = backbone.tokenizer
    tokenizer.padding_side = "left"
    word_ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS.values()]
    predictions = [0] * len(stream)
    with torch.inference_mode():
        for name in models:
            index = [i for i, (task, _) in enumerate(stream) if task == name]
            peft_model.set_adapter(name)
            for start in range(0, len(index), batch):
                chunk = index[start : start + batch]
                encoded = tokenizer(
                    [TEMPLATE.format(text=stream[i][1]) for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                encoded = {k: v.to(backbone.device) for k, v in encoded.items()}
                logits = peft_model(**encoded).logits[:, -1, word_ids]
                for i, row in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                    predictions[i] = row
    return predictions


def stream_flags(parser: argparse.ArgumentParser, check: int, out: Path) -> None:
    """The flags of a benchmark that classifies a stream of mixed tasks against peft's (this one,
    lora_mix.py): ``check`` texts also run one at a time to compare; results written to ``out``."""
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--soft", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--texts-file", help='a JSONL file of {"text", "label"} rows (default: built-in Rotten Tomatoes)'
    )
    parser.add_argument("--check", type=int, default=check, help="texts also run through peft one at a time")
    parser.add_argument("--out", default=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    stream_flags(parser, 128, RESULTS / "mixed_inference.json")
    args = parser.parse_args()
    backbone, models, mixed, stream, peft_model = build(args)
    ours = run_ours(mixed, stream, args.batch)
    theirs = run_peft(peft_model, backbone, models, stream, args.batch)
    agreement = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(stream)
    # peft numbers left-padded rows' positions from the padding on, so batched peft answers move
    # with the batch's padding; one text at a time (no padding) it must agree with ours exactly.
    alone = run_peft(peft_model, backbone, models, stream[: args.check], 1)
    agreement_alone = sum(a == b for a, b in zip(ours, alone, strict=False)) / len(alone)
    print(
        f"predictions agree on {100 * agreement:.1f}% of {len(stream)} texts (peft batched), "
        f"{100 * agreement_alone:.1f}% of the first {len(alone)} (peft one text at a time)",
        file=sys.stderr,
    )
    seconds: dict[str, list[float]] = {"ours": [], "peft": []}
    for round_index in range(args.rounds):
        order = ["ours", "peft"] if round_index % 2 == 0 else ["peft", "ours"]
        for impl in order:
            synchronize(args.device)
            start = time.perf_counter()
            if impl == "ours":
                run_ours(mixed, stream, args.batch)
            else:
                run_peft(peft_model, backbone, models, stream, args.batch)
            synchronize(args.device)
            seconds[impl].append(time.perf_counter() - start)
            print(f"round {round_index + 1} {impl}: {seconds[impl][-1]:.1f} s", file=sys.stderr)
    rate = {impl: len(stream) / statistics.median(values) for impl, values in seconds.items()}
    setting = (
        f"{args.backbone}, {args.device} {args.precision}, {args.tasks} tasks x {args.soft} soft tokens, "
        f"{len(stream)} {'Rotten Tomatoes test' if args.texts_file is None else args.texts_file} texts in random "
        f"task order, batch {args.batch}, {args.threads} threads, median of {args.rounds} alternating rounds"
    )
    print(f"\n{setting}\n\n| implementation | texts/s |\n|---|---|")
    for impl in ("ours", "peft"):
        print(f"| {impl} | {rate[impl]:.1f} |")
    speedup = rate["ours"] / rate["peft"]
    target = 3 if args.device.startswith("cuda") else 2.5  # issue 18's targets
    print(
        f"\nours / peft: {speedup:.2f}x (target >= {target}x); predictions agree on {100 * agreement:.1f}% "
        f"(peft batched), {100 * agreement_alone:.1f}% (peft one text at a time, first {args.check})"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "setting": setting,
                "seconds": seconds,
                "texts_per_second": rate,
                "speedup": speedup,
                "agreement": agreement,
                "agreement_one_at_a_time": agreement_alone,
                "checked_one_at_a_time": len(alone),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
