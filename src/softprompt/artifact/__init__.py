"""The artifact directory: what a trained (or zero-shot) prompt is on disk.

::

    adapter_config.json         peft's PROMPT_TUNING config when the soft tokens form a prefix
    adapter_model.safetensors   the trainable state (``prompt_embeddings`` ...)
    task.json                   template, verbalizer, labels, backbone id + fingerprint, metrics,
                                versions, and the SHA-256 of the weights file
    README.md                   the model card, made from task.json (see :mod:`.card`)

Files are written atomically and ``task.json`` last, with the weights' hash in it, so a reader
either sees a complete artifact or reports which part is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.artifact.card import CARD_FILE, write_model_card
from softprompt.atomic import atomic_write, atomic_write_json
from softprompt.errors import SoftpromptError
from softprompt.hub import looks_like_hub_id, looks_local, snapshot
from softprompt.version import __version__

if TYPE_CHECKING:
    import torch

TASK_FILE = "task.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"  # peft's adapter config (PeftModel.from_pretrained reads it)
RUN_CONFIG_FILE = "config.json"  # the run's own settings, beside its checkpoint (read by --resume)
FORMAT = "softprompt-artifact/1"


@dataclass
class ArtifactFiles:
    """The validated contents of an artifact directory."""

    path: Path
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "softprompt": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_artifact(
    directory: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], adapter_config: dict[str, Any] | None
) -> None:
    """Write the three files; ``task.json`` (with the weights' hash) goes last."""
    import safetensors.torch

    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(weights, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"}))
    config = adapter_config or no_peft_layout(meta.get("method", "?"))
    atomic_write_json(directory / PEFT_CONFIG_FILE, config)
    record = {"format": FORMAT, **meta, "weights_sha256": _sha256(weights), "versions": versions()}
    atomic_write_json(directory / TASK_FILE, record)
    write_model_card(directory, record, _is_peft_layout(config))


def no_peft_layout(method: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of an artifact peft cannot open: it says so, and why, in
    fields peft has no use for (peft itself stops at the unknown ``peft_type``)."""
    return {
        "peft_type": "SOFTPROMPT",
        "softprompt_method": method,
        "peft_loadable": False,
        "note": f"method {method} (with this template and backbone) has no peft layout; load it with "
        "softprompt.load(DIR); docs/methods.md lists the artifacts peft opens",
    }


def update_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` into task.json's metrics (atomically)."""
    _rewrite_record(directory, lambda meta: meta.setdefault("metrics", {}).update(metrics))


def update_record(directory: Path, fields: dict[str, Any]) -> None:
    """Set top-level ``fields`` of task.json (atomically)."""
    _rewrite_record(directory, lambda meta: meta.update(fields))


def _rewrite_record(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Read task.json once, ``change`` it in place, write it back atomically, rewrite the card."""
    path = Path(directory) / TASK_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    atomic_write_json(path, meta)
    write_model_card(Path(directory), meta, peft_loadable(Path(directory)))


def peft_loadable(directory: Path) -> bool:
    """Whether the artifact's ``adapter_config.json`` is a layout peft loads."""
    try:
        config = json.loads((Path(directory) / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _is_peft_layout(config)


def _is_peft_layout(config: Any) -> bool:
    return isinstance(config, dict) and config.get("peft_type") not in (None, "SOFTPROMPT")


def artifact_source(name: str | Path) -> Path | str:
    """Where an artifact name points, without fetching anything: its local directory, or the Hub
    model id it reads as (``user/repo``; nothing local by that name, nor its parent folder).

    Raises:
        SoftpromptError: a local path (``./x``, ``runs/x`` beside a ``runs`` folder...) that does
            not exist, or a name that is neither a directory nor a Hub id.
    """
    directory = Path(name)
    if directory.is_dir():
        return directory
    if looks_local(str(name)) or not looks_like_hub_id(str(name)):
        raise SoftpromptError(f"artifact {name}: no such folder (give the 'out' directory of a train run)")
    return str(name)


def locate_artifact(name: str | Path) -> Path:
    """The directory of an artifact: a local directory, or the cached snapshot of a Hub model id
    (``user/repo``; downloaded when online). Only the artifact's own files are fetched.

    Raises:
        SoftpromptError: neither a local directory nor a Hub repository holding an artifact.
    """
    source = artifact_source(name)
    if isinstance(source, Path):
        return source
    repo_id = source
    directory = snapshot(repo_id, [TASK_FILE, WEIGHTS_FILE, PEFT_CONFIG_FILE, CARD_FILE], "artifact")
    if not (directory / TASK_FILE).is_file():
        raise SoftpromptError(f"artifact {repo_id}: the Hub repository holds no softprompt artifact (no {TASK_FILE})")
    if not (directory / WEIGHTS_FILE).is_file():
        raise SoftpromptError(
            f"artifact {repo_id}: the Hub repository has no {WEIGHTS_FILE}; softprompt loads only safetensors "
            "weights (pickled .bin files are never loaded)"
        )
    return directory


def read_artifact(directory: str | Path) -> ArtifactFiles:
    """Read and validate an artifact: a local directory, or a Hub model id (see :func:`locate_artifact`).

    Raises:
        SoftpromptError: the directory or one of its files is missing, unreadable or corrupt.
    """
    import safetensors.torch  # here, not at the top: finding an artifact needs no torch

    directory = locate_artifact(directory)
    missing = [name for name in (TASK_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise SoftpromptError(f"artifact {directory} is incomplete: missing {', '.join(missing)}")
    try:
        meta = json.loads((directory / TASK_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SoftpromptError(f"artifact {directory / TASK_FILE} is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SoftpromptError(f"{directory / TASK_FILE} is not a softprompt artifact (format {FORMAT})")
    if meta.get("weights_sha256") != _sha256(directory / WEIGHTS_FILE):
        raise SoftpromptError(
            f"artifact {directory / WEIGHTS_FILE} does not match task.json (corrupt or modified); retrain or restore it"
        )
    try:
        state = safetensors.torch.load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise SoftpromptError(f"artifact {directory / WEIGHTS_FILE} is unreadable ({exc})") from None
    return ArtifactFiles(directory, meta, state)


def size_bytes(directory: Path) -> int:
    """Total size of the artifact's files."""
    return sum(
        (Path(directory) / name).stat().st_size
        for name in (TASK_FILE, WEIGHTS_FILE, PEFT_CONFIG_FILE)
        if (Path(directory) / name).exists()
    )
