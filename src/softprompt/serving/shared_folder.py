"""Task changes written to the served folder, for servers that share it (the replicas of
``softprompt serve --ray``): a task added or removed through one replica is a change to the folder,
which every replica watches (``--watch``), so all of them follow.

A task's folder is replaced file by file, each file written beside its target and renamed over it,
``task.json`` last: the folder never disappears while it is replaced (a watching replica would
drop the task in between), and a replica that reads it mid-way finds a weights hash that does not
match and tries again at its next look. A removed task's folder is renamed out of the served
folder's top level at once, then deleted.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from softprompt.artifact import TASK_FILE

TRASH = ".removed"  # under the served folder; a dot folder is never a task


def publish(root: Path, name: str, source: Path) -> None:
    """Make ``root/name`` hold the artifact at ``source`` (nothing to do when it is that folder)."""
    target = Path(root) / name
    if target.resolve() == Path(source).resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(source).iterdir() if p.is_file() and not p.name.endswith(".png"))
    for path in sorted(files, key=lambda p: p.name == TASK_FILE):  # task.json last
        staging = target / f".{path.name}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(path, staging)
        os.replace(staging, target / path.name)
    kept = {p.name for p in files}
    for old in target.iterdir():
        if old.is_file() and old.name not in kept:
            old.unlink(missing_ok=True)


def withdraw(root: Path, name: str) -> None:
    """Take ``root/name`` out of the served folder (nothing when it is not there)."""
    target = Path(root) / name
    if not target.is_dir():
        return
    trash = Path(root) / TRASH / f"{name}.{uuid.uuid4().hex}"
    trash.parent.mkdir(exist_ok=True)
    target.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
