"""A recipe that lists several tasks (``softprompt continual`` and ``softprompt multitask``).

Each task is a small mapping (``name``, ``dataset`` or ``data``, optional ``template`` and
``verbalizer``); everything else (backbone, method, train, prompt, method sections) is shared by
all tasks and checked through the ordinary run config, so a task's mistake is named as
``tasks[i] (name): ...`` before anything trains (or imports torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.config import RunConfig, load_config, method_sections
from softprompt.config.recipe import build, merge, parse_overrides, read_yaml
from softprompt.errors import SoftpromptError, did_you_mean

TASK_KEYS = ("name", "dataset", "data", "template", "verbalizer")


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
