"""The resumable training state (``<out>/checkpoint/state.pt``), written atomically."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.atomic import atomic_write
from softprompt.errors import SoftpromptError

CHECKPOINT = Path("checkpoint") / "state.pt"


@dataclass
class Progress:
    """Counters of the training loop that a resumed run continues from."""

    step: int = 0
    best_metric: float = float("-inf")
    best_step: int = 0
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    out: Path, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress
) -> None:
    state = {
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
    }
    atomic_write(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(out: Path) -> dict[str, Any]:
    path = out / CHECKPOINT
    if not path.is_file():
        raise SoftpromptError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # torch raises various types for a damaged pickle
        raise SoftpromptError(f"checkpoint {path} is unreadable ({exc})") from None
    state["progress"] = Progress(**state["progress"])
    return state
