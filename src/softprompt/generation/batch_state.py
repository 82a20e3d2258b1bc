"""The running decoding batch's state: its requests (:class:`Member`) and its tensors
(:class:`Rows`: next-token logits, the key/value cache, padding mask and positions)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from softprompt.generation.sampling import SampleRequest

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, width, dim]


@dataclass(eq=False)  # compared by identity: a request holds tensors
class Member:
    """A request in the batch. ``slots`` are its rows in the batch, variant-major:
    ``slots[r * samples + j]`` is variant ``r`` of sample ``j`` (one variant without a steering)."""

    key: Hashable
    request: SampleRequest
    generator: torch.Generator
    tokens: list[list[int]]  # per sample, the ids decoded so far (no end-of-sequence token)
    done: list[bool]  # per sample
    steps: int = 0  # tokens drawn so far, the same for all its samples
    width: int = 1  # rows per sample
    nll: list[float] | None = None  # per sample, under the steering's plain row (when it has one)
    slots: list[int] = field(default_factory=list)  # its rows in the batch (a leaving row's place goes to another)

    @property
    def finished(self) -> bool:
        return all(self.done) or self.steps >= self.request.max_new_tokens

    @property
    def rows(self) -> int:
        return self.request.samples * self.width


@dataclass
class Rows:
    """Pre-filled rows joining the batch, one per sample, left-padded to a common width."""

    logits: torch.Tensor  # [R, V] next-token logits
    layers: Layers  # the key/value cache
    mask: torch.Tensor  # [R, width] attention mask
    last: torch.Tensor  # [R, 1] position of each row's last token
