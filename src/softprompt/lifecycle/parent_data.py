"""The parent's own data as ``retrain`` reads it (no torch): its training rows for the guard
against forgetting (replay, or EWC's Fisher) and its dev split for the gate must be where its
record says, with the SHA-256 its run kept in ``config.json`` (when it kept them), or named
anew with ``data.train=PATH`` / ``data.dev=PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path

from softprompt.artifact import RUN_CONFIG_FILE
from softprompt.config import RunConfig
from softprompt.data.hashes import DATA_HASHES, data_hashes
from softprompt.data.tables import is_table
from softprompt.errors import SoftpromptError
from softprompt.hub import DATASET_PREFIX


def check_data(config: RunConfig, artifact: Path, guard: str, reads_training_data: bool) -> None:
    """The parent's data is where its record says and unchanged (by the SHA-256 its
    ``config.json`` kept): the guard (``guard``; ``reads_training_data``: it reads the parent's
    training rows) and the gate's dev split read it."""
    data = config.data
    if not data.train and not config.dataset:
        raise SoftpromptError(
            f"artifact {artifact} was trained on in-memory data; give data.train=PATH (and data.dev=PATH) "
            "so that the guard and the gate can read it"
        )
    needed = {}
    if data.train:
        if reads_training_data or not data.dev:  # a dev split held out of train needs train
            needed["data.train"] = data.train
        if data.dev:
            needed["data.dev"] = data.dev
    elif data.path:  # a built-in dataset that reads the user's own file
        needed["data.path"] = data.path
    for key, name in needed.items():
        if not _present(str(name)):
            raise SoftpromptError(_moved(key, name, "is not there (moved?)", guard, reads_training_data))
    recorded = _recorded_hashes(artifact)
    now = data_hashes({"data": {key.removeprefix("data."): name for key, name in needed.items()}})
    for key, digest in now.items():
        if key in recorded and recorded[key] != digest:
            raise SoftpromptError(
                _moved(key, needed[key], "differs from the file the parent trained on", guard, reads_training_data)
            )


def _present(name: str) -> bool:
    """Whether data named ``name`` is there: a Hub dataset (``hf:``, fetched when read), a table
    or a file; False for a name the system cannot even look up (too long, a NUL byte)."""
    try:
        return name.startswith(DATASET_PREFIX) or is_table(name) or Path(name).exists()
    except (OSError, ValueError):
        return False


def _moved(key: str, name: str, problem: str, guard: str, reads_training_data: bool) -> str:
    """What the guard or the gate needs of data that moved or changed, and the way out."""
    if key == "data.dev" or not reads_training_data:
        return f"{key} {name} {problem}: the gate scores the parent's own dev split; give {key}=PATH of that file"
    alone = "retrain.replay=0" if guard == "replay" else "retrain.guard=replay retrain.replay=0"
    return (
        f"{key} {name} {problem}: {guard} reads the parent's own training data; give {key}=PATH of "
        f"that file, or {alone} to train on the feedback alone"
    )


def _recorded_hashes(artifact: Path) -> dict[str, str]:
    """The data files' SHA-256 the parent's run recorded in ``config.json`` (none: not checked)."""
    try:
        record = json.loads((artifact / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    hashes = record.get(DATA_HASHES) if isinstance(record, dict) else None
    return hashes if isinstance(hashes, dict) else {}
