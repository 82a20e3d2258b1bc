"""The rows a prompt is run as, and how their next-token logits combine into one distribution.

The sampler runs every row of every prompt in one batched forward pass per step; a steering
(plain, self-debiasing, experts...) only says which rows and how to combine them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Variant:
    """One row a prompt is run as: ``[soft prompt][text_prefix + prompt]``."""

    soft: torch.Tensor | None = None  # [n, hidden] embeddings put before the text
    text_prefix: str = ""


@dataclass
class Steering:
    """A method's rows and its combination rule (the plain model: one bare row, no change)."""

    name: str = "none"
    variants: list[Variant] = field(default_factory=lambda: [Variant()])

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """``[P, R, V]`` logits of each prompt's R rows -> ``[P, V]`` next-token logits."""
        return logits[:, 0]

    def plain_row(self) -> int | None:
        """The row that is the plain model (no soft prompt, no prefix), if any: its logits give
        the base model's likelihood of the sampled text for free."""
        plain = [i for i, v in enumerate(self.variants) if v.soft is None and not v.text_prefix]
        return plain[0] if plain else None
