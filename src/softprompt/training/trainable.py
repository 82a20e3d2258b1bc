"""The contract between the training loop and whatever it trains.

A classifier, a tagger, a bundle of task prompts trained in mixed batches, a continual-learning
stage, a detox language-model prompt: the loop sees each only through :class:`Trainable`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Trainable(Protocol):
    """What :func:`softprompt.training.fit` asks of a model.

    Rows are whatever the model's own ``training_rows`` made (encoded examples with their
    labels); the loop only picks them by index, measures them and hands batches back.

    A model whose loss is a mean over tokens rather than rows may also define
    ``row_weight(row) -> int`` (the tokens a row's loss averages over): the loop then weighs the
    parts of a step split by ``train.grad_accum`` or across processes by it, so the update is
    that of the whole step's mean.
    """

    metric: str  # the key of the dev metrics that selects the best weights (higher is better)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything the optimizer updates."""
        ...

    def loss(self, rows: list[Any]) -> torch.Tensor:
        """The scalar training loss of a batch of rows."""
        ...

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squares of the trained parameters (the optional ``train.l2`` term)."""
        ...

    def row_length(self, row: Any) -> int:
        """Tokens of a row (for length-grouped batches)."""
        ...

    def row_class(self, row: Any) -> int | None:
        """A row's single gold class, kept mixed in length-grouped batches; None if it has none."""
        ...

    def training_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores to resume training."""
        ...

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`training_state`."""
        ...

    def export_state(self) -> dict[str, torch.Tensor]:
        """What an artifact stores."""
        ...

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`export_state` (used to load the best weights after training)."""
        ...
