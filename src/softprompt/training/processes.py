"""Which process this is when training runs on several (``accelerate launch``, torchrun).

One process (the default) changes nothing. Under ``accelerate launch --num_processes N`` every
process takes its share of each batch (:meth:`Processes.shard`); the training loop runs on
``accelerate.Accelerator``, whose DDP wrapper averages the gradients across processes (gloo on
CPU, NCCL on GPUs) during the backward pass, so each process holds the same weights after every
step. With equal shards the averaged gradient is that of the whole batch's mean loss: the run
matches a single-process run with the same global batch. Only the main process writes files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    count: int = 1
    index: int = 0
    state: Any = None  # accelerate's PartialState when count > 1

    @property
    def main(self) -> bool:
        return self.index == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This process's rows of a batch (every ``count``-th, starting at its index)."""
        return batch if self.count == 1 else batch[self.index :: self.count]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes (for logging the whole batch's loss)."""
        if self.count == 1:
            return value
        from accelerate.utils import reduce

        return float(reduce(torch.tensor([value], device=self.state.device), reduction="mean"))

    def wait(self) -> None:
        """Return when every process has reached this point (e.g. the main one has written a file)."""
        if self.count > 1:
            self.state.wait_for_everyone()


@functools.lru_cache(maxsize=1)
def processes() -> Processes:
    """The processes of this run: one, unless launched by accelerate / torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    # On a machine without CUDA, accelerate would fall back to one process: ask for CPU (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.num_processes, state.process_index, state)
