"""The settings of ``softprompt multitask``: read and checked before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.config import ComputeSettings, PromptConfig, TrainConfig, catalogue, option, require
from softprompt.config.tasklist import load_task_list_config

SAMPLING = ("proportional", "uniform")
TASKS_DIR = "tasks"


@dataclass
class MultitaskConfig(ComputeSettings):
    """Everything one ``softprompt multitask`` run needs."""

    tasks: list[dict[str, Any]] = option(  # noqa: RUF009 (option returns a dataclasses.field)
        "the tasks: [{name, dataset | data, template?, verbalizer?}, ...]"
    )
    backbone: str = option("a causal LM (softprompt ls backbones)", "smollm2-135m")
    method: str = option("a soft-prompt method: prompt_tuning or ptuning", catalogue.method_named("PromptTuning"))
    sampling: str = option("proportional | uniform: how batches draw from the tasks", "proportional")
    max_train: int | None = option("use at most this many training examples per task", None)
    max_eval: int | None = option("evaluate on at most this many dev and test examples per task", None)
    out: str = option("output directory (checkpoint; a ready artifact per task in out/tasks/)", "runs/multitask")
    seed: int = option("random seed", 0)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(length=20, init="labels"))
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "method sections"})

    def __post_init__(self) -> None:
        require(isinstance(self.tasks, list) and len(self.tasks) >= 1, "tasks", "give a list of at least one task")
        require(self.sampling in SAMPLING, "sampling", f"'{self.sampling}' is not one of {', '.join(SAMPLING)}")
        soft = catalogue.check_method(self.method).settings["uses_soft_tokens"]
        default = catalogue.method_named("PromptTuning")
        require(soft, "method", f"{self.method} has no soft prompt to mix; use {default}")


def load_multitask_config(path: str | Path | None, overrides: list[str]) -> MultitaskConfig:
    """The multitask config from a YAML file and ``key=value`` overrides."""
    return load_task_list_config(MultitaskConfig, path, overrides)
