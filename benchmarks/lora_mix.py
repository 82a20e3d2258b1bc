"""LoRA tasks in the mixed batch: ours (each row its own task's low-rank product, gathered per row,
beside soft-prompt rows) against one soft-prompt task alone, and against peft's own mixed-adapter
inference (one PeftModel with an adapter per task, ``adapter_names`` naming each row's).

    python benchmarks/lora_mix.py --backbone smollm2-135m --lora-tasks 100 --prompt-tasks 100 --texts 512 --threads 2

Four streams of the same texts, classified in batches of ``--batch``, timed in alternating rounds
(median): 1. one prompt-tuning task; 2. ``--lora-tasks`` LoRA tasks and ``--prompt-tasks`` prompt
tasks, a random task per text; 3. the LoRA tasks alone, a random one per text; 4. that same stream
through peft with ``adapter_names``. The LoRA weights are random (peft's ``init_lora_weights=False``,
r 8 on q_proj and v_proj, seeded per task) and the prompts untrained (20 vocabulary tokens): speed
does not depend on what they learned. Ours reads each task's weights from peft's state, and the
script reports how often the two agree, one text at a time. Prints a table, writes
benchmarks/results/lora_mix.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from mixed_inference import stream_flags
from server_load import write_results
from train_speed import load_examples, synchronize

RESULTS = Path(__file__).parent / "results"
TEMPLATE = "Review: {text}\nSentiment:"
WORDS = {"positive": "positive", "negative": "negative"}


def build_ours(args: argparse.Namespace):
    """Our mixed classifier over LoRA tasks (their weights read from peft's state) and prompt tasks."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from softprompt.backbones import load_backbone
    from softprompt.config import PromptConfig
    from softprompt.core.prompt_caches import PromptCaches
    from softprompt.methods.row_adapters import read_row_adapter
    from softprompt.prompts import Template, Verbalizer
    from softprompt.tasks.classification import build_classifier
    from softprompt.tasks.classification.mixed import MixedPromptClassifier

    backbone = load_backbone(args.backbone, args.device, args.precision)
    prompt = Template(f"{{soft:{args.soft}}}" + TEMPLATE)
    models = {
        f"prompt{i}": build_classifier(
            backbone, "prompt_tuning", prompt, Verbalizer(WORDS), PromptConfig(args.soft, "vocab"), i, 256
        )
        for i in range(max(1, args.prompt_tasks))
    }
    # peft, on a backbone of its own (it injects its layers into the model it is given).
    theirs = load_backbone(args.backbone, args.device, args.precision)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = [f"lora{i}" for i in range(args.lora_tasks)]
    torch.manual_seed(0)
    peft_model = get_peft_model(theirs.model, config, adapter_name=lora[0])
    for name in lora[1:]:
        peft_model.add_adapter(name, config)
    peft_model.eval()
    for name in lora:
        state = get_peft_model_state_dict(peft_model, adapter_name=name)
        model = build_classifier(backbone, "none", Template(TEMPLATE), Verbalizer(WORDS), PromptConfig(), 0, 256)
        model.row_adapter = read_row_adapter("lora", state, lora_alpha=16)  # peft's names, as artifacts hold
        models[name] = model
    mixed = MixedPromptClassifier(models, PromptCaches(backbone))  # the server's setting: caches kept
    return theirs, mixed, peft_model, lora


def run_ours(mixed, stream, batch: int) -> list[int]:
    from softprompt.data.records import Example
    from softprompt.tasks.classification.mixed import classify_mixed

    probabilities = classify_mixed(mixed, [(task, Example({"text": text})) for task, text in stream], batch)
    return [int(p.argmax()) for p in probabilities]


def run_peft(peft_model, backbone, stream, batch: int) -> list[int]:
    """peft's mixed-adapter inference: one forward per batch, ``adapter_names`` per row."""
    import torch

    tokenizer = backbone.tokenizer
    tokenizer.padding_side = "left"
    word_ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS.values()]
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(stream), batch):
            chunk = stream[start : start + batch]
            encoded = tokenizer(
                [TEMPLATE.format(text=text) for _, text in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            encoded = {k: v.to(backbone.device) for k, v in encoded.items()}
            names = [task for task, _ in chunk]
            logits = peft_model(**encoded, adapter_names=names, logits_to_keep=1).logits[:, -1, word_ids]
            predictions += logits.argmax(-1).tolist()
    return predictions


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-tasks", type=int, default=100)
    parser.add_argument("--prompt-tasks", type=int, default=100)
    stream_flags(parser, 64, RESULTS / "lora_mix.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    theirs, mixed, peft_model, lora = build_ours(args)
    texts = [e.text for e in load_examples(args.texts, args.texts_file, "test")]
    rng = random.Random(0)
    prompts = [name for name in mixed.tasks if name.startswith("prompt")][: args.prompt_tasks]
    streams = {
        "1 prompt task": [("prompt0", text) for text in texts],
        f"{len(lora)} LoRA + {len(prompts)} prompt tasks": [(rng.choice(lora + prompts), text) for text in texts],
        f"{len(lora)} LoRA tasks": [(rng.choice(lora), text) for text in texts],
    }
    lora_stream = streams[f"{len(lora)} LoRA tasks"]
    runs = {name: (lambda s=stream: run_ours(mixed, s, args.batch)) for name, stream in streams.items()}
    runs[f"{len(lora)} LoRA tasks, peft adapter_names"] = lambda: run_peft(peft_model, theirs, lora_stream, args.batch)
    sample = lora_stream[: args.check]
    ours_alone = [run_ours(mixed, [row], 1)[0] for row in sample]
    peft_alone = [run_peft(peft_model, theirs, [row], 1)[0] for row in sample]
    agreement = sum(a == b for a, b in zip(ours_alone, peft_alone, strict=True)) / len(sample)
    print(f"ours and peft agree on {100 * agreement:.1f}% of {len(sample)} texts, one at a time", file=sys.stderr)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
        for name in order:
            synchronize(args.device)
            start = time.perf_counter()
            runs[name]()
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_index + 1} {name}: {seconds[name][-1]:.1f} s", file=sys.stderr)
    rate = {name: len(texts) / statistics.median(values) for name, values in seconds.items()}
    names = list(runs)
    ratios = {
        "LoRA + prompt mix / 1 prompt task": rate[names[1]] / rate[names[0]],
        "ours / peft adapter_names (LoRA tasks)": rate[names[2]] / rate[names[3]],
    }
    setting = (
        f"{args.backbone}, {args.device} {args.precision}, {len(texts)} texts, batch {args.batch}, "
        f"{args.threads} threads, median of {args.rounds} alternating rounds"
    )
    print(f"\n{setting}\n\n| stream | texts/s |\n|---|---|")
    for name in names:
        print(f"| {name} | {rate[name]:.1f} |")
    print()
    for what, value in ratios.items():
        print(f"{what}: {value:.2f}x")
    print(f"ours and peft agree on {100 * agreement:.1f}% of {len(sample)} texts (one at a time)")
    results = {"setting": setting, "seconds": seconds, "texts_per_second": rate, "ratios": ratios}
    write_results({**results, "agreement_one_at_a_time": agreement, "checked": len(sample)}, args.out)


if __name__ == "__main__":
    main()
