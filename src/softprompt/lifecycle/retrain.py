"""``retrain``: continue a served version's prompt on the feedback its task received, guarded
against forgetting, and judged by a gate before anyone promotes it (docs/keep-learning.md).

The run: the parent and its data load; the parent is scored on the held-out (newest) feedback
and on its own dev split; the candidate starts from the parent's weights (a zero-/few-shot
parent: a fresh prompt) and trains on the older feedback under the guard (replay of the parent's
training rows, or EWC); it is scored the same way, and the gate decides. The new version is
written whole into a hidden folder beside ``out`` and renamed into place, so ``out`` never holds
half an artifact, gate passed or not; its ``task.json`` records the lineage.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from softprompt.artifact import read_artifact, update_record
from softprompt.atomic import atomic_directory
from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.data.records import sample
from softprompt.data.splits import Splits
from softprompt.errors import SoftpromptError, TrainingDiverged
from softprompt.lifecycle.feedback import CLASSIFY, GENERATE, training_row
from softprompt.lifecycle.gate import GateMetric, gate_metric, judge, verdict
from softprompt.lifecycle.guards import anchored, replay_items
from softprompt.lifecycle.lineage import lineage_record
from softprompt.lifecycle.plan import RetrainPlan, plan_retrain
from softprompt.tasks import TaskSpec, get_task
from softprompt.tasks.base import TaskModel, evaluate
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.generation.model import PromptedGenerator
from softprompt.tasks.loading import artifact_task, load_model
from softprompt.training.checkpoint import CHECKPOINT
from softprompt.training.driver import TrainingJob, artifact_saver, run_job
from softprompt.training.resume import run_record
from softprompt.training.run import artifact_meta
from softprompt.training.sharding import refuse_sharded_launch

logger = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    """What a retrain produced.

    Attributes:
        out: the new version's artifact directory (written whether the gate passed or not).
        passed: whether the gate passed (the new version may replace its parent).
        line: the gate's verdict in one line: each figure beside the parent's, or which failed.
        lineage: what ``task.json`` records under ``lineage``.
    """

    out: Path
    passed: bool
    line: str
    lineage: dict[str, Any]


def retrain(
    artifact: str | Path,
    db: str,
    out: str | Path,
    *,
    task: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> RetrainResult:
    """Continue an artifact's prompt on its task's feedback and judge the result with the gate.

    The newest 20% of the task's feedback (at least one row) is held out; the rest trains, mixed
    with as many rows of the parent's own training data (replay). The candidate passes when it is
    at least as good as the parent on the held-out feedback (accuracy, or chrF for generation)
    and at most 0.5 accuracy points (1 chrF point) worse on the parent's dev split.

    Args:
        artifact: the served artifact directory; its folder name is the task's name in the store.
        db: the capture store of ``softprompt serve --capture`` (a file path or an SQLAlchemy URL).
        out: the new artifact directory (a new or empty folder).
        task: the task's name in the store, when not the artifact folder's name.
        overwrite: replace what a non-empty ``out`` holds.
        progress: show progress bars.
        **settings: run settings over the parent's, as sections (``train={"max_steps": 50}``,
            ``method="prompt_tuning"``), and ``retrain={...}``: ``guard`` (``replay`` | ``ewc``),
            ``replay`` (replayed rows per feedback row; 0: none), ``holdout`` (0.2),
            ``max_dev_drop`` (0-1 scale: 0.005 is 0.5 points), ``ewc={"weight", "samples"}``.

    Returns:
        A :class:`RetrainResult`; ``out`` is written in either case, with ``lineage.gate.passed``.

    Raises:
        SoftpromptError: no feedback to train on, training data that moved, an ``out`` in use,
            a bad setting, or a loss that diverged (nothing written then).
    """
    return run_plan(plan_retrain(artifact, db, out, task, settings, overwrite), progress)


def run_plan(plan: RetrainPlan, progress: bool = True) -> RetrainResult:
    """Carry out a checked plan (:func:`~softprompt.lifecycle.plan.plan_retrain`)."""
    refuse_sharded_launch("softprompt retrain")
    config, bar = plan.config, "eval" if progress else None
    apply_threads(config.threads)
    parent_files = read_artifact(plan.artifact)
    spec = get_task(artifact_task(plan.meta))
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    parent, _ = load_model(plan.artifact, backbone)
    _check_kind(parent, plan, spec)
    splits = _parent_splits(spec, plan)
    held = spec.from_records([training_row(row) for row in plan.held_out], "held-out feedback", {})
    feedback = spec.from_records([training_row(row) for row in plan.train], "feedback", {})
    metric = gate_metric(plan.kind, plan.settings.max_dev_drop)
    before = _scores(parent, held, splits.dev, metric, config.train.eval_batch_size, bar)
    train = _training_data(plan, splits, feedback, len(held))
    candidate = _candidate(spec, plan, backbone, train, parent_files.state)
    guard = _guard_record(plan, len(train.train) - len(feedback))
    with atomic_directory(plan.out, plan.overwrite) as folder:
        _train(candidate, train, spec, plan, folder, _parent_rows(candidate, splits, plan), progress)
        after = _scores(candidate, held, splits.dev, metric, config.train.eval_batch_size, bar)
        gate = judge(metric, _pair(before[0], after[0]), _pair(before[1], after[1]))
        lineage = lineage_record(plan, parent_files.meta["weights_sha256"], guard, gate)
        update_record(folder, {"lineage": lineage})
    return RetrainResult(plan.out, gate["passed"], verdict(metric, gate), lineage)


def _training_data(plan: RetrainPlan, splits: Splits, feedback: list, held: int) -> Splits:
    """The candidate's data: the feedback and, under replay, a seeded sample of the parent's
    training rows as train; the parent's dev split as dev (it picks the best step)."""
    replay = plan.settings.replay if plan.settings.guard == "replay" else 0.0
    replayed = replay_items(splits.train, len(feedback), replay, plan.config.seed)
    logger.info(
        "retrain %s: %d feedback rows train (+%d replayed), %d held out; %s",
        plan.task,
        len(feedback),
        len(replayed),
        held,
        "continuing the parent's weights" if plan.continues else f"a fresh {plan.config.method} prompt",
    )
    return Splits(feedback + replayed, splits.dev, [], splits.source, splits.notes)


def _candidate(spec: TaskSpec, plan: RetrainPlan, backbone: Backbone, data: Splits, parent_state: dict) -> TaskModel:
    """The model that trains: the parent's weights in the candidate's settings, or a fresh prompt."""
    config = plan.config
    if not plan.continues:
        return spec.build(config, backbone, data)
    # The parent's weights replace any start: the init's sources (prompt.init=from:...) are not read.
    candidate = spec.build(replace(config, prompt=replace(config.prompt, init="random")), backbone, data)
    candidate.load_export(parent_state)
    return candidate


def _check_kind(parent: TaskModel, plan: RetrainPlan, spec: TaskSpec) -> None:
    """The feedback is of the kind the artifact answers (labels for a classifier, texts for a writer)."""
    answers = {CLASSIFY: PromptedClassifier, GENERATE: PromptedGenerator}[plan.kind]
    if not isinstance(parent, answers):
        raise SoftpromptError(
            f"artifact {plan.artifact} is a {spec.name} model, but the feedback for task '{plan.task}' in "
            f"{plan.store} is {plan.kind} feedback; give --task NAME of this artifact's task"
        )


def _parent_splits(spec: TaskSpec, plan: RetrainPlan) -> Splits:
    """The parent's train (what the guard reads) and dev (what the gate scores) splits, as its
    settings define them (a dev split held out of train is held out the same way again); its
    test split is not needed, so not read."""
    config = plan.config
    splits = spec.load_splits(replace(config, data=replace(config.data, test=None)))
    if config.data.test:
        splits.source["test"] = config.data.test  # the record names the parent's test data still
    if not splits.dev:
        raise SoftpromptError(f"the parent's dev split ({splits.where('dev')}) is empty; the gate needs it")
    return splits


def _parent_rows(candidate: TaskModel, splits: Splits, plan: RetrainPlan) -> list:
    """The parent's training rows EWC's Fisher is measured on (none under replay)."""
    if plan.settings.guard != "ewc":
        return []
    items = sample(splits.train, plan.settings.ewc.samples, seed=plan.config.seed)
    return candidate.training_rows(items, candidate.encode_split(items, splits.where("train")), splits.where("train"))


def _guard_record(plan: RetrainPlan, replayed: int) -> dict[str, Any]:
    settings, source = plan.settings, plan.config.dataset or plan.config.data.train
    if settings.guard == "ewc":
        return {"kind": "ewc", "weight": settings.ewc.weight, "samples": settings.ewc.samples, "data": source}
    if not replayed:
        return {"kind": "none"}
    return {"kind": "replay", "rows": replayed, "per_feedback_row": settings.replay, "data": source}


def _train(
    candidate: TaskModel,
    data: Splits,
    spec: TaskSpec,
    plan: RetrainPlan,
    folder: Path,
    parent_rows: list,
    progress: bool,
) -> None:
    """Train the candidate into ``folder`` (its best weights on dev kept, and left in it)."""
    config, where = plan.config, "feedback and replayed rows"
    batch, bar = config.train.eval_batch_size, "eval" if progress else None
    rows = candidate.training_rows(data.train, candidate.encode_split(data.train, where), where)
    encoded_dev = candidate.encode_split(data.dev, data.where("dev"))

    def dev_metric() -> dict:
        return candidate.selection_metrics(data.dev, batch, encoded_dev, data.where("dev"), bar)

    trained = anchored(candidate, parent_rows, plan.settings.ewc.weight) if parent_rows else candidate
    meta = artifact_meta(config, candidate, candidate.backbone, data)
    save = artifact_saver(folder, candidate, meta)
    job = TrainingJob(folder, trained, rows, config.train, config.seed, dev_metric, save, run_record(config.to_dict()))
    try:
        run_job(job, resume=False, progress=progress)
    except TrainingDiverged as exc:  # the loop's advice names a checkpoint that goes with the folder
        where = str(exc).split(";")[0].split(",")[0]  # "loss became nan at step N"
        raise SoftpromptError(
            f"{where} while retraining; nothing was written to {plan.out}; lower train.lr (now {config.train.lr})"
        ) from None
    shutil.rmtree(folder / CHECKPOINT.parent, ignore_errors=True)  # a retrain is not resumed
    if config.calibrate != "none":  # the trained prompt's own bias, as `train` measures it
        update_record(folder, {"calibration": spec.calibrate(candidate)})


def _scores(model: TaskModel, held: list, dev: list, metric: GateMetric, batch: int, bar: str | None) -> tuple:
    """``(value, n)`` of the gate's metric (0-1 scale) on the held-out feedback and on dev."""
    figures = []
    for items, where in ((held, "held-out feedback"), (dev, "dev")):
        metrics = evaluate(model, items, batch, None, where, bar)
        figures.append((float(metrics[metric.key]) / metric.scale, int(metrics["n"])))
    return tuple(figures)


def _pair(parent: tuple[float, int], candidate: tuple[float, int]) -> dict[str, Any]:
    return {"parent": parent[0], "candidate": candidate[0], "n": parent[1]}
