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


def plot_comparison(rows: list[dict[str, Any]], path: Path, context: dict[str, Any]) -> None:
    """Left: test metric per row (methods and baselines). Right: metric vs trainable parameters."""
    done = [r for r in rows if r["test_metric"] is not None]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 0.45 * len(done) + 2.5))
    names = [r["name"] if len(r["name"]) < 28 else r["name"][:26] + "…" for r in done]
    colors = ["tab:blue" if r["kind"] == "method" else "tab:gray" for r in done]
    bars.barh(names, [100 * r["test_metric"] for r in done], color=colors)
    bars.invert_yaxis()
    bars.set_xlabel(f"{context['evaluated_on'].split()[0]} metric (%)")
    low = min(100 * r["test_metric"] for r in done)
    bars.set_xlim(max(0, low - 10), 100)
    for y, r in enumerate(done):
        bars.text(100 * r["test_metric"], y, f" {100 * r['test_metric']:.1f}", va="center", fontsize=8)
    trained = [r for r in done if r["trainable_parameters"]]
    scatter.scatter([r["trainable_parameters"] for r in trained], [100 * r["test_metric"] for r in trained])
    for r in trained:
        scatter.annotate(r["name"], (r["trainable_parameters"], 100 * r["test_metric"]), fontsize=8)
    scatter.set_xscale("log")
    scatter.set_xlabel("trainable parameters (log)")
    scatter.set_ylabel("metric (%)")
    fig.suptitle(f"{context['backbone']} on {context['data']}: {context['max_steps']} steps each", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
