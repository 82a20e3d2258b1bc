"""Classification metrics: accuracy, macro-F1 and F1 per label, from scikit-learn.

Every label of the verbalizer counts in the macro average, also one that neither the gold
labels nor the predictions hold (its F1 is 0, as scikit-learn's ``zero_division=0`` gives).
"""

from __future__ import annotations

from typing import Any


def classification_metrics(predicted: list[int], gold: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label F1 of label indices ``predicted`` against ``gold``."""
    if not gold:
        return {"accuracy": 0.0, "macro_f1": 0.0, "f1": dict.fromkeys(labels, 0.0), "n": 0}
    # Imported here: scikit-learn brings pandas and pyarrow (about 100 MB), which a server,
    # importing this module for its prediction profiles, never needs.
    from sklearn.metrics import accuracy_score, f1_score

    indices = list(range(len(labels)))
    per_label = f1_score(gold, predicted, labels=indices, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(per_label.mean()) if labels else 0.0,
        "f1": {label: float(value) for label, value in zip(labels, per_label, strict=True)},
        "n": len(gold),
    }


CONFIDENCE_BINS = 10  # equal bins of the top label's probability over [0, 1]


def confidence_bin(confidence: float) -> int:
    """The bin of a top-label probability (1.0 falls in the last bin)."""
    return min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)


def prediction_profile(probabilities: list[list[float]], labels: list[str]) -> dict[str, Any]:
    """What a model predicts on a split, without the gold labels: the share of each predicted
    label, and how its top-label probability (confidence) is spread over ten equal bins. An
    artifact records its dev split's profile; a server compares its traffic's against it (drift)."""
    n = len(probabilities)
    shares = dict.fromkeys(labels, 0.0)
    bins = [0.0] * CONFIDENCE_BINS
    for row in probabilities:
        best = max(range(len(row)), key=row.__getitem__)
        shares[labels[best]] += 1 / n
        bins[confidence_bin(row[best])] += 1 / n
    mean = sum(max(row) for row in probabilities) / n if n else 0.0
    return {"label_shares": shares, "confidence_bins": bins, "mean_confidence": mean, "n": n}
