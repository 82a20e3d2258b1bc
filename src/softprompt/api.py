"""The public Python API: build, train, load and apply prompt models.

Everything here is re-exported from :mod:`softprompt`::

    import softprompt
    result = softprompt.train(train_data=rows, template="{soft:8}{text}\\nSentiment:", verbalizer=...)
    result.model.predict(["a tedious film"])
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from softprompt.artifact import RUN_CONFIG_FILE, read_artifact, write_artifact
from softprompt.backbones import Backbone, load_backbone
from softprompt.config import RunConfig, load_config
from softprompt.config.recipe import merge
from softprompt.data.inputs import checked_batch_size, checked_records, checked_texts
from softprompt.data.splits import Records, Splits
from softprompt.data.tables import SPLIT_NAMES
from softprompt.errors import SoftpromptError, flag
from softprompt.lifecycle.retrain import RetrainResult, retrain
from softprompt.seeding import seeded
from softprompt.tasks import TaskSpec, get_task
from softprompt.tasks.base import TaskModel, evaluate
from softprompt.tasks.loading import artifact_task, load_model
from softprompt.training.callbacks import Callback
from softprompt.training.checkpoint import CHECKPOINT
from softprompt.training.loop import LOG_FILE
from softprompt.training.run import PLOT_FILE, TrainResult, artifact_meta
from softprompt.training.run import train as train_run
from softprompt.training.trainer_callbacks import check_callbacks


class Model:
    """A prompt model ready to use: a frozen backbone, a method's parameters and a task.

    Attributes:
        module: the underlying ``torch.nn.Module`` (a classifier or tagger).
        task: the task spec (``softprompt ls tasks``).
        meta: the artifact record (template, verbalizer or tags, backbone, metrics...).
    """

    def __init__(self, module: TaskModel, task: TaskSpec, meta: dict[str, Any]):
        self.module = module
        self.task = task
        self.meta = meta

    def predict(self, texts: str | list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Apply the model to raw texts.

        Returns:
            One dict per text: ``{"text", "label", "scores"}`` for a classifier,
            ``{"text", "entities"}`` for a tagger, ``{"text", "output"}`` for a generation model.
        """
        return self.task.predict(self.module, checked_texts(texts), checked_batch_size(batch_size))

    def generate(self, texts: str | list[str], batch_size: int = 32, **decoding: Any) -> list[str]:
        """The output a generation model writes for each text.

        Args:
            texts: the inputs (each fills the template's ``{text}``).
            batch_size: inputs decoded together.
            **decoding: ``gen`` settings over the model's own, e.g. ``num_beams=4``,
                ``do_sample=True, top_p=0.9, seed=1``, ``max_new_tokens=64``.
        """
        settings = getattr(self.module, "decoding", None)
        if settings is None:
            raise SoftpromptError(
                f"this is a {self.task.name} model; use predict() (generate() is for task=generation)"
            )
        self.module.decoding = load_config(base={"gen": {**dataclasses.asdict(settings), **decoding}}).gen
        try:
            return [row["output"] for row in self.predict(texts, batch_size)]
        finally:
            self.module.decoding = settings

    def evaluate(self, examples: Records, batch_size: int = 32) -> dict[str, Any]:
        """Metrics on labelled in-memory examples (dicts or a DataFrame, with the training data's fields)."""
        items = self.task.from_records(checked_records(examples, "examples"), "examples", self.meta)
        return evaluate(self.module, items, checked_batch_size(batch_size), where="examples")

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the model as an artifact directory (loadable by :func:`load` and the CLI).

        Args:
            directory: a new or empty directory.
            overwrite: replace what a non-empty ``directory`` holds: the artifact's files, and a
                training run's checkpoint, ``config.json``, ``log.jsonl`` and curves, which would describe
                another model (other files are left alone).
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise SoftpromptError(f"{directory} is a file; give a directory to save the model in")
        if directory.is_dir() and any(directory.iterdir()):
            if not overwrite:
                raise SoftpromptError(
                    f"{directory} is not empty (a run or other files); save into a new directory, "
                    f"or pass {flag('overwrite')} to replace the model there"
                )
            shutil.rmtree(directory / CHECKPOINT.parent, ignore_errors=True)
            for name in (RUN_CONFIG_FILE, LOG_FILE, PLOT_FILE):
                (directory / name).unlink(missing_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        write_artifact(directory, self.module.export_state(), self.meta, self._peft_config())
        return directory

    def push_to_hub(self, repo_id: str, private: bool = False) -> str:
        """Publish the model as an artifact in the Hub repository ``repo_id`` (created if missing),
        with ``HF_TOKEN`` or the ``hf auth login`` token; returns the commit's URL. Loadable
        afterwards with ``softprompt.load(repo_id)``."""
        from softprompt.artifact.push import push_artifact

        with tempfile.TemporaryDirectory() as tmp:
            return push_artifact(self.save(Path(tmp) / "artifact"), repo_id, private)

    def _peft_config(self) -> dict[str, Any] | None:
        return self.module.method.peft_config(self.module.backbone, self.meta.get("soft_prefix", False))


def _config(config: RunConfig | str | Path | dict | None, settings: dict[str, Any]) -> RunConfig:
    """A run config from a YAML path, a dict or a RunConfig, with ``settings`` merged on top."""
    if isinstance(config, RunConfig):
        base = config.to_dict()
    elif isinstance(config, (str, Path)):
        base = load_config(config).to_dict()
    elif isinstance(config, dict) or config is None:
        base = dict(config or {})
    else:
        raise SoftpromptError(f"config: expected a YAML path, a dict or a RunConfig, got {type(config).__name__}")
    return load_config(base=merge(base, settings))


def _records(train_data: Records | None, dev_data: Records | None, test_data: Records | None) -> dict[str, Records]:
    given = {"train": train_data, "dev": dev_data, "test": test_data}
    datasets = sys.modules.get("datasets")  # a DatasetDict can only come from an imported `datasets`
    if datasets is not None and isinstance(train_data, datasets.DatasetDict):
        given = {**given, **_dataset_dict_splits(train_data, dev_data, test_data)}
    records = {name: checked_records(data, f"{name}_data") for name, data in given.items() if data is not None}
    if records and "train" not in records:
        raise SoftpromptError("dev_data/test_data need train_data too")
    return records


def _dataset_dict_splits(splits: Mapping, dev_data: Records | None, test_data: Records | None) -> dict[str, Records]:
    """train_data given as a ``datasets.DatasetDict``: its train split trains, and its validation
    (or dev) and test splits serve as dev_data and test_data unless those are given."""
    if "train" not in splits:
        raise SoftpromptError(f"train_data: the DatasetDict has no 'train' split (splits: {', '.join(splits)})")
    found = {"train": splits["train"]}
    dev = next((splits[name] for name in SPLIT_NAMES["dev"] if name in splits), None)
    if dev is not None and dev_data is None:
        found["dev"] = dev
    if "test" in splits and test_data is None:
        found["test"] = splits["test"]
    return found


def _backbone(backbone: Backbone | str | None, config: RunConfig) -> tuple[Backbone | None, RunConfig]:
    if isinstance(backbone, Backbone):
        return backbone, dataclasses.replace(config, backbone=backbone.name)
    if isinstance(backbone, str):
        return None, dataclasses.replace(config, backbone=backbone)
    return None, config


def build(
    config: RunConfig | str | Path | dict | None = None,
    *,
    backbone: Backbone | str | None = None,
    train_data: Records | None = None,
    **settings: Any,
) -> Model:
    """An untrained prompt model; with ``method="none"`` it classifies zero-shot right away.

    Args:
        config: a recipe YAML path, a dict of settings, or a :class:`RunConfig`.
        backbone: a loaded backbone, or a name / local path / Hub id.
        train_data: records for the tag set (NER) or few-shot demonstrations (``fewshot={"k": 4}``).
        **settings: recipe keys on top of ``config`` (sections as dicts, e.g. ``prompt={"length": 8}``).
    """
    loaded, run = _backbone(backbone, _config(config, settings))
    task = get_task(run.task)
    task.check(run)
    splits = Splits([], [], [], {"train": "train_data (in memory)"})
    if train_data is not None:
        train_data = checked_records(train_data, "train_data")
        splits = task.load_splits(run, {"train": train_data, "dev": train_data})
    loaded = loaded or load_backbone(run.backbone, run.device, run.precision, run.quantize)
    with seeded(run.seed):
        module = task.build(run, loaded, splits)
    if run.calibrate != "none":
        task.calibrate(module)
    return Model(module, task, artifact_meta(run, module, loaded, splits))


def train(
    config: RunConfig | str | Path | dict | None = None,
    *,
    train_data: Records | None = None,
    dev_data: Records | None = None,
    test_data: Records | None = None,
    backbone: Backbone | str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    extend: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    **settings: Any,
) -> TrainResult:
    """Train a prompt model and write its artifact to ``out``.

    Args:
        config: a recipe YAML path, a dict of settings, or a :class:`RunConfig`.
        train_data: training records (dicts, a pandas or polars DataFrame, or a
            ``datasets.Dataset``; a ``DatasetDict`` brings its validation and test splits too);
            without it the recipe's files or built-in dataset are used.
        dev_data: dev records (default: held out of ``train_data``).
        test_data: test records (optional).
        backbone: a loaded backbone, or a name / local path / Hub id.
        resume: continue from the checkpoint in ``out``.
        overwrite: replace a run already in ``out``.
        extend: with ``resume``, allow a larger ``train.max_steps`` than the saved run's.
        progress: show progress bars.
        callbacks: :class:`softprompt.Callback` objects the training loop calls after each step
            and evaluation (and that may ask it to stop), or transformers ``TrainerCallback`` objects
            (adapted: :mod:`softprompt.training.trainer_callbacks`).
        **settings: recipe keys on top of ``config``: ``template=``, ``verbalizer=``, ``method=``,
            ``out=``, ``seed=``, and sections as dicts (``train={"max_steps": 100}``, ``lora={"r": 16}``).

    Returns:
        A :class:`TrainResult`; ``result.model`` is the trained :class:`Model` (best weights).
    """
    loaded, run = _backbone(backbone, _config(config, settings))
    records = _records(train_data, dev_data, test_data) or None
    if callbacks is not None and (isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable)):
        raise SoftpromptError(f"callbacks must be a list of Callback objects, got a {type(callbacks).__name__}")
    check_callbacks(list(callbacks or []))
    result = train_run(run, resume, overwrite, progress, loaded, records, extend, list(callbacks or []))
    if result.model is not None:
        result.model = Model(result.model, get_task(run.task), read_artifact(result.out).meta)
    return result


def load(
    artifact: str | Path, backbone: Backbone | None = None, *, device: str = "auto", precision: str = "auto"
) -> Model:
    """The model saved in an artifact directory, or in a Hub repository.

    Args:
        artifact: the directory ``train`` (or :meth:`Model.save`) wrote, or a Hub model id
            (``user/repo``) such a directory was pushed to (fetched through the Hugging Face
            cache; offline from it).
        backbone: an already loaded backbone to share (it must be the one the artifact was
            trained on); loaded from the artifact's record when None.
        device: ``auto | cpu | cuda | cuda:N | mps`` for that backbone.
        precision: ``auto | fp32 | bf16 | fp16`` for that backbone.
    """
    if not isinstance(artifact, (str, os.PathLike)):
        raise SoftpromptError(f"artifact must be the path of an artifact directory, got a {type(artifact).__name__}")
    if backbone is not None and not isinstance(backbone, Backbone):
        raise SoftpromptError(
            f"backbone must be a Backbone from softprompt.load_backbone (or None), got a {type(backbone).__name__}"
        )
    module, meta = load_model(artifact, backbone, device, precision)
    return Model(module, get_task(artifact_task(meta)), meta)


__all__ = ["Model", "RetrainResult", "build", "load", "retrain", "train"]
