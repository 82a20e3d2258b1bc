"""What a run costs: peak memory and step times, for the trackers and the artifact's record."""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

import torch
from torch import nn


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # Linux: KiB, macOS: bytes


def peak_memory_mb(params: list[nn.Parameter]) -> float:
    """Peak memory so far: of the GPU the parameters live on, else this process's resident memory."""
    device = params[0].device if params else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def resources(history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Peak memory of this process and the median seconds per optimizer step."""
    step_seconds = [h["seconds"] for h in history if "seconds" in h]
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "median_step_seconds": round(statistics.median(step_seconds), 4) if step_seconds else None,
    }
