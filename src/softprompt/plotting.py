"""PNG plots written next to artifacts (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from softprompt.atomic import atomic_write


def plot_training_curves(history: list[dict[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Training loss per step and the dev metric at each evaluation."""
    train = [h for h in history if "loss" in h]
    dev = [h for h in history if "dev" in h]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([h["step"] for h in train], [h["loss"] for h in train], color="tab:blue", lw=1, label="train loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    if dev:
        metric_axis = loss_axis.twinx()
        metric_axis.plot(
            [h["step"] for h in dev], [h["dev"] for h in dev], "o-", color="tab:orange", label=f"dev {metric}"
        )
        metric_axis.set_ylabel(f"dev {metric}", color="tab:orange")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
