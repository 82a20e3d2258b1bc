"""``softprompt continual`` configuration: a task sequence and how to learn it.

Each task is a small mapping (``name``, ``dataset`` or ``data``, optional ``template`` and
``verbalizer``); everything else (backbone, method, train, prompt, method sections) is shared by
all stages and checked here through the ordinary run config, so a task's mistake is named as
``tasks[i] (name): ...`` before anything trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.config import (
    PromptConfig,
    RunConfig,
    TrainConfig,
    _check,
    _help,
    build,
    load_config,
    merge,
    method_sections,
    parse_overrides,
    read_yaml,
)
from softprompt.errors import SoftpromptError, did_you_mean

PROGRESSIVE = "progressive_prompts"
STRATEGIES = ("naive", "replay", "ewc")
TASK_KEYS = ("name", "dataset", "data", "template", "verbalizer")


@dataclass
class ReplayConfig:
    """Experience replay: a fixed-size buffer of earlier tasks' training examples."""

    size: int = _help("examples kept from earlier tasks (shared equally among them)", 200)

    def __post_init__(self) -> None:
        _check(self.size >= 1, "replay.size", "must be >= 1")


@dataclass
class EwcConfig:
    """Elastic weight consolidation (Kirkpatrick et al. 2017)."""

    weight: float = _help("lambda: strength of the Fisher-weighted pull to earlier weights", 1e4)
    samples: int = _help("training examples per task for the diagonal Fisher", 200)

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "ewc.weight", "must be >= 0")
        _check(self.samples >= 1, "ewc.samples", "must be >= 1")


@dataclass
class ContinualConfig:
    """Everything one ``softprompt continual`` run needs."""

    tasks: list[dict[str, Any]] = _help(  # noqa: RUF009 (_help returns a dataclasses.field)
        "the sequence: [{name, dataset | data, template?, verbalizer?}, ...]"
    )
    backbone: str = _help("a causal LM (softprompt ls backbones)", "smollm2-135m")
    method: str = _help(
        "progressive_prompts, or a method whose parameters all tasks share (lora, full...)", PROGRESSIVE
    )
    strategy: str = _help("for shared parameters: naive | replay | ewc", "naive")
    alone: bool = _help("also train each later task alone with the same method and budget", False)
    max_train: int | None = _help("use at most this many training examples per task", None)
    max_eval: int | None = _help("evaluate on at most this many dev and test examples per task", None)
    out: str = _help("output directory (a stage artifact per task, continual.md/.json/.png)", "runs/continual")
    seed: int = _help("random seed", 0)
    threads: int = _help("torch CPU threads (0 = torch's default)", 0)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(length=10, init="labels"))
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    ewc: EwcConfig = field(default_factory=EwcConfig)
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "method sections, e.g. lora.r=16"})

    def __post_init__(self) -> None:
        _check(isinstance(self.tasks, list) and len(self.tasks) >= 1, "tasks", "give a list of at least one task")
        _check(self.strategy in STRATEGIES, "strategy", f"'{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        _check(
            self.method != PROGRESSIVE or self.strategy == "naive",
            "strategy",
            "progressive_prompts never updates old prompts, so it needs no replay or EWC: use strategy=naive",
        )


def load_continual_config(path: str | Path | None, overrides: list[str]) -> ContinualConfig:
    """The continual config from a YAML file and ``key=value`` overrides."""
    return load_task_list_config(ContinualConfig, path, overrides)


def load_task_list_config(cls: type, path: str | Path | None, overrides: list[str]) -> Any:
    """A config with a ``tasks`` list and method sections (continual, multitask) from a YAML
    file and ``key=value`` overrides."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    sections = method_sections()
    options = {name: data.pop(name) for name in list(data) if name in sections}
    if "tasks" not in data:
        raise SoftpromptError("config has no 'tasks': list them, e.g. tasks: [{dataset: rotten-tomatoes}, ...]")
    config = build(cls, data)
    config.options = options
    return config


def plain_config(config: Any) -> dict[str, Any]:
    """A task-list config as plain data (method sections at the top level, as in the YAML)."""
    data = dataclasses.asdict(config)
    data.update(data.pop("options"))
    return data


@dataclass
class StageTask:
    """One task of the sequence, as an ordinary run config (its stage's artifact directory as out)."""

    name: str
    run: RunConfig


def task_configs(config: Any, directory: Callable[[int, str], Path] | None = None) -> list[StageTask]:
    """A validated run config per task; duplicate names and unknown keys are refused.

    Args:
        config: a :class:`ContinualConfig` (or any config with its shared fields and ``tasks``).
        directory: task index and name -> the task's artifact directory (default: its stage's).
    """
    directory = directory or (lambda index, name: Path(config.out) / f"stage-{index + 1}-{name}")
    tasks, names = [], set()
    for index, raw in enumerate(config.tasks):
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            raise SoftpromptError(f"{where}: expected a mapping with 'dataset' or 'data', got {raw!r}")
        unknown = [key for key in raw if key not in TASK_KEYS]
        if unknown:
            raise SoftpromptError(f"{where}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], list(TASK_KEYS))}")
        if not raw.get("dataset") and not (raw.get("data") or {}).get("train"):
            raise SoftpromptError(f"{where}: give 'dataset: NAME' or 'data: {{train: FILE, ...}}'")
        name = str(raw.get("name") or raw.get("dataset") or Path(raw["data"]["train"]).stem)
        if name in names:
            raise SoftpromptError(f"{where}: task name '{name}' is used twice; give each task its own name")
        names.add(name)
        run = {
            "backbone": config.backbone,
            "method": config.method,
            "seed": config.seed,
            "threads": config.threads,
            "out": str(directory(index, name)),
            "prompt": dataclasses.asdict(config.prompt),
            "train": dataclasses.asdict(config.train),
            "data": {"max_train": config.max_train, "max_eval": config.max_eval, **(raw.get("data") or {})},
            **{key: raw[key] for key in ("dataset", "template", "verbalizer") if raw.get(key) is not None},
            **config.options,
        }
        try:
            tasks.append(StageTask(name, load_config(base=run)))
        except SoftpromptError as exc:
            raise SoftpromptError(f"{where} ({name}): {exc}") from None
    return tasks
