"""The training side of ``softprompt multitask`` (its config: :mod:`softprompt.multitask.config`): the
tasks' classifiers trained together through mixed batches, then an artifact per task."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from softprompt.artifact import update_metrics
from softprompt.atomic import atomic_write_json
from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.config.tasklist import plain_config, task_configs
from softprompt.errors import SoftpromptError
from softprompt.multitask.config import TASKS_DIR, MultitaskConfig
from softprompt.tasks.base import evaluate
from softprompt.tasks.classification import MultitaskBundle, build_classifier
from softprompt.tasks.classification.mixed import MixedPromptClassifier, mixable
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.tasklist import PreparedTask, prepare_tasks
from softprompt.training.driver import TrainingJob, artifact_saver, run_job
from softprompt.training.resume import run_record
from softprompt.training.run import artifact_meta, backbone_record, check_out
from softprompt.training.sharding import refuse_sharded_launch


class MultitaskModel:
    """Every task's classifier on one backbone, trained through mixed batches: rows are
    ``(task, encoded, label)``; the loss is the mean NLL over rows, each scored with its task.
    A :class:`~softprompt.training.Trainable` whose state holds every task's prompt."""

    metric = "accuracy"

    def __init__(self, models: dict[str, PromptedClassifier]):
        self.models = models
        self.mixed = MixedPromptClassifier(models)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for model in self.models.values() for p in model.trainable_parameters()]

    def loss(self, rows: list) -> torch.Tensor:
        scores = self.mixed([task for task, _, _ in rows], [encoded for _, encoded, _ in rows])
        return -torch.stack([row[label] for row, (_, _, label) in zip(scores, rows, strict=True)]).mean()

    def l2_penalty(self) -> torch.Tensor:
        return sum(model.l2_penalty() for model in self.models.values())

    def row_length(self, row: tuple) -> int:
        return len(row[1].ids)

    def row_class(self, row: tuple) -> int | None:
        """None: rows of different tasks do not share one set of classes."""
        return None

    def _gather(self, part: str) -> dict[str, torch.Tensor]:
        return {f"{name}/{k}": v for name, model in self.models.items() for k, v in getattr(model, part)().items()}

    def _scatter(self, part: str, state: dict[str, torch.Tensor]) -> None:
        for name, model in self.models.items():
            getattr(model, part)({k.split("/", 1)[1]: v for k, v in state.items() if k.split("/", 1)[0] == name})

    def training_state(self) -> dict[str, torch.Tensor]:
        return self._gather("training_state")

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self._scatter("load_training_state", state)

    def export_state(self) -> dict[str, torch.Tensor]:
        return self._gather("export_state")

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        self._scatter("load_export", state)


def training_rows(tasks: list[PreparedTask], models: dict[str, PromptedClassifier], sampling: str) -> list:
    """``(task, encoded, label)`` rows of all tasks; ``uniform`` cycles the smaller sets up to the
    largest, so a batch draws each task equally often."""
    per_task = []
    for task in tasks:
        model = models[task.name]
        train = task.splits.train
        rows = model.training_rows(train, model.encode_split(train), task.where("train"))
        per_task.append([(task.name, encoded, label) for encoded, label in rows])
    if sampling == "uniform":
        largest = max(map(len, per_task))
        per_task = [[rows[i % len(rows)] for i in range(largest)] for rows in per_task]
    return [row for rows in per_task for row in rows]


def run_multitask(
    config: MultitaskConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train every task's prompt together; write ``out/tasks/<name>`` artifacts and a summary."""
    refuse_sharded_launch("softprompt multitask")
    out = Path(config.out)
    check_out(out, resume, overwrite)
    apply_threads(config.threads)
    tasks = prepare_tasks(task_configs(config, lambda index, name: out / TASKS_DIR / name), need_test=False)
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    models = _build_models(config, tasks, backbone)
    model = MultitaskModel(models)
    rows = training_rows(tasks, models, config.sampling)
    encoded_dev = {t.name: models[t.name].encode_split(t.splits.dev) for t in tasks}

    def dev_metric() -> dict:
        per_task = {
            t.name: evaluate(models[t.name], t.splits.dev, config.train.eval_batch_size, encoded_dev[t.name])[
                "accuracy"
            ]
            for t in tasks
        }
        return {"accuracy": mean(per_task.values()), "per_task": per_task}

    meta = {
        "task": MultitaskBundle.name,
        "method": config.method,
        "tasks": [t.name for t in tasks],
        "backbone": backbone_record(backbone),
        "soft_prefix": True,
        "config": _plain(config),
        "metrics": {},
    }
    save_best = artifact_saver(out, model, meta, peft_layout=False)  # every task's prompt: no peft layout
    job = TrainingJob(out, model, rows, config.train, config.seed, dev_metric, save_best, run_record(_plain(config)))
    state = run_job(job, resume, progress)
    summary = {"best_step": state.best_step, "tasks": {}}
    for task in tasks:
        metrics = _write_task_artifact(
            task, models[task.name], backbone, encoded_dev[task.name], config, state.best_step
        )
        summary["tasks"][task.name] = {split: m["accuracy"] for split, m in metrics.items()}
    atomic_write_json(out / "multitask.json", summary)
    return summary


def _build_models(
    config: MultitaskConfig, tasks: list[PreparedTask], backbone: Backbone
) -> dict[str, PromptedClassifier]:
    """Every task's classifier with its own soft prompt, all able to share one mixed batch."""
    models = {}
    for task in tasks:
        model = build_classifier(
            backbone,
            config.method,
            task.template.with_prefix(config.prompt.length),
            task.verbalizer,
            config.prompt,
            config.seed,
            config.train.max_length,
            method_options=task.run.method_options(),
        )
        reason = mixable(model)
        if reason:
            raise SoftpromptError(f"task {task.name}: {reason}")
        models[task.name] = model
    return models


def _write_task_artifact(
    task: PreparedTask,
    model: PromptedClassifier,
    backbone: Backbone,
    encoded_dev: list,
    config: MultitaskConfig,
    best_step: int,
) -> dict[str, Any]:
    """``out/tasks/<name>``: an ordinary artifact of one task's prompt; returns its metrics."""
    batch = config.train.eval_batch_size
    dev = evaluate(model, task.splits.dev, batch, encoded_dev)
    task.out.mkdir(parents=True, exist_ok=True)
    artifact_saver(task.out, model, artifact_meta(task.run, model, backbone, task.splits))(best_step, dev)
    metrics = {"dev": dev}
    if task.splits.test:
        metrics["test"] = evaluate(model, task.splits.test, batch)
        update_metrics(task.out, {"test": metrics["test"]})
    return metrics


def _plain(config: MultitaskConfig) -> dict[str, Any]:
    return json.loads(json.dumps(plain_config(config)))
