"""Where a backbone runs and in which precision: decided here and nowhere else.

The frozen backbone is held in the compute dtype; trainable parameters, optimizer state and the
loss stay in float32. Forward passes run under ``torch.autocast`` in the compute dtype (mixed
precision as torchtune, litgpt and accelerate do it), so a float32 soft prompt or LoRA matrix
meets a bfloat16 backbone without any caller casting by hand.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.config.compute import check_threads
from softprompt.errors import SoftpromptError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)


@dataclass(frozen=True)
class Placement:
    """A device and the dtype the frozen backbone computes in."""

    device: torch.device
    dtype: torch.dtype

    @property
    def precision(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.dtype)

    @property
    def mixed(self) -> bool:
        """True when forward passes run in a lower precision than the float32 trainable parameters."""
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward pass runs in (a no-op in float32)."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def attention(self) -> str:
        """The attention implementation to load the backbone with. On a CPU in bf16/fp16 the eager
        kernels are faster than SDPA's CPU flash kernel, whose backward dominates a prompt-tuning
        step there (benchmarks/RESULTS.md, "bf16 on a CPU")."""
        return "eager" if self.device.type == "cpu" and self.mixed else "sdpa"


def resolve_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Check ``device`` and ``precision`` against this machine and resolve ``auto``.

    Raises:
        SoftpromptError: a device that is not here, or a precision the device cannot run.
    """
    where = _device(device)
    if precision not in PRECISIONS:
        raise SoftpromptError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if where.type == "cuda" and _native_bf16(where) else "fp32"
    if where.type == "cpu" and precision == "fp16":
        raise SoftpromptError("precision=fp16 needs a GPU; on a CPU use precision=bf16 or fp32")
    if where.type == "cuda" and precision == "bf16" and not _native_bf16(where):
        raise SoftpromptError(f"{torch.cuda.get_device_name(where)} has no bf16 support; use precision=fp16 or fp32")
    if where.type == "cpu" and precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("this CPU has no native bf16 instructions: precision=bf16 will be slow; fp32 is faster here")
    return Placement(where, DTYPES[precision])


def _native_bf16(where: torch.device) -> bool:
    """Whether the GPU computes bf16 itself (Ampere and later), not by emulation."""
    with torch.cuda.device(where):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _device(name: str) -> torch.device:
    where = _named_device(name)
    if where.type == "cuda" and where.index is None:
        # One GPU per process: under `accelerate launch` / torchrun, this process's own.
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return where


def _named_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if not isinstance(name, str):  # torch reads an int as a CUDA index, and fails on others
            raise ValueError(name)
        where = torch.device(name)
    except (RuntimeError, ValueError):  # ValueError: an index past a C long ("cuda:99999999999999999999")
        raise SoftpromptError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N, mps") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise SoftpromptError(f"device={name}: this machine has no CUDA GPU (or torch was built without CUDA)")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise SoftpromptError(f"device={name}: there are {torch.cuda.device_count()} CUDA devices")
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise SoftpromptError(f"device={name}: MPS (Apple GPU) is not available here")
    elif where.type not in ("cpu", "cuda", "mps"):
        raise SoftpromptError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N, mps")
    return where


def set_threads(count: int, label: str) -> None:
    """Use ``count`` torch CPU threads in this process (0: torch's default); ``label`` names the
    setting in the error for a count torch cannot take."""
    check_threads(count, label)
    if count:
        torch.set_num_threads(count)


def busy_machine_warning(threads: int, load: float | None = None) -> str | None:
    """A warning for torch's default threads (``threads=0``: one per core) on a machine that
    other jobs keep busy (``load``: the 1-minute load average; read from the system when None).
    Two processes each using every core slow each other far more than sharing the cores, while
    alone more threads are faster (benchmarks/RESULTS.md, "Threads on a shared machine"). A warning rather than a
    fewer-threads default, so that a run's numbers never depend on the machine's load."""
    if threads or torch.get_num_threads() < 2:
        return None
    if load is None:
        if not hasattr(os, "getloadavg"):
            return None
        load = os.getloadavg()[0]
    if load < 1:
        return None
    return (
        f"warning: the machine is busy (load {load:.1f} on {os.cpu_count()} cores) and torch will use "
        f"{torch.get_num_threads()} threads; beside another job that can be 2-3x slower than threads=1: "
        "set threads=1 (or threads=N for N idle cores)"
    )


@functools.lru_cache(maxsize=1)
def warn_if_busy() -> None:
    """:func:`busy_machine_warning` for torch's default threads, logged once per process."""
    message = busy_machine_warning(0)
    if message:
        logger.warning(message)


def apply_threads(threads: int) -> None:
    """A config's ``threads`` applied to this process (before any forward pass); with torch's
    default on a busy machine, say once that fewer threads would be faster."""
    set_threads(threads, "config field 'threads':")
    if not threads:
        warn_if_busy()


# The attribute set on a model while its weights are held in float32 (hold_in_float32): its
# forward wrappers then skip their autocast. On the model, so other models keep theirs.
HELD_IN_FLOAT32 = "_softprompt_held_in_float32"


def run_in(placement: Placement, forward: Callable[..., Any], model: torch.nn.Module) -> Callable[..., Any]:
    """``forward`` (``model``'s or one of its parts') wrapped to run under ``placement``'s
    autocast (the way accelerate's ``prepare`` wraps a model's forward), so every caller of the
    backbone computes alike; without it while ``model`` is held in float32."""

    @functools.wraps(forward)
    def forward_in_placement(*args: Any, **kwargs: Any) -> Any:
        held = getattr(model, HELD_IN_FLOAT32, False)
        with contextlib.nullcontext() if held else placement.autocast():
            return forward(*args, **kwargs)

    return forward_in_placement


def hold_in_float32(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """Cast ``model``'s ``dtype`` weights and buffers to float32 in place (each tensor keeps its
    identity, so an optimizer's references stay valid; float32 ones are not touched) and turn its
    autocast off; the tensors cast, for :func:`release_float32`. All or nothing: a failure part
    way (out of memory) casts back what it had cast."""
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.dtype == dtype]
    done: list[torch.Tensor] = []
    # Outside inference mode: tensors cast inside it would come back as inference tensors, which
    # a later training step through this backbone could not use.
    with torch.inference_mode(False), torch.no_grad():
        try:
            for tensor in tensors:
                tensor.data = tensor.data.float()
                done.append(tensor)
        except BaseException:
            for tensor in done:
                tensor.data = tensor.data.to(dtype)
            raise
    setattr(model, HELD_IN_FLOAT32, True)
    return tensors


def release_float32(model: torch.nn.Module, tensors: list[torch.Tensor], dtype: torch.dtype) -> None:
    """Undo :func:`hold_in_float32`, exactly (float32 holds every bf16 and fp16 value)."""
    setattr(model, HELD_IN_FLOAT32, False)
    with torch.inference_mode(False), torch.no_grad():
        for tensor in tensors:
            tensor.data = tensor.data.to(dtype)
