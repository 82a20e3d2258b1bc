"""Rebuilding a trained model from its artifact directory, for any registered task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.artifact import read_artifact
from softprompt.backbones import Backbone, load_backbone
from softprompt.config import load_config
from softprompt.errors import SoftpromptError
from softprompt.methods import get_method
from softprompt.methods.row_adapters import RowAdapters, read_row_adapter
from softprompt.tasks.base import TaskModel
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.registry import get_task, task_specs

DEFAULT_TASK = "classification"  # artifacts written before task.json recorded the task
# What every task's `load` reads of task.json, and its type (a task adds its own: TaskSpec.record_fields).
RECORD_FIELDS = {"method": str, "backbone": dict, "config": dict, "max_length": int}
OPTIONAL_FIELDS = {
    "task": str,
    "data": dict,
    "demonstrations": str,
    "extra_metrics": list,
    "calibration": dict,
    "fewshot": dict,
}
BACKBONE_FIELDS = {"name": str, "fingerprint": str}
KINDS = {str: "text", dict: "a mapping", int: "a whole number", list: "a list"}


def artifact_task(meta: dict[str, Any]) -> str:
    """The task an artifact's record names."""
    return meta.get("task", DEFAULT_TASK)


def load_model(
    path: str | Path,
    backbone: Backbone | None = None,
    device: str = "auto",
    precision: str = "auto",
    apart: bool = False,
) -> tuple[TaskModel, dict]:
    """Rebuild a trained model (classifier, tagger...) from an artifact directory.

    Args:
        path: the artifact directory.
        backbone: an already loaded backbone to attach to (it must be the one the artifact was
            trained on); loaded from the artifact's record when None.
        device, precision: where and how to load that backbone (see :func:`load_backbone`).
        apart: a LoRA or IA3 artifact leaves the backbone as it is: the model is its task's on
            the plain backbone, with the method's weights as ``model.row_adapter`` (to apply per
            row, as a server of many tasks does: :mod:`softprompt.methods.row_adapters`).

    Raises:
        SoftpromptError: corrupt artifact, an artifact of another kind, or a backbone other than
            the one it was trained on.
    """
    files = read_artifact(path)
    meta = files.meta
    _check_fields(meta, {"task": str}, path, "", required=False)
    refuse_unloadable(meta, path)  # first: other artifacts record other fields
    _check_fields(meta, OPTIONAL_FIELDS, path, "", required=False)
    check_record(meta, path)
    recorded = meta["backbone"]
    try:
        config = load_config(base=meta["config"])
    except SoftpromptError as exc:
        raise SoftpromptError(f"{path} is not a model artifact that softprompt can load ({exc})") from None
    task = get_task(artifact_task(meta))
    if backbone is None:
        backbone = load_backbone(recorded["name"], device, precision)
    if backbone.fingerprint != recorded["fingerprint"]:
        raise SoftpromptError(
            f"artifact {path} was trained on backbone '{recorded['name']}' (fingerprint "
            f"{recorded['fingerprint']}), not on '{backbone.name}' ({backbone.fingerprint})"
        )
    if apart and get_method(meta["method"]).per_row:
        model = task.load({**meta, "method": "none"}, config, backbone)
        options = config.method_options(meta["method"])
        model.row_adapter = read_row_adapter(meta["method"], files.state, getattr(options, "alpha", None))
        RowAdapters(backbone.model).check(model.row_adapter)
        return model, meta
    model = task.load(meta, config, backbone)
    try:
        model.load_export(files.state)
    except RuntimeError as exc:
        raise SoftpromptError(f"artifact {path}: weights do not fit the method ({str(exc).splitlines()[0]})") from None
    model.method.prepare_for_inference()
    return model, meta


def refuse_unloadable(meta: dict[str, Any], path: str | Path) -> None:
    """Refuse an artifact that is not a model ``load`` rebuilds (a detox prompt, a multitask
    bundle, or a task this version does not know), saying what to use it with."""
    name = artifact_task(meta)
    spec = task_specs().get(name)
    if spec is None:
        raise SoftpromptError(
            f"{path} is a '{name}' artifact, a task this version of softprompt does not know; "
            "upgrade softprompt or retrain it"
        )
    if spec.made_by:
        raise SoftpromptError(
            f"{path} is a '{name}' prompt (made by `{spec.made_by}`), not a classifier or tagger; "
            f"use it with {spec.used_with}"
        )


def check_record(meta: dict[str, Any], path: str | Path) -> None:
    """Refuse a ``task.json`` of a registered task (edited by hand, or damaged) whose fields
    ``load`` reads are missing or of the wrong type, naming the first such field."""
    _check_fields(meta, OPTIONAL_FIELDS, path, "", required=False)
    task = get_task(artifact_task(meta))
    _check_fields(meta, {**RECORD_FIELDS, **task.record_fields}, path, "", required=True)
    _check_fields(meta["backbone"], BACKBONE_FIELDS, path, "backbone.", required=True)


def _check_fields(record: dict, fields: dict[str, type], path: str | Path, prefix: str, required: bool) -> None:
    for name, kind in fields.items():
        if name not in record and not required:
            continue
        value = record.get(name)
        if name not in record or not isinstance(value, kind) or isinstance(value, bool):
            shown = "missing" if name not in record else f"{value!r:.40} ({type(value).__name__})"
            raise SoftpromptError(
                f"artifact {path}: task.json field '{prefix}{name}' is {shown}, not {KINDS[kind]}; "
                "restore the file or train again"
            )


def load_classifier(path: str | Path, backbone: Backbone | None = None) -> tuple[PromptedClassifier, dict]:
    """Rebuild a trained classifier from an artifact directory (see :func:`load_model`)."""
    model, meta = load_model(path, backbone)
    if not isinstance(model, PromptedClassifier):
        raise SoftpromptError(f"artifact {path} is a {artifact_task(meta)} model, not a classifier")
    return model, meta
