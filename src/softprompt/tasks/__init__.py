"""Tasks: each is one package registered with ``@register_task`` (see :mod:`.registry`).

A task says how its data is read, how its model is built from a config or rebuilt from an
artifact, how it is scored, what it predicts for raw texts and how its results read. Nothing
outside this package branches on a task's name: callers ask :func:`get_task` for the spec.
"""

from __future__ import annotations

# Importing the task packages registers them.
from softprompt.tasks import classification, generation, lm, ner
from softprompt.tasks.registry import TASKS, TaskSpec, fit_soft_slots, get_task, register_task, task_specs

__all__ = [
    "TASKS",
    "TaskSpec",
    "classification",
    "fit_soft_slots",
    "generation",
    "get_task",
    "lm",
    "ner",
    "register_task",
    "task_specs",
]
