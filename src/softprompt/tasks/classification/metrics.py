"""Classification metrics: accuracy, macro-F1 and F1 per label, from scikit-learn.

Every label of the verbalizer counts in the macro average, also one that neither the gold
labels nor the predictions hold (its F1 is 0, as scikit-learn's ``zero_division=0`` gives).
"""

from __future__ import annotations

from typing import Any

from sklearn.metrics import accuracy_score, f1_score


def classification_metrics(predicted: list[int], gold: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label F1 of label indices ``predicted`` against ``gold``."""
    if not gold:
        return {"accuracy": 0.0, "macro_f1": 0.0, "f1": dict.fromkeys(labels, 0.0), "n": 0}
    indices = list(range(len(labels)))
    per_label = f1_score(gold, predicted, labels=indices, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(per_label.mean()) if labels else 0.0,
        "f1": {label: float(value) for label, value in zip(labels, per_label, strict=True)},
        "n": len(gold),
    }
