"""``softprompt compare``: train several methods on the same data, seed and step budget, and
report them side by side with the baselines users would otherwise pick.

Each method trains in its own ``softprompt train`` process: its peak memory is its own, a crash
(out of memory, NaN) becomes a row with the reason while the others go on, and methods that
change the backbone's layers always start from a freshly loaded backbone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from softprompt.atomic import atomic_write_json, atomic_write_text
from softprompt.cli.compare_plan import PLAN_KEYS, Plan, parse_plan
from softprompt.config import RunConfig, load_config
from softprompt.errors import SoftpromptError

REPORT = "compare"  # compare.md, compare.json, compare.png in the output directory


@dataclass
class Row:
    """One line of the comparison."""

    name: str
    kind: str  # "method" or "baseline"
    status: str = "ok"  # or the reason the run failed
    lr: float | None = None
    test_metric: float | None = None
    trainable_parameters: int | None = None
    share_of_backbone: float | None = None  # percent
    saved_parameters: int | None = None
    artifact_bytes: int | None = None
    median_step_seconds: float | None = None
    peak_rss_mb: float | None = None
    wall_seconds: float | None = None
    best_step: int | None = None
    metrics: dict[str, Any] | None = None  # the test (or dev) metrics the table's columns show


def _train_args(config_path: str | None, overrides: list[str], out: Path) -> list[str]:
    args = [sys.executable, "-m", "softprompt", "train", "--quiet", "--overwrite"]
    if config_path:
        args += ["--config", config_path]
    return [*args, *overrides, f"out={out}", "train.zero_shot_baseline=false"]


def _shown(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics dict without its bulky parts (examples, confusion tables)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def _run(name: str, kind: str, args: list[str], out: Path, lr: float | None, task) -> Row:
    """Run one ``softprompt train`` process and read its artifact into a row."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w", encoding="utf-8") as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0:
        return Row(name, kind, status=_failure(code, out.parent / f"{out.name}.log"), lr=lr, wall_seconds=wall)
    meta = json.loads((out / "task.json").read_text(encoding="utf-8"))
    metrics, backbone = meta["metrics"], meta["backbone"]
    resources = metrics.get("resources", {})
    files = [out / n for n in ("task.json", "adapter_model.safetensors", "adapter_config.json")]
    scored = metrics.get("test", metrics["dev"])
    return Row(
        name,
        kind,
        lr=lr,
        test_metric=task.headline(scored),
        metrics=_shown(scored),
        trainable_parameters=meta["trainable_parameters"],
        share_of_backbone=100 * meta["trainable_parameters"] / backbone["parameters"],
        saved_parameters=meta.get("saved_parameters"),
        artifact_bytes=sum(f.stat().st_size for f in files if f.exists()),
        median_step_seconds=resources.get("median_step_seconds"),
        peak_rss_mb=resources.get("peak_rss_mb"),
        wall_seconds=wall,
        best_step=metrics.get("best_step"),
    )


def _failure(code: int, log: Path) -> str:
    if code < 0 or code == 137:
        return f"killed (signal {-code if code < 0 else 9}; out of memory?)"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1].removeprefix("error: ") if errors else f"exit status {code} (see {log})"


def compare(config_path: str | None, overrides: list[str], progress=print) -> tuple[list[Row], Path]:
    """Train and evaluate each method of the plan, then the baselines; write the report.

    Returns the rows and the report directory (``out`` of the config).
    """
    rest = [item for item in overrides if item.partition("=")[0] not in PLAN_KEYS]
    config = load_config(config_path, rest)  # validate everything before training anything (and importing torch)
    plan, rest = parse_plan(overrides)
    from softprompt.methods import get_method
    from softprompt.tasks import get_task

    task = get_task(config.task)
    task.check(config)
    template = task.compare_template(config)
    splits = task.load_splits(config)
    if plan.baselines is None:
        plan.baselines = list(task.baseline_names)
    unknown = [b for b in plan.baselines if b not in task.baseline_names]
    if unknown:
        offered = ", ".join(task.baseline_names) or "no baselines"
        raise SoftpromptError(f"baselines: '{unknown[0]}' is not a baseline of task={task.name} (it has: {offered})")
    out = Path(config.out)
    rows: list[Row] = []
    for index, name in enumerate(plan.methods, 1):
        spec = get_method(name)
        lr = plan.lrs.get(name, spec.default_lr)
        extra = [f"method={name}", f"train.lr={lr}"]
        if template is not None and not spec.uses_soft_tokens and template.num_soft:
            extra.append(f"template={template.without_soft().source}")
        progress(f"[{index}/{len(plan.methods)}] {name} (lr {lr:g}) ... log: {out / name}.log")
        row = _run(name, "method", _train_args(config_path, rest, out / name) + extra, out / name, lr, task)
        progress(f"    {_summary(row)}")
        rows.append(row)
        write_report(rows, out, _context(config, plan, splits))  # a partial report survives a Ctrl-C
    _baselines(config_path, rest, config, task, splits, plan, progress, rows)
    write_report(rows, out, _context(config, plan, splits))
    return rows, out


def _baselines(config_path, rest, config, task, splits, plan: Plan, progress, rows: list[Row]) -> None:
    """Append the plan's baselines to ``rows`` (the report is rewritten after each slow one)."""
    from softprompt.backbones.sources import resolve
    from softprompt.methods import untrained_method

    shots = [("zero-shot", 0)] if "zero_shot" in plan.baselines else []
    if plan.fewshot and "few_shot" in plan.baselines:
        shots.append((f"few-shot (k={plan.fewshot})", plan.fewshot))
    causal = resolve(config.backbone)[1] == "causal"
    for label, k in shots:
        if not causal:
            rows.append(Row(label, "baseline", status="not applicable: the backbone is an encoder without an LM head"))
            continue
        progress(f"baseline: {label}")
        out = Path(config.out) / f"none-k{k}"
        extra = [f"method={untrained_method()}", f"template={task.zero_shot_template(config).source}", f"fewshot.k={k}"]
        rows.append(_run(label, "baseline", _train_args(config_path, rest, out) + extra, out, None, task))
        write_report(rows, Path(config.out), _context(config, plan, splits))
    offline = [b for b in plan.baselines if b not in ("zero_shot", "few_shot")]
    if offline:
        progress(f"baselines: {', '.join(offline)}")
        started = time.perf_counter()
        measured = task.offline_baselines(config, splits, offline)
        seconds = (time.perf_counter() - started) / max(1, len(measured))
        for label, metrics in measured:
            rows.append(Row(label, "baseline", test_metric=task.headline(metrics), metrics=_shown(metrics)))
            rows[-1].wall_seconds = seconds


def _summary(row: Row) -> str:
    if row.status != "ok":
        return f"failed: {row.status}"
    return f"test {100 * row.test_metric:.1f}, {row.trainable_parameters:,} trainable, {row.wall_seconds / 60:.1f} min"


def _context(config: RunConfig, plan: Plan, splits) -> dict[str, Any]:
    import torch

    from softprompt.tasks import get_task

    return {
        "backbone": config.backbone,
        "data": config.data.train or config.dataset or "in-memory data",
        "seed": config.seed,
        "metric": get_task(config.task).metric_label,
        "columns": [list(column) for column in get_task(config.task).report_columns],
        "max_steps": config.train.max_steps,
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "patience": config.train.patience,
        "n_train": len(splits.train),
        "n_test": len(splits.test or splits.dev),
        "evaluated_on": "test" if splits.test else "dev (no test split)",
        "fewshot_k": plan.fewshot,
        "threads": config.threads or torch.get_num_threads(),
    }


def markdown(rows: list[Row], context: dict[str, Any]) -> str:
    """The comparison as a Markdown table with a one-line description of the setting."""
    budget = f"{context['max_steps']} steps"
    if context.get("epochs"):
        budget = f"{context['epochs']:g} epochs"
    columns = context.get("columns") or [["accuracy", context.get("metric", "accuracy"), "{:.1%}"]]
    head = (
        f"{context['backbone']} on {context['data']} ({context['evaluated_on']}, n={context['n_test']}); "
        f"{budget} x batch {context['batch_size']} for every method, seed {context['seed']}, "
        f"{context['threads']} threads\n\n"
        f"| method | lr | {' | '.join(label for _, label, _ in columns)} | trainable params | % of backbone "
        "| artifact | s/step (median) | peak RSS | time | note |\n"
        f"|---|---|{'---|' * len(columns)}---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        metrics = r.metrics or ({columns[0][0]: r.test_metric} if r.test_metric is not None else {})
        cells = [
            r.name,
            f"{r.lr:g}" if r.lr else "-",
            *[form.format(metrics[key]) if metrics.get(key) is not None else "-" for key, _, form in columns],
            f"{r.trainable_parameters:,}" if r.trainable_parameters is not None else "-",
            f"{r.share_of_backbone:.3f}%" if r.share_of_backbone is not None else "-",
            _size(r.artifact_bytes),
            f"{r.median_step_seconds:.2f}" if r.median_step_seconds else "-",
            f"{r.peak_rss_mb:,.0f} MB" if r.peak_rss_mb else "-",
            f"{r.wall_seconds / 60:.1f} min" if r.wall_seconds else "-",
            "" if r.status == "ok" else r.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1024:.1f} KB" if size < 2**20 else f"{size / 2**20:.1f} MB"


def write_report(rows: list[Row], out: Path, context: dict[str, Any]) -> None:
    """``compare.md``, ``compare.json`` and ``compare.png`` in ``out``."""
    from softprompt.plotting import plot_comparison

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{REPORT}.md", markdown(rows, context))
    atomic_write_json(out / f"{REPORT}.json", {"context": context, "rows": [asdict(r) for r in rows]})
    plot_comparison([asdict(r) for r in rows], out / f"{REPORT}.png", context)
