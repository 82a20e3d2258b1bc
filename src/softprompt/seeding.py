"""Seeded initialisation without touching the caller's random state.

Some initialisers are not ours (``nn.Linear``, peft's LoRA) and draw from torch's global
generator. :func:`seeded` runs them from a fixed seed inside a forked random state, so the same
seed gives the same weights and the process's own generator is left exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to ``seed``; restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        if torch.cuda.is_initialized() or torch.backends.mps.is_available():
            torch.manual_seed(seed)  # as before wherever an accelerator is in use
        else:
            # The CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding,
            # which records a stack trace each time (1.4 ms; a server seeds for every artifact).
            torch.default_generator.manual_seed(seed)
        yield


@contextlib.contextmanager
def seeded_on(device: torch.device, seed: int) -> Iterator[None]:
    """Run the block with torch's generators of the CPU and of ``device`` seeded to ``seed``
    (code that draws from the global generators, such as ``generate``'s sampling); restore them
    afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
