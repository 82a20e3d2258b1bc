"""Which version of each task is live, recorded in the served folder so a restart serves what was
live (docs/keep-learning.md).

A task's first version is its sub-folder of the served folder (``DIR/NAME``). A candidate's
artifact is copied under ``DIR/.versions/NAME/SHA`` when it is posted (kilobytes; the path it came
from may go away), and ``DIR/.versions/live.json`` records, per task that was ever promoted, the
live version's folder and the previous one's, as paths relative to ``DIR``. Promote and rollback
are one atomic write of that record. A task the record does not name is served from ``DIR/NAME``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from softprompt.atomic import atomic_write_json
from softprompt.errors import SoftpromptError

VERSIONS_FOLDER = ".versions"
RECORD_FILE = "live.json"


@dataclass(frozen=True)
class Recorded:
    """A promoted task's live folder and the previous one (None after a rollback)."""

    live: str
    previous: str | None


class LiveRecord:
    """The record of ``DIR/.versions/live.json`` for the served folder ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / VERSIONS_FOLDER / RECORD_FILE

    def read(self) -> dict[str, Recorded]:
        """Every recorded task (none when the file is absent).

        Raises:
            SoftpromptError: the file exists but is not a record (named, with what to do).
        """
        if not self.path.is_file():
            return {}
        try:
            tasks = json.loads(self.path.read_text(encoding="utf-8"))["tasks"]
            return {name: Recorded(entry["live"], entry.get("previous")) for name, entry in tasks.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SoftpromptError(
                f"{self.path} is damaged ({type(exc).__name__}); move it aside to serve every task from its folder"
            ) from None

    def live_folder(self, name: str) -> Path:
        """Where task ``name``'s live version is: the recorded folder, else ``DIR/NAME``."""
        recorded = self.read().get(name)
        return self.root / (recorded.live if recorded else name)

    def set(self, name: str, entry: Recorded | None) -> None:
        """Record (None: forget) task ``name``'s versions, atomically."""
        tasks = self.read()
        if entry is None:
            tasks.pop(name, None)
        else:
            tasks[name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {name: {"live": e.live, "previous": e.previous} for name, e in sorted(tasks.items())}
        atomic_write_json(self.path, {"tasks": record})

    def relative(self, folder: Path) -> str:
        return str(Path(folder).resolve().relative_to(self.root.resolve()))

    def keep_copy(self, name: str, source: Path, version: str) -> Path:
        """A copy of artifact ``source`` under ``DIR/.versions/NAME/VERSION`` (reused when that
        version is already kept): copied to a temporary sibling first, then renamed into place."""
        target = self.root / VERSIONS_FOLDER / name / version
        if (target / "task.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{version}.{uuid.uuid4().hex}.tmp"
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("checkpoint*", "*.png"))
        try:
            staging.rename(target)
        except OSError:  # kept meanwhile by another request for the same version
            shutil.rmtree(staging, ignore_errors=True)
        return target
