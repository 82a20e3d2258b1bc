"""``softprompt monitor``: a task's life from its capture store, over time and per version:
requests answered, mean confidence, feedback accuracy and drift (PSI against the reference the
version's artifact recorded, when the served folder is given to find it)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from softprompt.lifecycle.drift import drift_score
from softprompt.lifecycle.feedback import is_correct
from softprompt.lifecycle.store import Store, requests

MIN_ROWS_FOR_DRIFT = 20  # fewer answers in a period give a PSI that is mostly noise


def references(folder: str | Path | None) -> dict[str, dict[str, Any]]:
    """The drift reference of every artifact under ``folder`` (the served folder, its kept
    versions included), by version (weights hash)."""
    found: dict[str, dict[str, Any]] = {}
    if folder is None:
        return found
    for task_file in Path(folder).glob("**/task.json"):
        try:
            meta = json.loads(task_file.read_text(encoding="utf-8"))
            reference = meta["metrics"]["dev"]["predicted"]
            found[meta["weights_sha256"]] = reference
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def timeline(store: Store, task: str, periods: int, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per version, per period of equal length between the first and last answer: requests,
    mean confidence, feedback accuracy and drift (None where a period has too little)."""
    query = sa.select(requests.c.time, requests.c.version, requests.c.output).where(
        requests.c.task == task, requests.c.role == "served"
    )
    with store.engine.connect() as db:
        answers = db.execute(query.order_by(requests.c.seq)).all()
    given = list(store.latest_feedback(task))
    times = [a.time for a in answers] + [f["time"] for f in given]
    if not times:
        return {"start": 0.0, "step": 0.0, "versions": {}}
    start, end = min(times), max(times)
    step = max((end - start) / periods, 1e-9)

    def period(moment: float) -> int:
        return min(int((moment - start) / step), periods - 1)

    confidences: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for answer in answers:
        output = json.loads(answer.output)
        slot = confidences[answer.version][period(answer.time)]
        if isinstance(output, dict) and "label" in output:
            slot.append(output["scores"][output["label"]])
            labels[answer.version][period(answer.time)].append(output["label"])
        else:
            slot.append(None)
    judged: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for row in given:
        correct = is_correct(row)
        if correct is not None:
            judged[row["version"] or ""][period(row["time"])].append(correct)
    versions = {}
    for version in sorted(set(confidences) | set(judged)):
        series = []
        for index in range(periods):
            seen = confidences[version].get(index, [])
            scored = [c for c in seen if c is not None]
            marks = judged[version].get(index, [])
            series.append(
                {
                    "requests": len(seen),
                    "confidence": sum(scored) / len(scored) if scored else None,
                    "feedback_accuracy": sum(marks) / len(marks) if marks else None,
                    "drift": drift_of(scored, labels[version].get(index, []), refs.get(version)),
                }
            )
        versions[version] = series
    return {"start": start, "step": step, "versions": versions}


def drift_of(confidences: list[float], labels: list[str], reference: dict[str, Any] | None) -> float | None:
    """The drift score of one period's answers (see :mod:`softprompt.lifecycle.drift`)."""
    if reference is None or len(confidences) < MIN_ROWS_FOR_DRIFT:
        return None
    return drift_score(reference, list(reference["label_shares"]), labels, confidences)


def plot_timeline(data: dict[str, Any], task: str, path: Path, threshold: float = 0.25) -> None:
    """Four panels over time (hours since the first answer), one line per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from softprompt.atomic import atomic_write

    panels = [
        ("requests", "requests"),
        ("confidence", "mean confidence"),
        ("feedback_accuracy", "feedback accuracy"),
        ("drift", "drift (PSI)"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
    for version, series in data["versions"].items():
        hours = [(i + 0.5) * data["step"] / 3600 for i in range(len(series))]
        for axis, (key, _) in zip(axes, panels, strict=True):
            points = [(h, s[key]) for h, s in zip(hours, series, strict=True) if s[key] is not None]
            if points:
                axis.plot(*zip(*points, strict=True), "o-", ms=3, lw=1, label=version[:12] or "(none)")
    for axis, (_, title) in zip(axes, panels, strict=True):
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
    axes[-1].axhline(threshold, color="tab:red", ls="--", lw=1, label=f"alert {threshold:g}")
    axes[-1].set_xlabel("hours since the first answer")
    axes[0].legend(title="version", fontsize=8)
    axes[0].set_title(f"task {task}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
