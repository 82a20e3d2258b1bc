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


def data_hashes(settings: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each data file a run's settings name (``{"data.train": "ab12..."}``)."""
    data = settings.get("data") or {}
    files = {f"data.{key}": data.get(key) for key in DATA_FILES}
    return {key: file_sha256(Path(name)) for key, name in files.items() if name and is_file(str(name))}


def is_file(name: str) -> bool:
    """Whether ``name`` is a file; False for a name the system cannot even look up (too long, a
    NUL byte), which a data loader reports properly when it reads that file."""
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False
