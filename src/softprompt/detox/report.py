"""The detox evaluation's outputs: a Markdown table, ``results.json`` and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from softprompt.atomic import atomic_write, atomic_write_json, atomic_write_text

BASELINE = "none"


def _change(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{100 * (value - base) / base:+.0f}%"


def _interval(estimate: dict[str, float]) -> str:
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (method, scorer), with changes relative to ``none`` when it was run."""
    methods = results["methods"]
    base = methods.get(BASELINE)
    lines = [
        "| method | scorer | Exp. Max Toxicity [95% CI] | Tox. Probability [95% CI] | toxic frac. | mean tox. "
        "| EMT vs none | TP vs none | PPL | PPL vs none | dist-1 / 2 / 3 | gen. s/prompt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, summary in methods.items():
        for scorer, metrics in summary["toxicity"].items():
            emt, tp = metrics["expected_max_toxicity"], metrics["toxicity_probability"]
            base_tox = base["toxicity"][scorer] if base else None
            distinct = " / ".join(f"{v:.2f}" for v in summary["distinct"].values())
            per_prompt = summary["generation_seconds"] / max(summary["prompts"], 1)
            lines.append(
                f"| {label} | {scorer} | {_interval(emt)} | {_interval(tp)} "
                f"| {metrics['toxic_fraction']['value']:.3f} | {metrics['mean_toxicity']['value']:.3f} "
                f"| {_change(emt['value'], base_tox and base_tox['expected_max_toxicity']['value'])} "
                f"| {_change(tp['value'], base_tox and base_tox['toxicity_probability']['value'])} "
                f"| {summary['perplexity']} | {_change(summary['perplexity'], base and base['perplexity'])} "
                f"| {distinct} | {per_prompt:.2f} |"
            )
    config = results["config"]
    lines.append(
        f"\n{summary['prompts']} prompts from {config['prompts']}, k={config['samples']} samples each, "
        f"{config['max_new_tokens']} new tokens, top_p={config['top_p']}, seed {config['seed']}; perplexity "
        f"of the continuations under the plain {results['perplexity_model']}; "
        f"wall time {results['wall_seconds']:.0f} s."
    )
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: Path) -> None:
    """EMT and TP per method, one bar per scorer, with the 95% intervals."""
    methods = list(results["methods"])
    scorers = list(next(iter(results["methods"].values()))["toxicity"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(scorers)
    for axis, metric, title in (
        (axes[0], "expected_max_toxicity", "Expected Maximum Toxicity"),
        (axes[1], "toxicity_probability", "Toxicity Probability"),
    ):
        for n, scorer in enumerate(scorers):
            estimates = [results["methods"][m]["toxicity"][scorer][metric] for m in methods]
            values = [e["value"] for e in estimates]
            errors = [
                [v - e["low"] for v, e in zip(values, estimates, strict=True)],
                [e["high"] - v for v, e in zip(values, estimates, strict=True)],
            ]
            positions = [i + n * width for i in range(len(methods))]
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=scorer)
        axis.set_xticks([i + width * (len(scorers) - 1) / 2 for i in range(len(methods))], methods, rotation=20)
        axis.set_title(title)
        axis.set_ylim(0, 1)
    axes[0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``results.md`` and ``results.png`` in ``out`` (each written atomically)."""
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", markdown_table(results))
    plot_results(results, out / "results.png")
