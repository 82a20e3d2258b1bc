"""Where a command computes (threads, device, precision, quantization), as settings and flags.

Torch-free on purpose: the command line and every config are read and checked before torch is
imported, so that ``--help`` and a mistyped setting answer at once. What the settings mean for
torch is applied in :mod:`softprompt.backbones.placement`.
"""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.config.fields import option
from softprompt.errors import SoftpromptError

DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (auto: CUDA when available, else CPU)"
PRECISION_HELP = "auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that supports it, fp32 otherwise)"
THREADS_HELP = "torch CPU threads (0 = torch's default, one per core; use fewer on a busy machine)"
MAX_THREADS = 1024


def check_threads(count: int, label: str) -> None:
    """Refuse a thread count torch cannot take; ``label`` names the setting in the error."""
    if count < 0:
        raise SoftpromptError(f"{label} must be >= 0, got {count}")
    if count > MAX_THREADS:  # torch's C int overflows at 2**31, and far fewer already swamp a machine
        raise SoftpromptError(f"{label} must be at most {MAX_THREADS}, got {count}")


@dataclass(kw_only=True)
class ComputeSettings:
    """Where a command that loads a backbone computes: shared by every run config (applied by
    :func:`softprompt.backbones.placement.apply_threads` and ``load_backbone``)."""

    threads: int = option("torch CPU threads (0 = torch's default)", 0)
    device: str = option(DEVICE_HELP, "auto")
    precision: str = option(PRECISION_HELP, "auto")
    quantize: str = option(
        "none | 4bit | 8bit: hold the frozen backbone quantized (bitsandbytes, CUDA only; "
        "pip install 'softprompt[quantization]')",
        "none",
    )
