"""The gate a retrained version passes before it may replace its parent: at least as good on the
newest feedback (held out of its training), and no more than a small tolerance worse on the
parent's own dev split. Both figures of both versions come from the same run.

Plain numbers in, a record out (no torch): ``task.json``'s ``lineage.gate`` and the one line
the command prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.feedback import CLASSIFY, GENERATE

# Figures computed in one run from the same rows are exactly comparable; this only absorbs the
# last bit of a float sum (chrF) so that equal figures count as equal.
EPSILON = 1e-9


@dataclass(frozen=True)
class GateMetric:
    """The metric the gate compares for one kind of feedback, on a 0-1 scale (accuracy as it is,
    chrF divided by 100, as the shadow comparison reports it).

    Attributes:
        key: its name in the task's evaluation metrics.
        label: how messages name it.
        scale: what the task's figure is divided by to bring it to 0-1 (100 for sacrebleu's chrF).
        allowed_drop: how far the candidate's dev score may fall below the parent's (0-1 scale;
            negative: it must rise by that much).
        percent: shown as a percentage (accuracy) rather than as points (chrF).
    """

    key: str
    label: str
    scale: float
    allowed_drop: float
    percent: bool

    def shown(self, value: float) -> str:
        return f"{100 * value:.1f}" + ("%" if self.percent else "")

    def tolerance(self) -> str:
        """The dev tolerance in words."""
        amount = f"{100 * abs(self.allowed_drop):.1f} points"
        return f"at most {amount} lower" if self.allowed_drop >= 0 else f"at least {amount} higher"


# The default dev tolerance: 0.5 accuracy points; 0.01 of chrF's 0-1 scale (1 point of sacrebleu's 100).
DEFAULT_DROP = {CLASSIFY: 0.005, GENERATE: 0.01}
METRICS = {CLASSIFY: ("accuracy", "accuracy", 1.0, True), GENERATE: ("chrf", "chrF", 100.0, False)}


def gate_metric(kind: str, max_dev_drop: float | None = None) -> GateMetric:
    """The gate's metric for feedback of ``kind``, with the dev tolerance ``max_dev_drop`` (0-1
    scale; None: the default)."""
    if kind not in METRICS:
        raise SoftpromptError(f"feedback of kind '{kind}' has no gate (classify or generate)")
    key, label, scale, percent = METRICS[kind]
    return GateMetric(key, label, scale, DEFAULT_DROP[kind] if max_dev_drop is None else max_dev_drop, percent)


def judge(metric: GateMetric, held_out: dict[str, Any], dev: dict[str, Any]) -> dict[str, Any]:
    """The gate's record: ``held_out`` and ``dev`` each ``{"parent", "candidate", "n"}``; it
    passes when the candidate is at least the parent on held-out feedback and at most
    ``allowed_drop`` below it on dev. ``failed`` lists the figures that did not hold."""
    failed = []
    if held_out["candidate"] < held_out["parent"] - EPSILON:
        failed.append("held_out")
    if dev["candidate"] < dev["parent"] - metric.allowed_drop - EPSILON:
        failed.append("dev")
    return {
        "metric": metric.key,
        "allowed_dev_drop": metric.allowed_drop,
        "held_out": held_out,
        "dev": dev,
        "passed": not failed,
        "failed": failed,
    }


def verdict(metric: GateMetric, gate: dict[str, Any]) -> str:
    """One line: each figure of the candidate beside its parent's, and which failed."""
    held, dev = gate["held_out"], gate["dev"]
    parts = {
        "held_out": (
            f"held-out feedback {metric.label} {metric.shown(held['candidate'])} vs the parent's "
            f"{metric.shown(held['parent'])} (n={held['n']}; it must not be lower)"
        ),
        "dev": (
            f"dev {metric.label} {metric.shown(dev['candidate'])} vs the parent's {metric.shown(dev['parent'])} "
            f"(n={dev['n']}; {metric.tolerance()})"
        ),
    }
    if gate["passed"]:
        return "gate passed: " + "; ".join(parts.values())
    return "gate failed: " + "; ".join(parts[name] for name in gate["failed"])
