"""Classification metrics: accuracy, macro-F1 and F1 per label."""

from __future__ import annotations

from typing import Any


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
