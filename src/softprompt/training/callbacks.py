"""Hooks into the training loop: the one mechanism behind the progress bar, early stopping, the
experiment trackers and whatever a user passes as ``softprompt.train(..., callbacks=[...])``.

A callback defines any of the methods of :class:`Callback`; the loop calls them in order. A
hook that returns True asks the loop to stop (after this step; the best weights so far are
kept, as with early stopping).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from softprompt.training.checkpoint import Progress


class Callback:
    """The hooks of the training loop (all optional; each does nothing by default).

    ``state`` is the loop's :class:`~softprompt.training.checkpoint.Progress` (``step``,
    ``best_metric``, ``best_step``, ``evals_without_improvement``); read it, do not change it.
    """

    def on_train_begin(self, state: Progress, max_steps: int) -> None:
        """Before the first step (also of a resumed run: ``state.step`` may be > 0)."""

    def on_step_end(self, state: Progress, logs: dict[str, float]) -> bool | None:
        """After each optimizer step. ``logs``: ``loss``, ``lr``, ``grad_norm``,
        ``tokens_per_second``, ``peak_memory_mb``, ``seconds``. Return True to stop."""

    def on_evaluate(self, state: Progress, metrics: dict[str, Any], improved: bool) -> bool | None:
        """After each dev evaluation (``metrics``: the task's dev metrics; ``improved``: a new
        best, whose weights were just saved). Return True to stop."""

    def on_train_end(self, state: Progress) -> None:
        """After the last step, or after a stop."""


class ProgressBar(Callback):
    """The loop's progress bar: steps, the step's loss and the best dev metric."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_train_begin(self, state: Progress, max_steps: int) -> None:
        self.bar = tqdm(total=max_steps, initial=state.step, disable=not self.enabled, desc="train", unit="step")

    def on_step_end(self, state: Progress, logs: dict[str, float]) -> None:
        self.bar.update(1)
        shown = {"loss": f"{logs['loss']:.4f}"}
        if math.isfinite(state.best_metric):  # -inf until the first evaluation: nothing to show yet
            shown["dev"] = f"{state.best_metric:.4f}"
        self.bar.set_postfix(shown)

    def on_train_end(self, state: Progress) -> None:
        if self.bar is not None:
            self.bar.close()


class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations in a row without a new best (0: never). The count is
    the loop's (``state.evals_without_improvement``), kept in the checkpoint, so a resumed run
    stops where the uninterrupted one would."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, state: Progress, metrics: dict[str, Any], improved: bool) -> bool:
        return bool(self.patience) and state.evals_without_improvement >= self.patience


def call_hooks(callbacks: list[Callback], hook: str, *args: Any) -> bool:
    """Call ``hook`` on every callback (all of them, even after one asked to stop); whether any asked to stop."""
    stop = False
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None and method(*args):
            stop = True
    return stop
