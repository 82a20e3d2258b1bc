"""The task registry: :class:`TaskSpec` (what a task provides), :func:`register_task` (the one
place a task's name is written) and :func:`get_task`. Task packages import this module, and
:mod:`softprompt.tasks`' ``__init__`` imports every task package, so importing anything under
:mod:`softprompt.tasks` fills the registry (Python initialises a package before its modules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from softprompt.data.tables import is_table
from softprompt.errors import SoftpromptError, unknown_name
from softprompt.methods import get_method

if TYPE_CHECKING:
    import torch

    from softprompt.backbones import Backbone
    from softprompt.config import RunConfig
    from softprompt.data.splits import Records, Splits
    from softprompt.prompts import Template
    from softprompt.tasks.base import TaskModel

logger = logging.getLogger(__name__)

# How `softprompt serve` answers a task's artifacts (GET /v1/tasks' "kind"): label scores in the
# mixed classification batch, or text from the shared decoding batch.
CLASSIFY, GENERATE = "classify", "generate"


class TaskSpec:
    """What a registered task provides. ``name`` is set by :func:`register_task`."""

    name: str = ""
    description: str = ""
    metric: str = "accuracy"  # the dev metric that selects the best weights
    metric_label: str = "accuracy"  # how reports name it
    predict_command: str = "predict"  # the CLI command that applies an artifact to raw texts
    prompt_baselines: bool = False  # zero-/few-shot baselines apply (`compare`)
    baseline_names: tuple[str, ...] = ()  # the baselines `compare` adds (zero_shot, few_shot, the task's own)
    report_columns: tuple[tuple[str, str, str], ...] = (("accuracy", "accuracy", "{:.1%}"),)  # key, label, format
    record_fields: ClassVar[dict[str, type]] = {}  # what `load` reads of an artifact's task.json, and its type
    # A task whose artifacts another command writes (not `train`), and that `load`/`eval`/
    # `predict` do not rebuild as a model: that command, and what its artifacts are used with.
    made_by: str = ""
    used_with: str = ""
    calibrates: bool = False  # `calibrate=contextual` applies: the model gives label probabilities
    served_as: str | None = None  # CLASSIFY or GENERATE: what `softprompt serve` answers with it; None: not served

    def calibrate(self, model: TaskModel) -> dict[str, Any]:
        """Measure the model's own label bias and divide it out from now on; the artifact's record of it."""
        raise SoftpromptError(f"task={self.name} has no label probabilities to calibrate; use calibrate=none")

    def bare_prompt(self, path: Path, backbone: Backbone) -> torch.Tensor | None:
        """For a task whose artifacts are a soft prompt alone, put before the text when served
        (no model to rebuild): that prompt. None: the server loads the artifact's model."""
        return None

    def headline(self, metrics: dict[str, Any]) -> float:
        """The one number of a metrics dict that ranks runs (``compare``'s chart)."""
        return metrics[self.report_columns[0][0]]

    def zero_shot_template(self, config: RunConfig) -> Template | None:
        """The template of ``compare``'s zero-/few-shot rows (the shared one without soft slots)."""
        template = self.compare_template(config)
        return template.without_soft() if template is not None else None

    def offline_baselines(self, config: RunConfig, splits: Splits, wanted: list[str]) -> list[tuple[str, dict]]:
        """``(label, test metrics)`` of the task's baselines that train no prompt (``compare``)."""
        return []

    def load_splits(self, config: RunConfig, records: dict[str, Records] | None = None) -> Splits:
        """The run's train/dev/test data (from files, a built-in dataset, or in-memory records)."""
        raise NotImplementedError

    def from_records(self, records: Records, source: str, meta: dict[str, Any]) -> list:
        """Labelled items of in-memory records, read with the fields an artifact recorded."""
        raise NotImplementedError

    def check(self, config: RunConfig) -> None:
        """Cheap checks of the config (template, verbalizer...) before any data or model loads."""
        if config.calibrate != "none" and not self.calibrates:
            raise SoftpromptError(f"config field 'calibrate': task={self.name} has no label probabilities to calibrate")
        if self.made_by:
            raise SoftpromptError(f"task={self.name} artifacts are made by `{self.made_by}`, not by train or compare")

    def build(self, config: RunConfig, backbone: Backbone, splits: Splits) -> TaskModel:
        """The untrained model a run config describes, checked against its data."""
        raise NotImplementedError

    def load(self, meta: dict[str, Any], config: RunConfig, backbone: Backbone) -> TaskModel:
        """The model an artifact describes (its weights are loaded by the caller)."""
        raise NotImplementedError

    def baselines(self, config: RunConfig, backbone: Backbone, splits: Splits, progress: str | None) -> dict:
        """Extra metrics measured before training (e.g. zero-shot), keyed by name."""
        return {}

    def compare_template(self, config: RunConfig) -> Template | None:
        """The template methods share in ``compare`` (soft slots dropped for methods without)."""
        return None

    def read_eval_data(
        self, path: str, meta: dict[str, Any], model: TaskModel, fields: dict[str, str | None], key: str = "test"
    ) -> list:
        """Labelled examples of a file given to ``eval --data`` (``key``: the split it stands for,
        which picks the split of table data that has several)."""
        raise NotImplementedError

    def builtin_split(self, name: str, path: str | None, split: str, model: TaskModel) -> list:
        """A split of a built-in dataset (tasks that have them)."""
        raise SoftpromptError(f"task {self.name} has no built-in datasets; give --data FILE")

    def own_split(self, meta: dict[str, Any], split: str, model: TaskModel) -> tuple[list, str]:
        """``split`` of the data an artifact was trained on, and a description of it."""
        source = meta.get("data", {})
        path = source.get(split)
        if path and (Path(path).is_file() or is_table(path)):
            return self.read_eval_data(path, meta, model, {}, split), f"{path} ({split})"
        if source.get("dataset"):
            name = source["dataset"]
            return self.builtin_split(name, source.get("path"), split, model), f"{name} ({split})"
        if path:
            raise SoftpromptError(f"the artifact's {split} data ({path}) is not a file here; give --data FILE")
        raise SoftpromptError(
            f"the artifact records no {split} file (its dev data may have been held out of train); give --data FILE"
        )

    def summary(self, metrics: dict[str, Any], best_step: int, trained: bool, method: str) -> list[str]:
        """Lines that report a finished run."""
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], where: str) -> str | None:
        """A readable report of evaluation metrics, or None to print them as JSON."""
        return None

    def describe(self, meta: dict[str, Any]) -> dict[str, Any]:
        """What ``inspect`` shows of an artifact's task."""
        return {}

    def predict(self, model: TaskModel, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """One result dict per raw text."""
        raise NotImplementedError


def fit_soft_slots(template: Template, config: RunConfig, announce: bool = False) -> Template:
    """``template`` for the run's method: soft-token methods get ``prompt.length`` soft tokens in
    front when it has no slot; a method without soft tokens uses it without its slots (so one
    recipe serves every method: ``method=lora`` on the demo recipe), said in one logged line
    when ``announce`` (the build, not every check, announces it).

    Raises:
        SoftpromptError: more soft tokens than ``train.max_length`` (checked before any are made).
    """
    method = get_method(config.method)
    if method.uses_soft_tokens and template.num_soft == 0:
        return _within_length(template.with_prefix(config.prompt.length), config, "prompt.length")
    if not method.uses_soft_tokens and template.num_soft:
        plain = template.without_soft()
        if announce:
            logger.info(
                "note: method=%s has no soft tokens; the template is used without its soft slots: %r",
                config.method,
                plain.source,
            )
        return plain
    return _within_length(template, config, "the template's {soft} slots") if method.uses_soft_tokens else template


def _within_length(template: Template, config: RunConfig, source: str) -> Template:
    limit = config.train.max_length
    if template.num_soft > limit:
        raise SoftpromptError(
            f"{source} ask for {template.num_soft} soft tokens, more than train.max_length={limit} "
            "tokens in all; use fewer soft tokens or raise train.max_length"
        )
    return template


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, description: str) -> Callable[[type[TaskSpec]], type[TaskSpec]]:
    """Class decorator registering a task spec; the one place a task's name is written (a literal:
    :mod:`softprompt.config.catalogue` reads it from the source, without importing the task)."""

    def decorate(cls: type[TaskSpec]) -> type[TaskSpec]:
        cls.name, cls.description = name, description
        TASKS[name] = cls()
        return cls

    return decorate


def task_specs() -> dict[str, TaskSpec]:
    """Every registered task by name."""
    return TASKS


def get_task(name: str) -> TaskSpec:
    """The registered task, or an error suggesting the closest name."""
    specs = task_specs()
    if name not in specs:
        raise unknown_name("task", name, specs)
    return specs[name]
