"""``softprompt multitask``: several tasks trained at once on one frozen backbone, each with its
own soft prompt, in batches that mix the tasks (:class:`~softprompt.tasks.classification.mixed.MixedPromptClassifier`).

The recipe lists ``tasks`` as ``continual`` does. Batches sample the tasks in proportion to their
training sets (``sampling=proportional``) or equally (``uniform``: smaller sets are cycled). The
run's checkpoint and best weights (by the mean dev accuracy over tasks) live in ``out``; at the
end every task gets an ordinary artifact in ``out/tasks/<name>`` (``softprompt serve --artifacts
out/tasks`` serves them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from softprompt.multitask.config import SAMPLING, TASKS_DIR, MultitaskConfig, load_multitask_config

if TYPE_CHECKING:
    from softprompt.multitask.training import MultitaskModel, run_multitask, training_rows

__all__ = [
    "SAMPLING",
    "TASKS_DIR",
    "MultitaskConfig",
    "MultitaskModel",
    "load_multitask_config",
    "run_multitask",
    "training_rows",
]


def __getattr__(name: str) -> Any:
    """The training side (:mod:`softprompt.multitask.training`, which imports torch), on first use:
    the command reads and checks its config first."""
    if name in ("MultitaskModel", "run_multitask", "training_rows"):
        from softprompt.multitask import training

        return getattr(training, name)
    raise AttributeError(f"module 'softprompt.multitask' has no attribute '{name}'")
