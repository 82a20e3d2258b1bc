"""The learning-rate schedule of the training loop (``train.lr_scheduler``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from softprompt.config import TrainConfig


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def learning_rate_schedule(optimizer: torch.optim.Optimizer, settings: TrainConfig) -> Any:
    """``train.lr_scheduler`` over ``train.max_steps`` with ``train.warmup_ratio`` of warm-up:
    ``linear`` is :func:`lr_lambda` (transformers' linear schedule but for its first warm-up step,
    which there has a learning rate of 0); the others are transformers' ``get_scheduler``."""
    warmup = max(1, int(settings.warmup_ratio * settings.max_steps))
    if settings.lr_scheduler == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, settings.max_steps))
    from transformers import get_scheduler

    total = settings.max_steps
    return get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
