"""transformers' ``TrainerCallback`` in softprompt's loop, so a Trainer user's callbacks plug in.

The loop's hooks (:class:`~softprompt.training.callbacks.Callback`) are called on the adapter,
which keeps a transformers ``TrainerState`` in step with the loop and calls the Trainer's hooks
with ``(args, state, control)``: ``on_train_begin``, ``on_step_end`` then ``on_log`` (with the
step's logs), ``on_evaluate`` (the dev metrics as ``eval_<name>``) and ``on_train_end``.
``control.should_training_stop`` stops the loop as a hook returning True does. ``args`` is a
``TrainingArguments`` holding the run's settings (its output folder, learning rate, steps,
batch size, seed); the Trainer's own objects (``model``, ``optimizer``...) are not passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.errors import SoftpromptError
from softprompt.training.callbacks import Callback

if TYPE_CHECKING:
    from softprompt.config import TrainConfig
    from softprompt.training.checkpoint import Progress

HOOKS = ("on_train_begin", "on_step_end", "on_evaluate", "on_train_end")


def is_trainer_callback(callback: Any) -> bool:
    """Whether ``callback`` is a transformers ``TrainerCallback`` (class or instance), found
    without importing transformers' trainer modules (slow to import) for our own callbacks."""
    cls = callback if isinstance(callback, type) else type(callback)
    return any(
        base.__name__ == "TrainerCallback" and base.__module__ == "transformers.trainer_callback"
        for base in cls.__mro__
    )


def check_callbacks(callbacks: list[Any]) -> None:
    """Refuse, in one line, what the loop cannot call: neither one of our callbacks (any object
    with one of :data:`HOOKS`) nor a ``TrainerCallback``."""
    for index, callback in enumerate(callbacks):
        if is_trainer_callback(callback) or any(callable(getattr(callback, hook, None)) for hook in HOOKS):
            continue
        raise SoftpromptError(
            f"callbacks[{index}]: a {type(callback).__name__} has none of the loop's hooks ({', '.join(HOOKS)}); "
            "subclass softprompt.Callback or transformers.TrainerCallback"
        )


class TrainerCallbackAdapter(Callback):
    """One ``TrainerCallback`` (an instance, or a class built with no arguments) as a loop callback."""

    def __init__(self, callback: Any, settings: TrainConfig, out: Path, seed: int):
        from transformers import TrainerControl, TrainerState, TrainingArguments

        self.callback = callback() if isinstance(callback, type) else callback
        self.args = TrainingArguments(
            output_dir=str(out),
            learning_rate=settings.lr,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            warmup_steps=max(1, int(settings.warmup_ratio * settings.max_steps)),  # as the schedule counts them
            weight_decay=settings.weight_decay,
            eval_steps=settings.eval_every,
            logging_steps=1,
            seed=seed,
            report_to="none",
            save_strategy="no",
            use_cpu=True,  # the args describe the run; placing the model is the loop's business
        )
        self.state = TrainerState(max_steps=settings.max_steps)
        self.control = TrainerControl()

    def _call(self, hook: str, state: Progress, **kwargs: Any) -> bool:
        self.state.global_step = state.step
        method = getattr(self.callback, hook, None)
        if method is not None:
            method(self.args, self.state, self.control, **kwargs)
        return bool(self.control.should_training_stop)

    def on_train_begin(self, state: Progress, max_steps: int) -> None:
        self.state.max_steps = max_steps
        self._call("on_train_begin", state)

    def on_step_end(self, state: Progress, logs: dict[str, float]) -> bool:
        stop = self._call("on_step_end", state)
        entry = {**logs, "step": state.step}
        self.state.log_history.append(entry)
        return self._call("on_log", state, logs=dict(logs)) or stop

    def on_evaluate(self, state: Progress, metrics: dict[str, Any], improved: bool) -> bool:
        numbers = {
            f"eval_{key}": value
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        self.state.best_metric = state.best_metric
        self.state.best_global_step = state.best_step
        self.state.log_history.append({**numbers, "step": state.step})
        return self._call("on_evaluate", state, metrics=numbers)

    def on_train_end(self, state: Progress) -> None:
        self._call("on_train_end", state)


def loop_callbacks(callbacks: list[Any], settings: TrainConfig, out: Path, seed: int) -> list[Callback]:
    """The user's callbacks as the loop calls them: each ``TrainerCallback`` adapted, ours as they are."""
    return [TrainerCallbackAdapter(cb, settings, out, seed) if is_trainer_callback(cb) else cb for cb in callbacks]
