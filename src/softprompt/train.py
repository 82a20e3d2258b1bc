"""The one training loop (DESIGN.md §3): AdamW, warm-up + linear decay, clipping, optional L2,
dev evaluation every N steps, early stopping, best artifact, resumable checkpoint.

The frozen backbone stays in eval mode, so a forward pass has no randomness and the data order is
a pure function of (seed, step): a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softprompt.artifact import TASK_FILE, read_artifact, size_bytes, update_metrics, write_artifact
from softprompt.assemble import (
    Splits,
    build_classifier,
    load_ner_splits,
    load_splits,
    model_for_config,
    resolve_prompting,
)
from softprompt.atomic import atomic_write_json, atomic_write_text
from softprompt.backbones import Backbone, load_backbone
from softprompt.checkpoint import CHECKPOINT, Progress, load_checkpoint, save_checkpoint
from softprompt.config import RunConfig
from softprompt.distributed import processes
from softprompt.errors import SoftpromptError, TrainingDiverged
from softprompt.evaluate import evaluate
from softprompt.methods import get_method
from softprompt.model import TaskModel
from softprompt.plotting import plot_training_curves

LOG_FILE = "log.jsonl"
PLOT_FILE = "curves.png"
CONFIG_FILE = "config.json"


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    metrics: dict[str, Any]
    trainable_parameters: int
    backbone_parameters: int
    seconds: float
    artifact_bytes: int
    best_step: int
    notes: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def _epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def batch_indices(
    step: int, size: int, count: int, seed: int, lengths: list[int] | None = None, classes: list[int] | None = None
) -> list[int]:
    """Indices of the examples in batch ``step``: epochs are seeded permutations, so any step's
    batch can be recomputed on resume.

    With ``lengths``, batches are grouped by length (less padding, faster steps): the samples of
    each run of ``GROUP`` consecutive batches are sorted by length, cut into batches, and those
    batches are taken in a seeded random order. With ``classes`` too, the sort key is a sample's
    length rank within its own class, so every batch keeps the run's class mix.
    """
    if lengths is None:
        return [_sample(n, count, seed) for n in range(step * size, (step + 1) * size)]
    group, position = divmod(step, GROUP)
    first = group * GROUP * size
    pool = _by_length([_sample(n, count, seed) for n in range(first, first + GROUP * size)], lengths, classes)
    order = torch.randperm(GROUP, generator=torch.Generator().manual_seed(seed * 100_003 + group)).tolist()
    start = order[position] * size
    return pool[start : start + size]


def _by_length(pool: list[int], lengths: list[int], classes: list[int] | None) -> list[int]:
    """``pool`` sorted by length, or by length quantile within each class.

    Why the quantile: length often goes with the label (long reviews are mostly positive in
    chinese-reviews), so a plain sort makes the longest batches nearly one class, and each such
    step pulls the whole model towards that class; full fine-tuning swung by 10-20 dev points.
    """
    if classes is None:
        return sorted(pool, key=lengths.__getitem__)
    members: dict[int, list[int]] = {}
    for i in pool:
        members.setdefault(classes[i], []).append(i)
    quantile = {}
    for same_class in members.values():
        same_class.sort(key=lengths.__getitem__)
        quantile.update({i: (rank + 0.5) / len(same_class) for rank, i in enumerate(same_class)})
    return sorted(pool, key=quantile.__getitem__)


GROUP = 50  # batches whose samples are sorted together by length


def _sample(n: int, count: int, seed: int) -> int:
    epoch, offset = divmod(n, count)
    return _epoch_order(count, seed, epoch)[offset]


def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _meta(config: RunConfig, model: TaskModel, backbone: Backbone, splits: Splits) -> dict[str, Any]:
    return {
        "task": config.task,
        "method": config.method,
        **model.describe(),
        "max_length": config.train.max_length,
        "backbone": backbone_record(backbone),
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
        "saved_parameters": sum(v.numel() for v in model.export_state().values()),
        "data": splits.source,
        "config": config.to_dict(),
        "metrics": {},
    }


def backbone_record(backbone: Backbone) -> dict[str, Any]:
    """What an artifact records of its backbone (the fingerprint is checked on load)."""
    return {
        "name": backbone.name,
        "fingerprint": backbone.fingerprint,
        "kind": backbone.kind,
        "parameters": backbone.num_parameters,
        "hidden_size": backbone.hidden_size,
    }


def _save_best(out: Path, model: TaskModel, meta: dict[str, Any], step: int, dev: dict) -> None:
    peft_config = model.method.peft_config(model.backbone, meta["soft_prefix"])
    write_artifact(out, model.export_state(), {**meta, "step": step, "metrics": {"dev": dev}}, peft_config)


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    existing = (out / TASK_FILE).exists() or (out / CHECKPOINT).exists()
    if existing and not (resume or overwrite):
        raise SoftpromptError(
            f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, or another out="
        )


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    backbone: Backbone | None = None,
) -> TrainResult:
    """Train (or, for ``method=none``, just evaluate) and write the artifact to ``config.out``.

    Raises:
        SoftpromptError: bad input (before anything is written), or a diverged loss (the last good
            checkpoint is kept).
    """
    started = time.perf_counter()
    out = Path(config.out)
    procs = processes()
    if procs.main:
        _prepare_out(out, resume, overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # Cheap checks first (names, template, data files), the backbone last; nothing is written yet.
    if config.task == "ner":
        splits = load_ner_splits(config)
    else:
        template, verbalizer = resolve_prompting(config)
        splits = load_splits(config)
    backbone = backbone or load_backbone(config.backbone)
    cfg = config.train
    bar_desc = "eval" if progress else None
    baseline = {}
    if config.task == "classification":
        # Before the method attaches: methods such as LoRA change the backbone's layers.
        baseline = _zero_shot_baseline(config, backbone, template, verbalizer, splits, bar_desc)
    model = model_for_config(config, backbone, splits)
    meta = _meta(config, model, backbone, splits)
    where = {name: str(splits.source.get(name) or splits.source.get("dataset")) for name in ("train", "dev", "test")}
    encoded = {name: model.encode_split(getattr(splits, name), where[name]) for name in ("train", "dev", "test")}
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, config.to_dict())

    def dev_metric() -> dict:
        return evaluate(model, splits.dev, cfg.eval_batch_size, encoded["dev"], where["dev"], bar_desc)

    state = Progress()
    if not get_method(config.method).trains:
        dev = dev_metric()
        _save_best(out, model, meta, 0, dev)
    else:
        rows = model.training_rows(splits.train, encoded["train"], where["train"])
        state = fit(model, rows, config, out, meta, dev_metric, resume, progress and procs.main)
        if not procs.main:  # the main process evaluates and writes the results
            return TrainResult(out, {}, meta["trainable_parameters"], backbone.num_parameters, 0.0, 0, state.best_step)
        model.load_export(read_artifact(out).state)  # the best weights, not the last
    metrics = {}
    if splits.test:
        metrics["test"] = evaluate(model, splits.test, cfg.eval_batch_size, encoded["test"], where["test"], bar_desc)
    metrics.update(baseline)
    metrics["resources"] = _resources(state.history)
    update_metrics(out, {**metrics, "best_step": state.best_step, "stopped_early": state.stopped_early})
    if state.history:
        plot_training_curves(state.history, out / PLOT_FILE)
    all_metrics = json.loads((out / TASK_FILE).read_text(encoding="utf-8"))["metrics"]
    return TrainResult(
        out,
        all_metrics,
        meta["trainable_parameters"],
        backbone.num_parameters,
        time.perf_counter() - started,
        size_bytes(out),
        state.best_step,
        splits.notes + model.method.notes,
    )


def fit(
    model: TaskModel,
    rows: list,
    config: Any,
    out: Path,
    meta: dict[str, Any],
    dev_metric: Callable[[], dict],
    resume: bool = False,
    progress: bool = True,
) -> Progress:
    """Train ``model`` on ``rows`` with the optimizer and schedule of ``config.train`` (a
    :class:`TrainConfig`; ``config.seed`` orders the data), resuming from ``out``'s checkpoint
    when asked. The best weights by ``dev_metric`` are written to ``out`` as an artifact."""
    cfg = config.train
    if cfg.epochs:
        cfg = dataclasses.replace(cfg, max_steps=max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size)))
        config = dataclasses.replace(config, train=cfg)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_ratio * cfg.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, cfg.max_steps))
    state = Progress()
    if resume:
        saved = load_checkpoint(out)
        model.load_training_state(saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["progress"]
    return optimize(model, optimizer, scheduler, rows, state, config, out, meta, dev_metric, progress)


def _zero_shot_baseline(config: RunConfig, backbone: Backbone, template, verbalizer, splits: Splits, bar) -> dict:
    """``{"zero_shot_test": metrics}`` with the template minus its soft tokens, when asked for."""
    cfg = config.train
    if not (cfg.zero_shot_baseline and backbone.kind == "causal" and splits.test):
        return {}
    plain = build_classifier(
        backbone, "none", template.without_soft(), verbalizer, config.prompt, config.seed, cfg.max_length
    )
    return {"zero_shot_test": evaluate(plain, splits.test, cfg.eval_batch_size, None, "test", bar)}


def _resources(history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Peak memory of this process and the median seconds per optimizer step."""
    step_seconds = [h["seconds"] for h in history if "seconds" in h]
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "median_step_seconds": round(statistics.median(step_seconds), 4) if step_seconds else None,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # Linux: KiB, macOS: bytes


def optimize(
    model: TaskModel,
    optimizer,
    scheduler,
    rows: list,
    state: Progress,
    config: Any,
    out: Path,
    meta: dict,
    dev_metric,
    progress: bool,
) -> Progress:
    """Run optimizer steps from ``state.step`` to ``train.max_steps`` (or early stop)."""
    cfg = config.train
    procs = processes()
    if cfg.batch_size % procs.count:
        raise SoftpromptError(
            f"train.batch_size={cfg.batch_size} must be divisible by the {procs.count} training processes"
        )
    params = model.trainable_parameters()
    lengths = [model.row_length(row) for row in rows] if cfg.group_by_length else None
    classes = [model.row_class(row) for row in rows] if cfg.group_by_length else None
    if classes is not None and None in classes:
        classes = None
    if procs.main:
        _rewrite_log(out, state.history)
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not progress, desc="train", unit="step")
    while state.step < cfg.max_steps and not state.stopped_early:
        tick = time.perf_counter()
        index = procs.shard(batch_indices(state.step, cfg.batch_size, len(rows), config.seed, lengths, classes))
        loss = model.loss([rows[i] for i in index])
        if cfg.l2:
            loss = loss + cfg.l2 * model.method.l2_penalty()
        batch_loss = procs.mean(loss.item())  # the whole batch's, the same in every process
        if not math.isfinite(batch_loss):
            raise TrainingDiverged(
                f"loss became {batch_loss} at step {state.step + 1}; the last good checkpoint "
                f"(step {_checkpoint_step(state)}) is kept in {out}; lower train.lr and "
                "restart, or --resume"
            )
        loss.backward()
        procs.average_gradients(params)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        seconds = round(time.perf_counter() - tick, 4)
        entry = {"step": state.step, "loss": round(batch_loss, 6), "lr": scheduler.get_last_lr()[0], "seconds": seconds}
        _log(out, state, entry, procs.main)
        bar.update(1)
        bar.set_postfix(loss=f"{batch_loss:.4f}", dev=f"{state.best_metric:.4f}")
        if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
            dev = dev_metric()  # every process computes it (same weights): they decide alike
            _log(out, state, {"step": state.step, "dev": dev[model.metric]}, procs.main)
            if dev[model.metric] > state.best_metric:
                state.best_metric, state.best_step, state.evals_without_improvement = dev[model.metric], state.step, 0
                if procs.main:
                    _save_best(out, model, meta, state.step, dev)
            else:
                state.evals_without_improvement += 1
                state.stopped_early = bool(cfg.patience) and state.evals_without_improvement >= cfg.patience
            if procs.main:
                save_checkpoint(out, model.training_state(), optimizer, scheduler, state)
    bar.close()
    return state


def _checkpoint_step(state: Progress) -> int:
    evals = [h["step"] for h in state.history if "dev" in h]
    return evals[-1] if evals else 0


def _log(out: Path, state: Progress, entry: dict[str, Any], write: bool = True) -> None:
    state.history.append(entry)
    if not write:
        return
    with (out / LOG_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def _rewrite_log(out: Path, history: list[dict[str, Any]]) -> None:
    """On (re)start the log holds exactly the checkpoint's history: steps after it are redone."""
    atomic_write_text(out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))
