"""``softprompt continual`` configuration: a task sequence and how to learn it.

Each task is a small mapping (``name``, ``dataset`` or ``data``, optional ``template`` and
``verbalizer``); everything else (backbone, method, train, prompt, method sections) is shared by
all stages and checked here through the ordinary run config, so a task's mistake is named as
``tasks[i] (name): ...`` before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.config import ComputeSettings, PromptConfig, TrainConfig, catalogue, option, require
from softprompt.config.tasklist import load_task_list_config

DEFAULT_METHOD = catalogue.method_named("ProgressivePrompts")
STRATEGIES = ("naive", "replay", "ewc")


@dataclass
class ReplayConfig:
    """Experience replay: a fixed-size buffer of earlier tasks' training examples."""

    size: int = option("examples kept from earlier tasks (shared equally among them)", 200)

    def __post_init__(self) -> None:
        require(self.size >= 1, "replay.size", "must be >= 1")


@dataclass
class EwcConfig:
    """Elastic weight consolidation (Kirkpatrick et al. 2017)."""

    weight: float = option("lambda: strength of the Fisher-weighted pull to earlier weights", 1e4)
    samples: int = option("training examples per task for the diagonal Fisher", 200)

    def __post_init__(self) -> None:
        require(self.weight >= 0, "ewc.weight", "must be >= 0")
        require(self.samples >= 1, "ewc.samples", "must be >= 1")


@dataclass
class ContinualConfig(ComputeSettings):
    """Everything one ``softprompt continual`` run needs."""

    tasks: list[dict[str, Any]] = option(  # noqa: RUF009 (option returns a dataclasses.field)
        "the sequence: [{name, dataset | data, template?, verbalizer?}, ...]"
    )
    backbone: str = option("a causal LM (softprompt ls backbones)", "smollm2-135m")
    method: str = option(
        "progressive_prompts, or a method whose parameters all tasks share (lora, full...)", DEFAULT_METHOD
    )
    strategy: str = option("for shared parameters: naive | replay | ewc", "naive")
    alone: bool = option("also train each later task alone with the same method and budget", False)
    max_train: int | None = option("use at most this many training examples per task", None)
    max_eval: int | None = option("evaluate on at most this many dev and test examples per task", None)
    out: str = option("output directory (a stage artifact per task, continual.md/.json/.png)", "runs/continual")
    seed: int = option("random seed", 0)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(length=10, init="labels"))
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    ewc: EwcConfig = field(default_factory=EwcConfig)
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "method sections, e.g. lora.r=16"})

    def __post_init__(self) -> None:
        require(isinstance(self.tasks, list) and len(self.tasks) >= 1, "tasks", "give a list of at least one task")
        require(self.strategy in STRATEGIES, "strategy", f"'{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        require(
            not catalogue.check_method(self.method).settings["sequential"] or self.strategy == "naive",
            "strategy",
            f"{self.method} never updates old prompts, so it needs no replay or EWC: use strategy=naive",
        )


def load_continual_config(path: str | Path | None, overrides: list[str]) -> ContinualConfig:
    """The continual config from a YAML file and ``key=value`` overrides."""
    return load_task_list_config(ContinualConfig, path, overrides)
