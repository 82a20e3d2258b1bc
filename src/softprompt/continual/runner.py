"""``softprompt continual``: train a sequence of tasks one after another and score every task
after each stage.

Each stage is an ordinary artifact directory (``stage-<k>-<task>/``, loadable by ``softprompt
eval``) trained by the one training loop, so a stage resumes from its checkpoint after Ctrl-C;
``continual.json`` is rewritten (atomically) after every stage, so finished stages are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from softprompt.artifact import read_artifact
from softprompt.atomic import atomic_write_json
from softprompt.backbones import load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.config.tasklist import plain_config, task_configs
from softprompt.continual.config import ContinualConfig
from softprompt.continual.learners import Learner, make_learner
from softprompt.continual.metrics import continual_metrics
from softprompt.continual.report import write_report
from softprompt.errors import SoftpromptError, flag
from softprompt.methods import get_method
from softprompt.methods.prompt_tuning import PromptTuning
from softprompt.tasks.base import evaluate
from softprompt.tasks.tasklist import PreparedTask, prepare_tasks
from softprompt.training.driver import TrainingJob, artifact_saver, continues, run_job
from softprompt.training.resume import run_record
from softprompt.training.run import artifact_meta, train
from softprompt.training.sharding import refuse_sharded_launch

logger = logging.getLogger(__name__)

RESULTS = "continual"  # continual.json / .md / .png


def run_continual(
    config: ContinualConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the sequence and write the report; returns the results (also in ``continual.json``)."""
    refuse_sharded_launch("softprompt continual")
    out = Path(config.out)
    results_path = out / f"{RESULTS}.json"
    tasks = task_configs(config)
    owned = [out / f"{RESULTS}.{ext}" for ext in ("json", "md", "png")] + [Path(t.run.out) for t in tasks]
    owned += [out / f"alone-{t.name}" for t in tasks]
    if any(path.exists() for path in owned) and not (resume or overwrite):
        raise SoftpromptError(
            f"{out} already holds a continual run; use {flag('resume')} to continue it, {flag('overwrite')}, "
            "or another out="
        )
    if overwrite and not resume:
        for path in owned:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    apply_threads(config.threads)
    prepared = prepare_tasks(tasks)  # every task's data, before the backbone and any training
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    learner = make_learner(backbone, prepared, config)
    results = _read_results(results_path, config) if resume else None
    results = results or {"config": plain_config(config), "tasks": [t.name for t in prepared], "stages": []}
    out.mkdir(parents=True, exist_ok=True)
    if not results["stages"]:
        results["before"] = _score_all(learner, prepared, 0, config)
    for k, task in enumerate(prepared):
        if k < len(results["stages"]):
            learner.restore(k)
            continue
        started = time.perf_counter()
        best_step = _train_stage(learner, k, task, config, resume, progress)
        accuracies = _score_all(learner, prepared, k + 1, config)
        results["stages"].append(
            {
                "task": task.name,
                "accuracies": accuracies,
                "best_step": best_step,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        atomic_write_json(results_path, results)
        if progress:
            shown = "  ".join(
                f"{name} {100 * acc:.1f}%" for name, acc in zip(results["tasks"], accuracies, strict=True)
            )
            logger.info("after stage %d (%s): %s", k + 1, task.name, shown)
    if config.alone:
        results["alone"] = _alone(prepared, results, config, resume, progress)
        atomic_write_json(results_path, results)
    matrix = [results["before"]] + [stage["accuracies"] for stage in results["stages"]]
    results["matrix"] = matrix
    results["metrics"] = continual_metrics(matrix, results.get("alone"))
    atomic_write_json(results_path, results)
    write_report(results, out / RESULTS)
    return results


def _train_stage(
    learner: Learner, k: int, task: PreparedTask, config: ContinualConfig, resume: bool, progress: bool
) -> int:
    """Train stage ``k`` into its artifact directory and load its best weights; the best step."""
    stage_config = learner.stage_config(k)
    model, rows = learner.stage_model(k)
    stage = task.out
    scored = learner.scored_model(model)  # what dev scores and the artifact holds
    meta = artifact_meta(stage_config, scored, learner.backbone, task.splits)
    dev = task.splits.dev
    encoded_dev = scored.encode_split(dev)

    def dev_metric() -> dict:
        return evaluate(scored, dev, config.train.eval_batch_size, encoded_dev, task.where("dev"))

    if progress:
        logger.info("stage %d/%d: %s (%d training rows)", k + 1, len(learner.tasks), task.name, len(rows))
    save_best = artifact_saver(stage, scored, meta)
    settings = run_record(stage_config.to_dict())
    job = TrainingJob(stage, model, rows, stage_config.train, stage_config.seed, dev_metric, save_best, settings)
    state = run_job(job, resume, progress)
    learner.finish_stage(k)
    return state.best_step


def _score_all(learner: Learner, tasks: list[PreparedTask], stages_done: int, config: ContinualConfig) -> list[float]:
    """Test accuracy of every task as the model stands after ``stages_done`` stages."""
    scores = []
    for j, task in enumerate(tasks):
        model = learner.classifier(j, stages_done)
        metrics = evaluate(model, task.splits.test, config.train.eval_batch_size, where=task.where("test"))
        scores.append(metrics["accuracy"])
    return scores


def _alone(
    tasks: list[PreparedTask], results: dict, config: ContinualConfig, resume: bool, progress: bool
) -> list[float]:
    """Each task trained alone with the same method and budget. The first task's stage is exactly
    that (nothing came before it), so its accuracy is taken from the matrix, not trained twice."""
    alone = [results["stages"][0]["accuracies"][0]]
    method = PromptTuning.name if get_method(config.method).sequential else config.method  # alone, a plain prompt
    for task in tasks[1:]:
        out = Path(config.out) / f"alone-{task.name}"
        run = dataclasses.replace(task.run, method=method, out=str(out))
        if resume and (out / "task.json").exists() and "test" in read_artifact(out).meta.get("metrics", {}):
            alone.append(read_artifact(out).meta["metrics"]["test"]["accuracy"])
            continue
        if progress:
            logger.info("alone: %s with %s", task.name, method)
        result = train(run, resume=continues(out, resume), overwrite=True, progress=progress)
        alone.append(result.metrics["test"]["accuracy"])
    return alone


def _read_results(path: Path, config: ContinualConfig) -> dict[str, Any] | None:
    """The results of an interrupted run, if it was the same sequence and settings."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("config") != plain_config(config):
        raise SoftpromptError(
            f"{path} was written with other settings; resume with the same config, or use {flag('overwrite')}"
        )
    return saved
