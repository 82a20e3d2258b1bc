"""The resumable training state (``<out>/checkpoint/state.safetensors``), written atomically.

Nothing here is unpickled: tensors (the trainable state and the optimizer's moments) are
safetensors, and everything else (optimizer settings, scheduler, loop counters) is JSON in the
same file's header, so a checkpoint someone hands you cannot run code when it is resumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from softprompt.atomic import atomic_write
from softprompt.errors import SoftpromptError, flag

CHECKPOINT = Path("checkpoint") / "state.safetensors"
OLD_CHECKPOINT = Path("checkpoint") / "state.pt"  # pickled, before softprompt 0.1 stopped unpickling
FORMAT = "softprompt-checkpoint/2"
TRAINABLE = "trainable."
OPTIMIZER = "optimizer."


@dataclass
class Progress:
    """Counters of the training loop that a resumed run continues from."""

    step: int = 0
    best_metric: float = float("-inf")
    best_step: int = 0
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as (tensors by flat key, the JSON-able rest)."""
    tensors, plain = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER}{param}.{key}"] = value
            else:
                plain[f"{param}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "values": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*((k[len(OPTIMIZER) :], v) for k, v in tensors.items()), *plain["values"].items()]:
        param, key = flat.split(".", 1)
        state.setdefault(int(param), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no infinities


def save_checkpoint(
    out: Path, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress
) -> None:
    """Write the state a resumed run needs, as one atomically replaced file."""
    optimizer_tensors, optimizer_rest = _split_optimizer(optimizer.state_dict())
    tensors = {f"{TRAINABLE}{k}": v for k, v in trainable.items()} | optimizer_tensors
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {
        "optimizer": optimizer_rest,
        "scheduler": scheduler.state_dict(),
        "progress": {**asdict(progress), "best_metric": _finite(progress.best_metric)},
    }
    metadata = {"format": FORMAT, "state": json.dumps(header)}
    atomic_write(out / CHECKPOINT, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def require_checkpoint(out: Path) -> None:
    """Raise the error that says why ``out`` has nothing to resume (none, or an old pickled one)."""
    if (out / CHECKPOINT).is_file():
        return
    if (out / OLD_CHECKPOINT).is_file():
        raise SoftpromptError(
            f"{out / OLD_CHECKPOINT} is a pickled checkpoint of an older softprompt; it is not loaded because "
            f"a pickle can run code. Start the run again without {flag('resume')} (or with {flag('overwrite')})"
        )
    raise SoftpromptError(f"nothing to resume: {out / CHECKPOINT} does not exist (start without {flag('resume')})")


def load_checkpoint(out: Path) -> dict[str, Any]:
    """The saved state: ``trainable`` (tensors), ``optimizer`` and ``scheduler`` state dicts,
    ``progress`` (:class:`Progress`).

    Raises:
        SoftpromptError: no checkpoint, an old pickled one (refused, never loaded), or a damaged one.
    """
    require_checkpoint(out)
    path = out / CHECKPOINT
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {FORMAT}")
        header = json.loads(metadata["state"])
    except Exception as exc:  # safetensors and json raise various types for a damaged file
        raise SoftpromptError(
            f"checkpoint {path} is unreadable ({exc}); start again without {flag('resume')}"
        ) from None
    progress = header["progress"]
    progress["best_metric"] = float(progress["best_metric"])
    return {
        "trainable": {k[len(TRAINABLE) :]: v for k, v in tensors.items() if k.startswith(TRAINABLE)},
        "optimizer": _join_optimizer(
            {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER)}, header["optimizer"]
        ),
        "scheduler": header["scheduler"],
        "progress": Progress(**progress),
    }
