"""Feedback on served answers: what a feedback must say for its task (checked before it is
stored), the training rows it becomes (``softprompt feedback export``), and the figures per task
and version (``softprompt feedback stats``).

A feedback gives one of: a ``label`` (a classification task's right label), an ``output`` (a
generation task's corrected text) or a ``score`` in [-1, 1] (how good the served answer was).
A positive score confirms the served answer, so it exports as a row with that answer; a zero or
negative score says only that the answer was not right, so it counts in the figures but trains
nothing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from softprompt.lifecycle.store import Feedback, Store

CLASSIFY, GENERATE = "classify", "generate"
ROUTE_KINDS = {"classify": CLASSIFY, "generate": GENERATE, "completions": GENERATE, "chat": GENERATE}


class FeedbackProblem(Exception):
    """A feedback that cannot be stored: ``status`` is its HTTP status (404 unknown, 400 wrong)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskShape:
    """What a served task takes as feedback: its kind and, for a classifier, its labels."""

    kind: str
    labels: tuple[str, ...] = ()


def input_text(route: str, given: Any) -> str:
    """The text a captured input trains on: the text or prompt itself; for chat, the last user
    message (the task's template renders it, as it rendered the conversation's content)."""
    if isinstance(given, str):
        return given
    if route == "chat" and isinstance(given, list):
        users = [m.get("content", "") for m in given if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return str(users[-1])
    return json.dumps(given, ensure_ascii=False)


def served_answer(route: str, output: Any) -> str | None:
    """The answer a captured output gave: the label, or the (first) generated text."""
    if route == "classify" and isinstance(output, dict):
        return output.get("label")
    if isinstance(output, list) and output:
        return str(output[0])
    return output if isinstance(output, str) else None


def feedback_on(
    answer: dict[str, Any] | None,
    request_id: str,
    shape: TaskShape | None,
    label: str | None,
    output: str | None,
    score: float | None,
) -> Feedback:
    """The feedback row for a served request (``answer``: its captured row, None when unknown).

    Raises:
        FeedbackProblem: an unknown id (404), or a label or output that does not fit the task (400).
    """
    if answer is None:
        raise FeedbackProblem(
            404,
            f"unknown request id '{request_id[:100]}': no captured answer has it (ids of requests "
            "not sampled by serve --capture-rate, or dropped by --capture-max-rows, are not kept)",
        )
    kind = ROUTE_KINDS.get(answer["route"], GENERATE)
    shape = shape if shape is not None and shape.kind == kind else TaskShape(kind)
    check_fits(answer["task"], shape, label, output)
    return Feedback(
        task=answer["task"],
        kind=kind,
        text=input_text(answer["route"], answer["input"]),
        request_id=request_id,
        version=answer["version"],
        answer=served_answer(answer["route"], answer["output"]),
        label=label,
        output=output,
        score=score,
    )


def feedback_on_text(
    task: str, text: str, shape: TaskShape, label: str | None, output: str | None, score: float | None
) -> Feedback:
    """A labelled text with no served request (``{"task", "text", "label"|"output"}``)."""
    if score is not None:
        raise FeedbackProblem(400, "score: a score rates a served answer; give an id (or a label or output)")
    check_fits(task, shape, label, output)
    return Feedback(task=task, kind=shape.kind, text=text, label=label, output=output)


def check_fits(task: str, shape: TaskShape, label: str | None, output: str | None) -> None:
    """A label only for a classifier and among its labels; an output only for a generation task."""
    if label is not None and shape.kind != CLASSIFY:
        raise FeedbackProblem(400, f"label: task '{task}' generates text; give its corrected text as output")
    if output is not None and shape.kind != GENERATE:
        raise FeedbackProblem(400, f"output: task '{task}' classifies; give the right label as label")
    if label is not None and shape.labels and label not in shape.labels:
        known = ", ".join(shape.labels)
        raise FeedbackProblem(400, f"label: '{label[:100]}' is not a label of task '{task}' ({known})")


def training_row(row: dict[str, Any]) -> dict[str, str] | None:
    """The row ``softprompt train`` reads for a feedback in force (None: it trains nothing)."""
    target = row["label"] if row["kind"] == CLASSIFY else row["output"]
    if target is None and row["score"] is not None and row["score"] > 0:
        target = row["answer"]
    if target is None:
        return None
    return {"text": row["text"], "label" if row["kind"] == CLASSIFY else "target": target}


def training_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    for row in rows:
        trained = training_row(row)
        if trained is not None:
            yield trained


def is_correct(row: dict[str, Any]) -> bool | None:
    """Whether the served answer was right by this feedback (None: no served answer to judge)."""
    if row["answer"] is None:
        return None
    if row["score"] is not None:
        return row["score"] > 0
    given = row["label"] if row["kind"] == CLASSIFY else row["output"]
    return given == row["answer"]


def figures(requests: dict[tuple[str, str], int], rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and version: served requests, feedback in force, its share of the requests, and
    the served answers' accuracy by that feedback (None where no feedback judged one)."""
    judged: dict[tuple[str, str], list[bool]] = defaultdict(list)
    given: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        key = (row["task"], row["version"] or "")
        given[key] += 1
        correct = is_correct(row)
        if correct is not None:
            judged[key].append(correct)
    out = []
    for task, version in sorted(set(requests) | set(given)):
        served, count, marks = requests.get((task, version), 0), given[(task, version)], judged[(task, version)]
        out.append(
            {
                "task": task,
                "version": version,
                "requests": served,
                "feedback": count,
                "feedback_share": count / served if served else None,
                "accuracy": sum(marks) / len(marks) if marks else None,
                "judged": len(marks),
            }
        )
    return out


def compare_on_feedback(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The live version's and a shadow candidate's score on the feedback for requests both
    answered: accuracy for labels, mean chrF (sacrebleu) for corrected outputs."""
    labelled = [r for r in rows if r["label"] is not None]
    corrected = [r for r in rows if r["label"] is None and r["output"] is not None]
    out: dict[str, Any] = {"n": len(rows)}
    if labelled:
        for side in ("live", "candidate"):
            out[f"{side}_accuracy"] = sum(r[side].get("label") == r["label"] for r in labelled) / len(labelled)
    if corrected:
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        for side in ("live", "candidate"):
            scores = [chrf.sentence_score(str((r[side] or [""])[0]), [r["output"]]).score / 100 for r in corrected]
            out[f"{side}_chrf"] = sum(scores) / len(scores)
    return out


def accuracy_by_version(store: Store, task: str) -> list[dict[str, Any]]:
    """Task ``task``'s :func:`figures` per version, from ``store``."""
    return figures(store.request_counts(task), store.latest_feedback(task))


def shadow_comparison(store: Store, task: str, live: str, candidate: str) -> dict[str, Any]:
    """The live version and its shadow candidate judged on the feedback for requests both
    answered (:func:`compare_on_feedback`), from ``store``."""
    return compare_on_feedback(store.both_answered(task, live, candidate))
