"""The continual run's report: the accuracy matrix as Markdown and a PNG heat map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.atomic import atomic_write, atomic_write_text
from softprompt.methods import get_method
from softprompt.plotting import plt

METRIC_NAMES = {
    "average_accuracy": "average final accuracy",
    "backward_transfer": "backward transfer (final - just learned; negative = forgetting)",
    "forward_transfer": "forward transfer (before its stage - untrained)",
    "forgetting": "forgetting (best earlier - final)",
    "alone_average_accuracy": "average accuracy, each task trained alone",
    "gap_to_alone": "average final - alone",
}


def _row_names(results: dict[str, Any]) -> list[str]:
    return ["before training"] + [f"after {k + 1}: {s['task']}" for k, s in enumerate(results["stages"])]


def markdown(results: dict[str, Any]) -> str:
    """The accuracy matrix R[i][j] (task j after stage i) and the summary metrics."""
    config = results["config"]
    sequential = get_method(config["method"]).sequential  # its own strategy: none is named
    method = config["method"] + ("" if sequential else f" ({config['strategy']})")
    lines = [
        f"{config['backbone']}, {method}: test accuracy of each task (columns) after each stage (rows)",
        "",
        "| | " + " | ".join(results["tasks"]) + " |",
        "|---|" + "---|" * len(results["tasks"]),
    ]
    for name, row in zip(_row_names(results), results["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}%" for a in row) + " |")
    if results.get("alone"):
        lines.append("| alone | " + " | ".join(f"{100 * a:.1f}%" for a in results["alone"]) + " |")
    lines.append("")
    for key, label in METRIC_NAMES.items():
        value = results["metrics"].get(key)
        if value is not None:
            lines.append(
                f"- {label}: {100 * value:+.1f} points" if "accuracy" not in key else f"- {label}: {100 * value:.1f}%"
            )
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], stem: Path) -> None:
    """``<stem>.md`` and ``<stem>.png`` (the JSON is written by the runner)."""
    atomic_write_text(stem.with_suffix(".md"), markdown(results))
    matrix = results["matrix"]
    fig, axis = plt.subplots(figsize=(1.6 * len(results["tasks"]) + 3, 0.6 * len(matrix) + 1.5))
    image = axis.imshow([[100 * a for a in row] for row in matrix], cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, f"{100 * value:.1f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axis.set_xticks(range(len(results["tasks"])), results["tasks"])
    axis.set_yticks(range(len(matrix)), _row_names(results))
    axis.set_title(f"test accuracy (%), {results['config']['method']}")
    fig.colorbar(image, ax=axis)
    fig.tight_layout()
    atomic_write(stem.with_suffix(".png"), lambda path: fig.savefig(path, format="png", dpi=100))
    plt.close(fig)
