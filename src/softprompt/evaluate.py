"""Scoring examples with a task model, and the metrics: classification (accuracy, F1 per label)
and NER (entity-level precision/recall/F1 by the CoNLL convention, via seqeval)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from softprompt.conll import OUTSIDE, Sentence, entity_spans
from softprompt.data import Example
from softprompt.model import PromptedClassifier
from softprompt.prompts import EncodedInput
from softprompt.task_model import TaskModel


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
        out[index] = model(batch).exp().float().cpu()
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


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 and per type (conlleval-compatible), and a confusion
    table of entity types over spans: ``confusion[gold type][predicted type]``, where ``O`` as
    gold type counts spurious predicted entities and as predicted type missed gold ones."""
    from seqeval.metrics import classification_report  # late: only NER needs it

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    per_type = {
        kind: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"], "support": int(r["support"])}
        for kind, r in report.items()
        if not kind.endswith(" avg")
    }
    return {
        "f1": micro["f1-score"],
        "precision": micro["precision"],
        "recall": micro["recall"],
        "per_type": per_type,
        "confusion": span_confusion(gold, predicted),
        "n": len(gold),
        "entities": int(micro["support"]),
    }


def span_confusion(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict[str, int]]:
    """Counts of (gold type, predicted type) over entity spans matched exactly by their words."""
    table: dict[str, dict[str, int]] = {}

    def count(row: str, column: str) -> None:
        table.setdefault(row, {})
        table[row][column] = table[row].get(column, 0) + 1

    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        truth = {(first, last): kind for kind, first, last in entity_spans(gold_tags)}
        guess = {(first, last): kind for kind, first, last in entity_spans(predicted_tags)}
        for span, kind in truth.items():
            count(kind, guess.get(span, OUTSIDE))
        for span, kind in guess.items():
            if span not in truth:
                count(OUTSIDE, kind)
    return table


def evaluate_tagger(
    model: TaskModel,
    sentences: list[Sentence],
    batch_size: int = 32,
    encoded: list | None = None,
    where: str = "data",
    progress: str | None = None,
) -> dict[str, Any]:
    """Entity metrics of a :class:`~softprompt.tagger.TokenTagger` on tagged ``sentences``."""
    if encoded is None:  # windows encoded with ``where`` were checked already
        for sentence in sentences:
            model.task.tag_ids(sentence, where)  # an unknown tag is an error, not a silent miss
    windows = sum(len(w) for w in encoded) if encoded is not None else None
    with tqdm(total=windows, desc=progress, leave=False, disable=progress is None, unit="row") as bar:
        predicted = model.predict(sentences, batch_size, encoded, bar)
    return entity_metrics([s.tags for s in sentences], predicted)


def evaluate(
    model: TaskModel,
    examples: list,
    batch_size: int = 32,
    encoded: list | None = None,
    where: str = "data",
    progress: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on labelled ``examples`` (tagged sentences for a tagger); a model with
    its own ``evaluate_examples`` (the generator) measures itself."""
    own = getattr(model, "evaluate_examples", None)
    if own is not None:
        return own(examples, batch_size, encoded, where, progress)
    if not isinstance(model, PromptedClassifier):
        return evaluate_tagger(model, examples, batch_size, encoded, where, progress)
    gold = model.task.label_ids(examples, where)
    probabilities = label_probabilities(model, examples, batch_size, encoded, progress)
    return classification_metrics(probabilities.argmax(-1).tolist(), gold, model.task.labels)
