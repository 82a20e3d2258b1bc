"""A whole ``train`` run: data, model, the loop, evaluation and the artifact.

It reads the run's task from the registry; the loop (:mod:`softprompt.training.loop`) is told
how to save the best weights rather than reaching for the artifact itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifact import TASK_FILE, size_bytes, update_metrics, update_record
from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.backbones.sources import hub_id
from softprompt.config import RunConfig, require
from softprompt.data.splits import SPLITS, Records, Splits
from softprompt.errors import SoftpromptError, flag
from softprompt.methods import get_method
from softprompt.plotting import plot_training_curves
from softprompt.seeding import seeded
from softprompt.tasks import get_task
from softprompt.tasks.base import TaskModel, evaluate
from softprompt.training.callbacks import Callback
from softprompt.training.checkpoint import CHECKPOINT, Progress
from softprompt.training.driver import TrainingJob, artifact_saver, run_job
from softprompt.training.processes import processes
from softprompt.training.resources import resources
from softprompt.training.resume import check_resumable, run_record
from softprompt.training.sharding import requested_sharding, shard_for_launch

logger = logging.getLogger(__name__)
PLOT_FILE = "curves.png"


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: the artifact directory.
        metrics: dev (best step), test and baseline metrics, and resources.
        trainable_parameters: parameters the optimizer updated.
        backbone_parameters: parameters of the frozen backbone.
        seconds: wall time of the run.
        artifact_bytes: size of the artifact's files.
        best_step: the step whose weights were kept.
        notes: things the user should know (skipped rows, held-out dev...).
        model: the trained model (best weights), in memory.
    """

    out: Path
    metrics: dict[str, Any]
    trainable_parameters: int
    backbone_parameters: int
    seconds: float
    artifact_bytes: int
    best_step: int
    notes: list[str] = field(default_factory=list)
    model: TaskModel | None = None


def backbone_record(backbone: Backbone) -> dict[str, Any]:
    """What an artifact records of its backbone (the fingerprint is checked on load)."""
    return {
        "name": backbone.name,
        "fingerprint": backbone.fingerprint,
        "kind": backbone.kind,
        "parameters": backbone.num_parameters,
        "hidden_size": backbone.hidden_size,
        "hub_id": hub_id(backbone.name),
    }


def artifact_meta(config: RunConfig, model: TaskModel, backbone: Backbone, splits: Splits) -> dict[str, Any]:
    """The record (``task.json``) of an artifact of ``model`` trained by ``config``."""
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


def check_out(out: Path, resume: bool, overwrite: bool, extra: tuple[Path, ...] = ()) -> None:
    """Refuse to write over an existing run unless resuming or overwriting, or into a path that
    is a file."""
    if out.exists() and not out.is_dir():
        raise SoftpromptError(f"out={out} is a file; give a directory for the run")
    taken = any((d / TASK_FILE).exists() or (d / CHECKPOINT).exists() for d in (out, *extra))
    if taken and not (resume or overwrite):
        raise SoftpromptError(
            f"{out} already holds a run; use {flag('resume')} to continue it, {flag('overwrite')} to replace it, "
            "or another out="
        )


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    backbone: Backbone | None = None,
    records: dict[str, Records] | None = None,
    extend: bool = False,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train (or, for ``method=none``, just evaluate) and write the artifact to ``config.out``.

    Args:
        config: the run.
        resume: continue from the checkpoint in ``config.out``.
        overwrite: replace a run already in ``config.out``.
        progress: show progress bars.
        backbone: an already loaded backbone (loaded from ``config.backbone`` when None).
        records: in-memory data (split name -> records) in place of ``config.data`` files.
        extend: with ``resume``, allow a larger ``train.max_steps`` than the saved run's.
        callbacks: hooks into the training loop (:class:`~softprompt.training.callbacks.Callback`).

    Raises:
        SoftpromptError: bad input (nothing written), or a diverged loss (last checkpoint kept).
    """
    _check_sharding(config)  # first: the launch config may be one this run cannot honour
    started, out, procs = time.perf_counter(), Path(config.out), processes()
    bar = "eval" if progress else None
    _check_start(config, resume, overwrite, extend, procs.main)
    splits, backbone, model, baseline = _setup(config, backbone, records, bar)
    task, trains = get_task(config.task), get_method(config.method).trains
    meta = artifact_meta(config, model, backbone, splits)
    encoded = encode_splits(model, splits, config.train.max_length, with_train=trains)
    job = _training_job(config, model, splits, encoded, meta, bar)
    job.callbacks, job.extend = list(callbacks or []), extend
    state = run_job(job, resume, progress)
    if config.calibrate != "none" and trains and procs.main:  # the trained prompt's own bias
        update_record(out, {"calibration": task.calibrate(model)})
    if job.sharded and not procs.main and splits.test:
        # Under FSDP the other processes join the main one's test pass: its forward passes
        # gather the sharded blocks. Only the main process keeps the results and writes them.
        evaluate(model, splits.test, config.train.eval_batch_size, encoded["test"], splits.where("test"))
    if not procs.main:
        trainable = meta["trainable_parameters"]
        return TrainResult(out, {}, trainable, backbone.num_parameters, 0.0, 0, state.best_step, model=model)
    all_metrics = _record_results(out, model, splits, encoded["test"], config, state, baseline, bar)
    if job.trackers:  # the test scores join the run's tracker logs
        job.trackers.finish({key: value for key, value in all_metrics.items() if key != "dev"})
    return TrainResult(
        out,
        all_metrics,
        meta["trainable_parameters"],
        backbone.num_parameters,
        time.perf_counter() - started,
        size_bytes(out),
        state.best_step,
        splits.notes + model.method.notes,
        model,
    )


def _training_job(
    config: RunConfig, model: TaskModel, splits: Splits, encoded: dict[str, list], meta: dict, bar: str | None
) -> TrainingJob:
    """The run as a job for the driver: rows, dev scoring, the artifact, sharding for FSDP."""

    def dev_metric() -> dict:
        batch = config.train.eval_batch_size
        return model.selection_metrics(splits.dev, batch, encoded["dev"], splits.where("dev"), bar)

    out = Path(config.out)
    trains = get_method(config.method).trains
    rows = model.training_rows(splits.train, encoded["train"], splits.where("train")) if trains else []
    return TrainingJob(
        out,
        model,
        rows,
        config.train,
        config.seed,
        dev_metric,
        artifact_saver(out, model, meta),
        run_settings=run_record(config.to_dict()),
        sharded=trains and shard_for_launch(model),
        trains=trains,
        report_final=True,
    )


def _check_sharding(config: RunConfig) -> None:
    """Refuse, before anything loads or is written, what an FSDP launch cannot honour."""
    if requested_sharding() is not None:
        require(not config.train.gradient_checkpointing, "train.gradient_checkpointing", "not supported with FSDP yet")
        require(config.quantize == "none", "quantize", "a quantized backbone cannot be sharded with FSDP; use none")


def _check_start(config: RunConfig, resume: bool, overwrite: bool, extend: bool, main: bool) -> None:
    """Before anything is written: the output directory, a resumable run, the thread count, and
    a warning for settings the method ignores."""
    out = Path(config.out)
    if main:
        check_out(out, resume, overwrite)
    if resume:
        check_resumable(out, config, extend)
    apply_threads(config.threads)
    # fp16 without loss scaling lets small prompt gradients underflow: the loop has no scaler.
    require(config.precision != "fp16", "precision", "fp16 is for inference; train in bf16 (or fp32)")
    ignored = config.ignored_sections()
    if ignored and main:
        shown = ", ".join(f"{name}.*" for name in ignored)
        logger.warning("warning: the settings %s are ignored: method=%s does not read them", shown, config.method)


def encode_splits(model: TaskModel, splits: Splits, max_length: int, with_train: bool = True) -> dict[str, list]:
    """The splits encoded once; a note per split whose texts were cut to fit ``max_length``.
    Without training (``with_train=False``) the training rows are never read (few-shot draws its
    demonstrations from the raw split), so they are not encoded: that would only cost time, a
    lot of it when demonstrations are chosen per input."""
    names = SPLITS if with_train else SPLITS[1:]
    encoded = {name: model.encode_split(getattr(splits, name), splits.where(name)) for name in names}
    for name, rows in encoded.items():
        cut = sum(bool(getattr(row, "shortened", False)) for row in rows)
        if cut:
            splits.notes.append(
                f"{name}: {cut:,} of {len(rows):,} texts were shortened to fit train.max_length={max_length}"
            )
    return encoded


def _setup(
    config: RunConfig, backbone: Backbone | None, records: dict[str, Records] | None, bar: str | None
) -> tuple[Splits, Backbone, TaskModel, dict]:
    """The run's data, backbone, untrained model and pre-training baselines. Cheap checks come
    first (names, template, data), the backbone last; nothing is written."""
    task = get_task(config.task)
    task.check(config)
    splits = task.load_splits(config, records)
    backbone = backbone or load_backbone(config.backbone, config.device, config.precision, config.quantize)
    # Baselines run before the method attaches: methods such as LoRA change the backbone's layers.
    baseline = task.baselines(config, backbone, splits, bar)
    with seeded(config.seed):
        model = task.build(config, backbone, splits)
    if config.calibrate != "none" and not get_method(config.method).trains:  # zero-/few-shot: from the start
        task.calibrate(model)
    return splits, backbone, model, baseline


def _record_results(
    out: Path,
    model: TaskModel,
    splits: Splits,
    encoded_test: list,
    config: RunConfig,
    state: Progress,
    baseline: dict,
    bar: str | None,
) -> dict[str, Any]:
    """Score test with the best weights, add the baselines and resources to the artifact's
    record, plot the curves; returns every metric the record now holds."""
    metrics = {}
    if splits.test:
        batch = config.train.eval_batch_size
        metrics["test"] = evaluate(model, splits.test, batch, encoded_test, splits.where("test"), bar)
    metrics.update(baseline)
    metrics["resources"] = resources(state.history)
    update_metrics(out, {**metrics, "best_step": state.best_step, "stopped_early": state.stopped_early})
    if state.history:
        plot_training_curves(state.history, out / PLOT_FILE)
    return json.loads((out / TASK_FILE).read_text(encoding="utf-8"))["metrics"]
