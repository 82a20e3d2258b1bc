"""The SHA-256 of the data files a run's settings name, kept beside its settings in
``config.json``: ``train --resume`` refuses data that changed since the run started, and
``retrain`` refuses to replay training data other than the artifact's own (no torch here: both
check before the heavy libraries load)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

DATA_HASHES = "data_sha256"  # config.json's record of the data files' contents (not a setting)
DATA_FILES = ("train", "dev", "test", "path")  # the data.* settings that name files


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks (a data file may be larger than memory likes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_files(settings: dict[str, Any]) -> dict[str, str]:
    """The data files a run's settings name, keyed by where they name them: ``data.train`` (a
    ``data`` section), ``data`` (one file, as ``detox train`` takes), ``tasks[1].data.dev`` (a
    multitask run's tasks)."""
    found: dict[str, str] = {}

    def add(where: str, data: Any) -> None:
        if isinstance(data, str) and data:
            found[where] = data
        elif isinstance(data, dict):
            found.update({f"{where}.{key}": str(data[key]) for key in DATA_FILES if data.get(key)})

    add("data", settings.get("data"))
    for index, task in enumerate(settings.get("tasks") or []):
        if isinstance(task, dict):
            add(f"tasks[{index}].data", task.get("data"))
    return found


def data_hashes(settings: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each data file a run's settings name (``{"data.train": "ab12..."}``)."""
    return {key: file_sha256(Path(name)) for key, name in data_files(settings).items() if is_file(name)}


def is_file(name: str) -> bool:
    """Whether ``name`` is a file; False for a name the system cannot even look up (too long, a
    NUL byte), which a data loader reports properly when it reads that file."""
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False
