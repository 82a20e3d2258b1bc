"""A recipe that lists several tasks (``softprompt continual`` and ``softprompt multitask``), made
ready to train: each task's data loaded and its prompting resolved. Reading and checking the
recipe is :mod:`softprompt.config.tasklist`'s, before torch is imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from softprompt.config import RunConfig
from softprompt.config.tasklist import StageTask
from softprompt.data.splits import Splits, example_splits
from softprompt.errors import SoftpromptError
from softprompt.methods.none import NoMethod
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.classification import resolve_prompting


@dataclass
class PreparedTask:
    """A task of the sequence with its data loaded and its prompting resolved."""

    name: str
    run: RunConfig
    template: Template  # without soft slots: learners place the soft tokens
    verbalizer: Verbalizer
    splits: Splits

    @property
    def out(self) -> Path:
        return Path(self.run.out)

    def where(self, split: str) -> str:
        source = self.splits.source
        return f"{self.name}: {source.get(split) or source.get('dataset')} ({split})"


def prepare_tasks(tasks: list[StageTask], need_test: bool = True) -> list[PreparedTask]:
    """Resolve every task's template and load its data, naming the task on any mistake: nothing
    trains until the whole sequence is known to be readable."""
    prepared = []
    for index, task in enumerate(tasks):
        try:
            template, verbalizer = resolve_prompting(dataclasses.replace(task.run, method=NoMethod.name))
            splits = example_splits(task.run)
        except SoftpromptError as exc:
            raise SoftpromptError(f"tasks[{index}] ({task.name}): {exc}") from None
        if need_test and not splits.test:
            raise SoftpromptError(
                f"tasks[{index}] ({task.name}): no test split to score after each stage; set data.test"
            )
        prepared.append(PreparedTask(task.name, task.run, template, verbalizer, splits))
    return prepared
