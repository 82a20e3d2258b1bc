"""Watching a served classifier for drift: the last ``window`` answers of each task against the
reference its artifact recorded at training time (its dev split's predicted label shares and
confidence bins; ``tasks.classification.metrics.prediction_profile``).

The statistic is the population stability index (PSI), ``sum((a - e) * ln(a / e))`` over bins,
taken for the confidence bins and for the label shares; the drift score is the larger. PSI
rather than a two-sample test: the reference is ten numbers per artifact (a test needs the raw
dev scores), the label shares are categorical (a Kolmogorov-Smirnov test is not), and its scale
is the one risk teams already read: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a
major one (the default alert threshold). With 10 bins, a window of 200 and ~1,000 dev rows, the
PSI of two samples of the same distribution is about 0.05, so the threshold sits well above noise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from softprompt.tasks.classification.metrics import CONFIDENCE_BINS, confidence_bin

FLOOR = 1e-4  # an empty bin's share, so that the logarithm stays finite


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of shares ``actual`` against ``expected`` (same bins)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, FLOOR), max(a, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def drift_score(reference: dict[str, Any], names: list[str], labels: list[str], confidences: list[float]) -> float:
    """The drift score of answers (their ``labels`` and top-label ``confidences``) against an
    artifact's ``reference``: the larger PSI of the confidence bins and of the shares of the
    label ``names``."""
    bins = [0.0] * CONFIDENCE_BINS
    for confidence in confidences:
        bins[confidence_bin(confidence)] += 1 / len(confidences)
    shares = [sum(label == name for label in labels) / len(labels) for name in names]
    expected = [reference["label_shares"].get(name, 0.0) for name in names]
    return max(psi(reference["confidence_bins"], bins), psi(expected, shares))


@dataclass
class Window:
    """A task's last answers (label index and confidence) and feedback (right or wrong)."""

    labels: list[str]
    reference: dict[str, Any] | None
    size: int
    answers: deque = field(default_factory=deque)
    judged: deque = field(default_factory=deque)

    def observe(self, label: str, confidence: float) -> None:
        self.answers.append((label, confidence))
        if len(self.answers) > self.size:
            self.answers.popleft()

    def feedback(self, correct: bool) -> None:
        self.judged.append(correct)
        if len(self.judged) > self.size:
            self.judged.popleft()

    def label_shares(self) -> dict[str, float]:
        n = len(self.answers) or 1
        shares = dict.fromkeys(self.labels, 0.0)
        for label, _ in self.answers:
            if label in shares:
                shares[label] += 1 / n
        return shares

    def mean_confidence(self) -> float | None:
        return sum(c for _, c in self.answers) / len(self.answers) if self.answers else None

    def feedback_accuracy(self) -> float | None:
        return sum(self.judged) / len(self.judged) if self.judged else None

    def score(self) -> float | None:
        """The drift score (None: no reference, or fewer than half a window of answers yet)."""
        if self.reference is None or len(self.answers) < max(1, self.size // 2):
            return None
        labels, confidences = zip(*self.answers, strict=True)
        return drift_score(self.reference, self.labels, list(labels), list(confidences))


class DriftMonitor:
    """One :class:`Window` per served classifier; a task's window starts again when its live
    version (and so its reference) changes."""

    def __init__(self, window: int = 200, threshold: float = 0.25):
        self.size, self.threshold = window, threshold
        self.windows: dict[str, Window] = {}
        self.versions: dict[str, str] = {}  # the version each window watches

    def observe(self, task: str, version: str, model: Any, answer: dict[str, Any]) -> None:
        """Count ``answer`` (a label and its ``scores``) of ``task``'s live ``version``, a
        classifier carrying its artifact's ``drift_reference``."""
        if self.versions.get(task) != version:
            reference = getattr(model, "drift_reference", None)
            usable = reference if reference and {"confidence_bins", "label_shares"} <= set(reference) else None
            self.windows[task] = Window(list(model.task.labels), usable, self.size)
            self.versions[task] = version
        self.windows[task].observe(answer["label"], answer["scores"][answer["label"]])

    def feedback(self, task: str, correct: bool) -> None:
        window = self.windows.get(task)
        if window is not None:
            window.feedback(correct)

    def alert(self, score: float | None) -> bool:
        return score is not None and score >= self.threshold
