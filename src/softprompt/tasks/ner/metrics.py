"""NER metrics: entity-level precision/recall/F1 by the CoNLL convention (via seqeval), per
type, and a confusion table of entity types over spans."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from softprompt.data.conll import OUTSIDE, Sentence, entity_spans
from softprompt.tasks.base import TaskModel


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
    """Entity metrics of a :class:`~softprompt.tasks.ner.model.TokenTagger` on tagged ``sentences``."""
    if encoded is None:  # windows encoded with ``where`` were checked already
        for sentence in sentences:
            model.task.tag_ids(sentence, where)  # an unknown tag is an error, not a silent miss
    windows = sum(len(w) for w in encoded) if encoded is not None else None
    with tqdm(total=windows, desc=progress, leave=False, disable=progress is None, unit="row") as bar:
        predicted = model.predict(sentences, batch_size, encoded, bar)
    return entity_metrics([s.tags for s in sentences], predicted)
