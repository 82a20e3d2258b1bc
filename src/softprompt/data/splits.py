"""A run's train / dev / test data: from files, a built-in dataset, or in-memory records.

Every task reads its splits through here, so held-out dev sets, ``data.max_train`` and
``data.max_eval`` behave the same whatever the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from softprompt.config import RunConfig
from softprompt.data.records import Example, examples_from_records, read_examples, sample, seeded_split
from softprompt.errors import SoftpromptError

DEFAULT_DATASET = "rotten-tomatoes"  # whose template and verbalizer a model built without data uses
SPLITS = ("train", "dev", "test")

Records = Iterable[Mapping[str, Any]]  # a list of dicts, a datasets.Dataset, or a DataFrame (read by rows)


@dataclass
class Splits:
    """Train/dev/test examples (tagged sentences for NER) and a description of their source."""

    train: list[Any]
    dev: list[Any]
    test: list[Any]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def where(self, split: str) -> str:
        """Where a split came from, for messages."""
        return str(self.source.get(split) or self.source.get("dataset"))


def assemble_splits(
    config: RunConfig, read: Callable[[str], tuple[list[Any], list[str]]], source: dict[str, Any]
) -> Splits:
    """Splits of the sources ``source`` names (``data.train/dev/test`` files, or in-memory records,
    which replace the files), each read by ``read(name)`` into (items, notes); with no dev source,
    dev is held out of train."""
    train, notes = read("train")
    if source.get("dev"):
        dev, more = read("dev")
        notes = notes + more
    else:
        train, dev = hold_out_dev(train, config, notes)
    test: list[Any] = []
    if source.get("test"):
        test, more = read("test")
        notes = notes + more
    return limit(Splits(train, dev, test, source, notes), config)


def example_splits(config: RunConfig, records: dict[str, Records] | None = None) -> Splits:
    """Labelled examples of ``data.train/dev/test`` files, of in-memory ``records`` (split name
    -> records), or of the built-in dataset."""
    from softprompt.datasets import load_builtin  # late: reads package data

    data = config.data
    fields = {"text_field": data.text_field, "label_field": data.label_field}
    if records:
        if "train" not in records:
            raise SoftpromptError("in-memory data needs train_data (and optionally dev_data, test_data)")

        def from_memory(name: str) -> tuple[list[Example], list[str]]:
            dataset = examples_from_records(records[name], f"{name}_data", data.text_field, data.label_field)
            return dataset.examples, dataset.notes

        source = {name: f"{name}_data (in memory)" for name in records} | fields
        return assemble_splits(config, from_memory, source)
    if data.train:

        def from_file(name: str) -> tuple[list[Example], list[str]]:
            dataset = read_examples(getattr(data, name), data.text_field, data.label_field, key=name)
            return dataset.examples, dataset.notes

        source = {"train": data.train, "dev": data.dev, "test": data.test} | fields
        return assemble_splits(config, from_file, source)
    if not config.dataset:  # never a silent default: a run on data the user did not choose misleads
        raise SoftpromptError(
            "no training data: set data.train=FILE (train_data=[...] from Python) or a built-in "
            f"dataset=NAME (softprompt ls datasets; the demo uses dataset={DEFAULT_DATASET})"
        )
    name = config.dataset
    raw = load_builtin(name, data.path)
    source = {"dataset": name, **({"path": data.path} if data.path else {})}
    return limit(Splits(raw["train"], raw["dev"], raw["test"], source), config)


def limit(splits: Splits, config: RunConfig) -> Splits:
    """Apply ``data.max_train`` / ``data.max_eval`` (seeded samples). A split cut short is recorded
    in ``splits.source["samples"]`` (``{split: {"n": kept, "of": all}}``), so that scores on it
    are never reported as the whole split's (the model card marks them)."""
    caps = {"train": config.data.max_train, "dev": config.data.max_eval, "test": config.data.max_eval}
    for name, cap in caps.items():
        whole = getattr(splits, name)
        kept = sample(whole, cap, seed=config.seed)
        if len(kept) < len(whole):
            splits.source.setdefault("samples", {})[name] = {"n": len(kept), "of": len(whole)}
        setattr(splits, name, kept)
    return splits


def hold_out_dev(train: list, config: RunConfig, notes: list[str]) -> tuple[list, list]:
    """Seeded train/dev split of the training data when no dev data is given."""
    if len(train) < 2:
        raise SoftpromptError(f"{config.data.train or 'train_data'}: need at least 2 examples to hold out a dev split")
    held = seeded_split(train, {"dev": min(config.data.dev_size, len(train) // 5 or 1)}, seed=config.seed)
    notes.append(f"held out {len(held['dev'])} training examples as dev (no dev data given)")
    return held["train"], held["dev"]
