"""Scoring examples with a classifier, and the classification metrics."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from softprompt.data import Example
from softprompt.model import PromptedClassifier
from softprompt.prompts import EncodedInput


@torch.inference_mode()
def label_probabilities(
    model: PromptedClassifier,
    examples: list[Example],
    batch_size: int = 32,
    encoded: list[EncodedInput] | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """``[N, num_labels]`` probabilities over the labels.

    Rows are batched in order of length (less padding; results are put back in input order).
    """
    encoded = encoded if encoded is not None else [model.task.encode(ex) for ex in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    out = torch.empty(len(encoded), len(model.task.labels))
    starts = range(0, len(order), batch_size)
    bar = tqdm(starts, desc=progress, leave=False, disable=progress is None, unit="batch")
    for start in bar:
        index = order[start : start + batch_size]
        batch = model.task.collate([encoded[i] for i in index])
        out[index] = model(batch).exp().float()
    return out


def classification_metrics(predicted: list[int], gold: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label F1."""
    total = len(gold)
    correct = sum(p == g for p, g in zip(predicted, gold, strict=True))
    per_label = {}
    for index, label in enumerate(labels):
        tp = sum(p == index and g == index for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == index and g != index for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != index and g == index for p, g in zip(predicted, gold, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        per_label[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / total if total else 0.0,
        "macro_f1": sum(per_label.values()) / len(labels) if labels else 0.0,
        "f1": per_label,
        "n": total,
    }


def evaluate(
    model: PromptedClassifier,
    examples: list[Example],
    batch_size: int = 32,
    encoded: list[EncodedInput] | None = None,
    where: str = "data",
    progress: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on labelled ``examples``."""
    gold = model.task.label_ids(examples, where)
    probabilities = label_probabilities(model, examples, batch_size, encoded, progress)
    return classification_metrics(probabilities.argmax(-1).tolist(), gold, model.task.labels)
