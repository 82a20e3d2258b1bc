"""Train the ``classifier`` toxicity scorer that ships in the package (src/softprompt/tasks/generation/toxicity_scorer).

A LoRA on MiniLM-L6 (a few hundred KB) separating ParaDetox's toxic sentences from their
human-written neutral paraphrases, trained by softprompt itself. Pairs are split by a seeded
shuffle, so a toxic sentence and its paraphrase never sit in different splits.

    python scripts/train_toxicity_scorer.py ../shared/data/paradetox/paradetox.tsv
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from softprompt.cli import main as softprompt
from softprompt.detox.data import read_paradetox
from softprompt.tasks.generation.toxicity import PACKAGED_CLASSIFIER

SHIPPED_FILES = ("task.json", "adapter_config.json", "adapter_model.safetensors")


def write_split(pairs, path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps({"text": pair.toxic, "label": "toxic"}) + "\n")
            for text in pair.neutral[:1]:
                handle.write(json.dumps({"text": text, "label": "neutral"}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paradetox", help="paradetox.tsv")
    parser.add_argument("--out", default=str(PACKAGED_CLASSIFIER), help="where the shipped files go")
    parser.add_argument("overrides", nargs="*", help="extra softprompt train key=value settings")
    args = parser.parse_args()
    pairs = [p for p in read_paradetox(args.paradetox) if p.neutral]
    random.Random(0).shuffle(pairs)
    work = Path(tempfile.mkdtemp(prefix="toxicity-scorer-"))
    splits = {"test": pairs[:1000], "dev": pairs[1000:1500], "train": pairs[1500:]}
    for name, chunk in splits.items():
        write_split(chunk, work / f"{name}.jsonl")
    run = work / "run"
    status = softprompt(
        [
            "train",
            "backbone=minilm-l6",
            "method=lora",
            "template={text}",
            "verbalizer={toxic: toxic, neutral: neutral}",
            f"data.train={work / 'train.jsonl'}",
            f"data.dev={work / 'dev.jsonl'}",
            f"data.test={work / 'test.jsonl'}",
            "train.epochs=1",
            "train.batch_size=32",
            "train.lr=0.001",
            "train.eval_every=100",
            "train.max_length=96",
            f"out={run}",
            *args.overrides,
        ]
    )
    if status:
        return status
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copy(run / name, out / name)
    print(f"scorer written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
