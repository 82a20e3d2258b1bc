"""Experiment trackers (``train.report_to``) as a training callback.

They are accelerate's tracker classes (TensorBoard, W&B, MLflow...), started as
``Accelerator.init_trackers`` starts them, but held by the run rather than by the loop's
``Accelerator``: a run reports its final test scores after the loop has ended, to the same
tracker run. The run's settings go in as hyperparameters; every step logs the loss, learning
rate, gradient norm, throughput and peak memory; every evaluation the dev metrics; the end the
test metrics. Only the main process reports (accelerate's trackers see to it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt.config.trackers import report_to_names
from softprompt.training.callbacks import Callback
from softprompt.training.checkpoint import Progress
from softprompt.training.resume import flatten

TRACKERS_DIR = "trackers"  # under the run's out: TensorBoard's event files


def scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The plain numbers of a metrics dict, keyed ``prefix/name`` (breakdowns and counts left out)."""
    return {
        f"{prefix}/{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n"
    }


def hyperparameters(settings: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """A run's settings as the flat scalars trackers take (lists and None as text)."""
    flat = flatten(settings)
    return {key: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for key, v in flat.items()}


class Trackers(Callback):
    """The trackers ``report_to`` names, reporting one run called ``run_name``."""

    def __init__(self, report_to: str, run_name: str, out: Path, settings: dict[str, Any], cpu: bool = True):
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        # accelerate's trackers log through accelerate's logger, which needs the process state the
        # loop's Accelerator would create: create it first, on the device the loop will ask for.
        PartialState(cpu=cpu)
        self.trackers = []
        for name in report_to_names(report_to):
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_name, Path(out) / TRACKERS_DIR) if cls.requires_logging_directory else cls(run_name)
            tracker.start()
            tracker.store_init_configuration(hyperparameters(settings))
            self.trackers.append(tracker)
        self.last_step = 0

    def log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def on_step_end(self, state: Progress, logs: dict[str, float]) -> None:
        self.last_step = state.step
        self.log({f"train/{key}": value for key, value in logs.items()}, state.step)

    def on_evaluate(self, state: Progress, metrics: dict[str, Any], improved: bool) -> None:
        self.log(scalars(metrics, "dev"), state.step)

    def finish(self, final: dict[str, Any] | None = None, step: int | None = None) -> None:
        """Report the final metrics (``{"test": {...}, ...}``) and close every tracker."""
        values = {}
        for split, metrics in (final or {}).items():
            if isinstance(metrics, dict):
                values.update(scalars(metrics, split))
        if values:
            self.log(values, self.last_step if step is None else step)
        for tracker in self.trackers:
            tracker.finish()
