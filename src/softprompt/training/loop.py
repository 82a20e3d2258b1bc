"""The one training loop: AdamW, warm-up + linear decay, clipping, optional L2,
gradient accumulation, dev evaluation every N steps, early stopping, best weights, resumable
checkpoint. It runs on ``accelerate.Accelerator``: under ``accelerate launch`` the model's loss is
wrapped in DDP, which averages the trainable parameters' gradients across processes.

The frozen backbone stays in eval mode, so a forward pass has no randomness and the data order is
a pure function of (seed, step): a resumed run repeats an uninterrupted one exactly. The loop knows
nothing of tasks or artifacts: the model is a :class:`~softprompt.training.trainable.Trainable`,
and writing the best weights is the caller's ``save_best``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn

from softprompt.atomic import atomic_write_text
from softprompt.config import TrainConfig
from softprompt.errors import SoftpromptError, TrainingDiverged, flag
from softprompt.training.batches import batch_indices
from softprompt.training.callbacks import Callback, EarlyStopping, ProgressBar, call_hooks
from softprompt.training.checkpoint import Progress, load_checkpoint, save_checkpoint
from softprompt.training.processes import processes
from softprompt.training.resources import peak_memory_mb
from softprompt.training.schedule import learning_rate_schedule
from softprompt.training.sharding import accelerate_fsdp_hidden, refuse_sharded_launch
from softprompt.training.trainable import Trainable

LOG_FILE = "log.jsonl"

SaveBest = Callable[[int, dict[str, Any]], None]  # (step, dev metrics): write the best weights


def resolve_steps(settings: TrainConfig, rows: int) -> TrainConfig:
    """``settings`` with ``max_steps`` worked out from ``epochs`` when that is set."""
    if not settings.epochs:
        return settings
    per_step = settings.batch_size * settings.grad_accum
    return dataclasses.replace(settings, max_steps=max(1, math.ceil(settings.epochs * rows / per_step)))


def fit(
    model: Trainable,
    rows: list,
    settings: TrainConfig,
    seed: int,
    out: Path,
    save_best: SaveBest,
    dev_metric: Callable[[], dict[str, Any]],
    resume: bool = False,
    progress: bool = True,
    sharded: bool = False,
    callbacks: list[Callback] | None = None,
) -> Progress:
    """Train ``model`` on ``rows`` and return the loop's final counters.

    Args:
        model: what to train (see :class:`Trainable`).
        rows: the training rows; batches are drawn from them by a seeded order.
        settings: optimizer, schedule, evaluation and stopping settings.
        seed: orders the data.
        out: the run directory: ``log.jsonl`` and ``checkpoint/`` are written there.
        save_best: called (main process only) with the step and dev metrics of each new best.
        dev_metric: the dev metrics of the model as it stands; ``model.metric`` selects the best.
        resume: continue from the checkpoint in ``out``.
        progress: show a progress bar.
        sharded: the caller has sharded the frozen backbone as the FSDP launch config asks
            (:mod:`softprompt.training.sharding`); an FSDP launch is refused otherwise.
        callbacks: hooks called after the loop's own (progress bar, early stopping); see
            :mod:`softprompt.training.callbacks`.
    """
    if not sharded:
        refuse_sharded_launch("this command")
    settings = resolve_steps(settings, len(rows))
    if settings.gradient_checkpointing:
        enable = getattr(model, "enable_gradient_checkpointing", None)
        if enable is None:
            raise SoftpromptError(f"train.gradient_checkpointing: {type(model).__name__} does not support it")
        enable()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = learning_rate_schedule(optimizer, settings)
    state = _restore(out, model, optimizer, scheduler) if resume else Progress()
    own = [ProgressBar(progress and processes().main), EarlyStopping(settings.patience)]
    run = _Run(
        model,
        optimizer,
        scheduler,
        settings,
        seed,
        out,
        save_best,
        dev_metric,
        *_accelerated(model, settings.l2),
        own + list(callbacks or []),
    )
    return run.steps(rows, state)


def _restore(out: Path, model: Trainable, optimizer: torch.optim.Optimizer, scheduler: Any) -> Progress:
    """Load the checkpoint in ``out`` into the model, optimizer and schedule; its counters."""
    saved = load_checkpoint(out)
    model.load_training_state(saved["trainable"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return saved["progress"]


class Objective(nn.Module):
    """A trainable model's loss as a module over its trainable parameters only, for accelerate to
    wrap: DDP then syncs exactly those gradients and never broadcasts the frozen backbone."""

    def __init__(self, model: Trainable, l2: float = 0.0):
        super().__init__()
        self.trained = nn.ParameterList(model.trainable_parameters())
        self.model = [model]  # in a list: not a submodule (its backbone is not DDP's business)
        self.l2 = l2

    def forward(self, rows: list) -> torch.Tensor:
        # The L2 term belongs inside: DDP must see every gradient of a step come from its forward.
        loss = self.model[0].loss(rows)
        return loss + self.l2 * self.model[0].l2_penalty() if self.l2 else loss


def _accelerated(model: Trainable, l2: float) -> tuple[Accelerator, nn.Module]:
    """The accelerator and the objective it prepared (DDP under several processes, else as is).
    Placement and precision are the backbone's (softprompt.backbones.placement), so accelerate moves
    nothing and adds no autocast; a step may leave some parameters unused (the prompts of tasks
    absent from a multitask batch), which DDP must be told."""
    on_cpu = all(p.device.type == "cpu" for p in model.trainable_parameters())
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    # mixed_precision="no": an `accelerate launch --mixed_precision` or config must not add a
    # second autocast (and an unused loss scaler) around ours.
    try:
        with accelerate_fsdp_hidden():  # the frozen blocks are sharded already; the trained ones are DDP's
            accelerator = Accelerator(
                cpu=on_cpu, device_placement=False, mixed_precision="no", kwargs_handlers=[unused]
            )
    except ValueError as exc:  # accelerate's state is one per process: it cannot change device mid-process
        raise SoftpromptError(
            f"accelerate refused this run ({str(exc).splitlines()[0]}); train on each device in its own process"
        ) from None
    return accelerator, accelerator.prepare_model(Objective(model, l2))


@dataclasses.dataclass
class _Run:
    """One call of :func:`fit`: the optimizer steps from ``state.step`` to the end (or early stop)."""

    model: Trainable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    settings: TrainConfig
    seed: int
    out: Path
    save_best: SaveBest
    dev_metric: Callable[[], dict[str, Any]]
    accelerator: Accelerator
    objective: nn.Module
    callbacks: list[Callback]

    def steps(self, rows: list, state: Progress) -> Progress:
        cfg, model, procs = self.settings, self.model, processes()
        if cfg.batch_size % procs.count:
            raise SoftpromptError(
                f"train.batch_size={cfg.batch_size} must be divisible by the {procs.count} training processes"
            )
        params = model.trainable_parameters()
        lengths = [model.row_length(row) for row in rows] if cfg.group_by_length else None
        classes = [model.row_class(row) for row in rows] if cfg.group_by_length else None
        if classes is not None and None in classes:
            classes = None
        if procs.main:
            _rewrite_log(self.out, state.history)
        call_hooks(self.callbacks, "on_train_begin", state, cfg.max_steps)
        while state.step < cfg.max_steps and not state.stopped_early:
            tick = time.perf_counter()
            index = batch_indices(state.step, cfg.batch_size * cfg.grad_accum, len(rows), self.seed, lengths, classes)
            batch_loss = procs.mean(self.accumulate(rows, index))  # the same in every process
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(_diverged(batch_loss, state, self.out))
            grad_norm = self.clip(params)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            seconds = round(time.perf_counter() - tick, 4)
            lr = self.scheduler.get_last_lr()[0]
            _log(self.out, state, {"step": state.step, "loss": round(batch_loss, 6), "lr": lr, "seconds": seconds})
            tokens = sum(model.row_length(rows[i]) for i in index)
            logs = {"loss": batch_loss, "lr": lr, "grad_norm": grad_norm, "seconds": seconds}
            logs |= {"tokens_per_second": tokens / max(seconds, 1e-9), "peak_memory_mb": peak_memory_mb(params)}
            if call_hooks(self.callbacks, "on_step_end", state, logs):
                state.stopped_early = True
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                self.evaluate(state)
        call_hooks(self.callbacks, "on_train_end", state)
        return state

    def clip(self, params: list[nn.Parameter]) -> float:
        """Clip the gradients' norm to ``train.grad_clip`` (if set); their norm before clipping."""
        if self.settings.grad_clip:
            return float(self.accelerator.clip_grad_norm_(params, self.settings.grad_clip))
        grads = [p.grad for p in params if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def accumulate(self, rows: list, step: list[int]) -> float:
        """Backpropagate this process's rows of the ``step`` (the rows of every process) in
        ``grad_accum`` forward passes; after DDP averages over the processes, the gradients are
        those of the mean loss over the whole step. Returns this process's part of that mean,
        times the process count (so that the mean over the processes is the step's loss)."""
        procs, count = processes(), self.settings.grad_accum
        mine = procs.shard(step)
        parts = [part for part in (mine[k::count] for k in range(count)) if part]
        weigh = getattr(self.model, "row_weight", None)  # a loss averaged over tokens, not rows

        def weight(index: list[int]) -> int:
            return sum(weigh(rows[i]) for i in index) if weigh else len(index)

        whole, total = max(1, weight(step)), 0.0
        for k, part in enumerate(parts):
            # Processes sync gradients once per step: on the last part, not on every one.
            sync = contextlib.nullcontext() if k == len(parts) - 1 else self.accelerator.no_sync(self.objective)
            with sync:
                loss = self.objective([rows[i] for i in part])
                # A part's mean weighs by its share of the step; DDP divides by the process count.
                share = weight(part) / whole * procs.count
                self.accelerator.backward(loss * share)
            total += loss.item() * share
        return total

    def evaluate(self, state: Progress) -> None:
        """Score dev, keep the best weights, update early stopping, write the checkpoint."""
        main = processes().main
        dev = self.dev_metric()  # every process computes it (same weights): they decide alike
        value = dev[self.model.metric]
        _log(self.out, state, {"step": state.step, "dev": value})
        improved = value > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            if main:
                self.save_best(state.step, dev)
        else:
            state.evals_without_improvement += 1
        if call_hooks(self.callbacks, "on_evaluate", state, dev, improved):
            state.stopped_early = True  # early stopping is one of the callbacks
        if main:
            save_checkpoint(self.out, self.model.training_state(), self.optimizer, self.scheduler, state)


def _diverged(loss: float, state: Progress, out: Path) -> str:
    """What a non-finite loss leaves behind, said truthfully: a checkpoint exists only after an evaluation."""
    evals = [h["step"] for h in state.history if "dev" in h]
    if not evals:
        return (
            f"loss became {loss} at step {state.step + 1}, before the first checkpoint (nothing to resume); "
            "lower train.lr and start again"
        )
    return (
        f"loss became {loss} at step {state.step + 1}; the last good checkpoint (step {evals[-1]}) is kept in "
        f"{out} (resuming would repeat the same steps); lower train.lr and start again with {flag('overwrite')} "
        "or another out="
    )


def _log(out: Path, state: Progress, entry: dict[str, Any]) -> None:
    state.history.append(entry)
    if not processes().main:
        return
    with (out / LOG_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def _rewrite_log(out: Path, history: list[dict[str, Any]]) -> None:
    """On (re)start the log holds exactly the checkpoint's history: steps after it are redone."""
    atomic_write_text(out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))
