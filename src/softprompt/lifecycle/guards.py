"""What keeps a retrained prompt from forgetting what its parent learned, from what ``continual``
already has: replay of the parent's own training rows beside the feedback (the default), or EWC,
a pull toward the parent's weights weighted by their diagonal Fisher information on those rows
(Kirkpatrick et al. 2017; :func:`softprompt.continual.learners.diagonal_fisher`).
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.continual.learners import diagonal_fisher
from softprompt.data.records import sample
from softprompt.tasks.base import TaskModel


def replay_items(train: list, feedback_rows: int, per_row: float, seed: int) -> list:
    """A seeded sample of the parent's training items: ``per_row`` for each feedback row
    (rounded; all of them when there are fewer), in their own order."""
    wanted = round(per_row * feedback_rows)
    return sample(train, wanted, seed=seed) if wanted else []


class Anchored:
    """A candidate trained under EWC: its own loss plus ``weight / 2 · Σ F · (θ − θ_parent)²``
    over its trainable parameters. Everything else the training loop asks (rows, state, export,
    the dev metric's name) is the candidate's own, so the loop and the artifact see the candidate.
    """

    def __init__(self, model: TaskModel, fisher: list[torch.Tensor], anchor: list[torch.Tensor], weight: float):
        self.model = model
        self.fisher = fisher
        self.anchor = anchor
        self.weight = weight

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this wrapper lacks: the candidate answers (row_weight included,
        # which the loop looks up with getattr and only some models define).
        return getattr(self.model, name)

    def loss(self, rows: list) -> torch.Tensor:
        """The candidate's loss on ``rows`` plus the Fisher-weighted pull to the parent."""
        params = self.model.trainable_parameters()
        pull = sum((f * (p - a).pow(2)).sum() for f, p, a in zip(self.fisher, params, self.anchor, strict=True))
        return self.model.loss(rows) + self.weight / 2 * pull


def anchored(model: TaskModel, parent_rows: list, weight: float) -> Anchored:
    """``model`` (holding the parent's weights) wrapped for EWC with strength ``weight``: the
    diagonal Fisher of its parameters on ``parent_rows`` (a sample of the parent's training
    rows), and those weights as the anchor."""
    params = model.trainable_parameters()
    fisher = diagonal_fisher(model, parent_rows, params)
    anchor = [p.detach().clone() for p in params]
    return Anchored(model, fisher, anchor, weight)
