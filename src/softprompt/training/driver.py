"""The one way a command trains something into an artifact directory.

``train``, ``continual`` (each stage, and each task trained alone), ``multitask`` and ``detox
train`` all describe what to train as a :class:`TrainingJob` and hand it to :func:`run_job`,
which writes the run's settings, trains with the one loop (:func:`~softprompt.training.fit`),
saves every new best as an artifact, and leaves the best weights (not the last) in the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifact import RUN_CONFIG_FILE, read_artifact, write_artifact
from softprompt.atomic import atomic_write_json
from softprompt.config import TrainConfig
from softprompt.config.trackers import report_to_names
from softprompt.training.callbacks import Callback
from softprompt.training.checkpoint import CHECKPOINT, Progress
from softprompt.training.loop import SaveBest, fit
from softprompt.training.processes import processes
from softprompt.training.resume import check_same_settings
from softprompt.training.trackers import Trackers
from softprompt.training.trainable import Trainable
from softprompt.training.trainer_callbacks import loop_callbacks


@dataclass
class TrainingJob:
    """What to train, on what, and where its artifact goes.

    Attributes:
        out: the artifact directory (also holds ``checkpoint/`` and ``log.jsonl``).
        model: what the loop trains; its best weights are loaded back into it at the end.
        rows: the training rows.
        settings: optimizer, schedule, evaluation and stopping.
        seed: orders the data.
        dev_metric: the dev metrics of the model as it stands.
        save_best: writes the artifact of a new best (see :func:`artifact_saver`).
        run_settings: written to ``config.json`` before training (None: no such file), with the
            data files' hashes (:func:`~softprompt.training.resume.run_record`); a resumed job
            must have the settings and data its ``config.json`` recorded.
        extend: a resume may raise ``train.max_steps`` (``train --extend``).
        sharded: the frozen backbone is sharded for an FSDP launch.
        trains: False for a method with nothing to train: the untrained model is scored on dev
            and saved as it is.
        callbacks: the user's hooks into the loop (see :mod:`softprompt.training.callbacks`).
        report_final: leave the trackers open after training: the caller reports its final
            (test) metrics with ``job.trackers.finish(metrics)``.
        trackers: the experiment trackers ``settings.report_to`` names, while the job runs.
    """

    out: Path
    model: Trainable
    rows: list
    settings: TrainConfig
    seed: int
    dev_metric: Callable[[], dict[str, Any]]
    save_best: SaveBest
    run_settings: dict[str, Any] | None = None
    extend: bool = False
    sharded: bool = False
    trains: bool = True
    callbacks: list[Callback] = field(default_factory=list)
    report_final: bool = False
    trackers: Trackers | None = field(default=None, init=False)


def continues(out: Path, resume: bool) -> bool:
    """Whether a run in ``out`` picks up a checkpoint: asked to resume, and one is there (a job
    of a multi-part run, e.g. the second expert prompt, may not have started before a Ctrl-C)."""
    return resume and (Path(out) / CHECKPOINT).exists()


def run_job(job: TrainingJob, resume: bool = False, progress: bool = True) -> Progress:
    """Train ``job`` and return the loop's final counters; afterwards ``job.model`` holds the best
    weights on the main process (and, when sharded, on every process)."""
    procs = processes()
    if procs.main:
        job.out.mkdir(parents=True, exist_ok=True)
        if job.run_settings is not None:
            # Every job resumes only the run it started: same settings, same data files.
            if continues(job.out, resume):
                check_same_settings(job.out, job.run_settings, job.extend)
            atomic_write_json(job.out / RUN_CONFIG_FILE, job.run_settings)
    if not job.trains:
        if procs.main:
            job.save_best(0, job.dev_metric())
        return Progress()
    model, out, again = job.model, job.out, continues(job.out, resume)
    settings, save, dev = job.settings, job.save_best, job.dev_metric
    if procs.main and report_to_names(settings.report_to):
        on_cpu = all(p.device.type == "cpu" for p in model.trainable_parameters())
        job.trackers = Trackers(settings.report_to, out.resolve().name, out, job.run_settings or {}, on_cpu)
    users = loop_callbacks(job.callbacks, settings, out, job.seed)  # a Trainer's callbacks adapted
    hooks = [*users, *([job.trackers] if job.trackers else [])]
    try:
        state = fit(model, job.rows, settings, job.seed, out, save, dev, again, progress, job.sharded, hooks)
    except BaseException:
        if job.trackers:  # what was logged so far stays readable
            job.trackers.finish()
        raise
    if job.trackers and not job.report_final:
        job.trackers.finish()
    if job.sharded:  # the other processes load the best weights once the main one has written them
        procs.wait()
    if procs.main or job.sharded:
        model.load_export(read_artifact(out).state)
    return state


def artifact_saver(out: Path, model: Any, meta: dict[str, Any], peft_layout: bool = True) -> SaveBest:
    """``save_best`` for a job: write ``model``'s saved weights and ``meta`` (the ``task.json``
    record, with the step and its dev metrics) as an artifact in ``out``. ``peft_layout`` adds
    the files peft loads, for a model with one method (not a bundle of several tasks' prompts)."""

    def save(step: int, dev: dict[str, Any]) -> None:
        peft_config = model.method.peft_config(model.backbone, meta["soft_prefix"]) if peft_layout else None
        write_artifact(out, model.export_state(), {**meta, "step": step, "metrics": {"dev": dev}}, peft_config)

    return save
