"""Which version of each task is live, recorded in the served folder so a restart serves what was
live (docs/keep-learning.md).

A task's first version is its sub-folder of the served folder (``DIR/NAME``). A candidate's
artifact is copied under ``DIR/.versions/NAME/SHA`` when it is posted (kilobytes; the path it came
from may go away), and ``DIR/.versions/live.json`` records, per task that was ever promoted, the
live version's folder and the previous one's, as paths relative to ``DIR``. Promote and rollback
are one atomic write of that record. A task the record does not name is served from ``DIR/NAME``.
A task's candidate (its kept copy and the share it answers) is recorded too, so that servers
sharing the folder (the replicas of ``serve --ray``) and a restarted server serve it beside the
live version. Changes are made under a lock on the folder (``DIR/.versions/.lock``), so two
servers changing versions at once do not lose each other's change.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.atomic import atomic_write_json
from softprompt.errors import SoftpromptError

VERSIONS_FOLDER = ".versions"
RECORD_FILE = "live.json"
LOCK_FILE = ".lock"

try:  # POSIX; elsewhere one server per folder needs no lock between servers
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Recorded:
    """A task's live folder, the previous one (None after a rollback) and its candidate's
    folder with the share of requests it answers (0: a shadow), all relative to ``DIR``."""

    live: str
    previous: str | None
    candidate: str | None = None
    share: float = 0.0

    def is_plain(self, name: str) -> bool:
        """Nothing to record: task ``name`` is served from its own folder, with nothing beside it."""
        return self.live == name and self.previous is None and self.candidate is None


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
            return {name: _read(entry) for name, entry in tasks.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SoftpromptError(
                f"{self.path} is damaged ({type(exc).__name__}); move it aside to serve every task from its folder"
            ) from None

    def live_folder(self, name: str) -> Path:
        """Where task ``name``'s live version is: the recorded folder, else ``DIR/NAME``."""
        recorded = self.read().get(name)
        return self.root / (recorded.live if recorded else name)

    def entry(self, name: str) -> Recorded:
        """Task ``name``'s record (served from ``DIR/NAME`` with nothing beside it when it has none)."""
        return self.read().get(name) or Recorded(name, None)

    def set(self, name: str, entry: Recorded | None) -> None:
        """Record (None: forget) task ``name``'s versions, atomically."""
        tasks = self.read()
        before = tasks.get(name)
        if entry is None or entry.is_plain(name):
            tasks.pop(name, None)
        else:
            tasks[name] = entry
        if tasks.get(name) == before:
            return  # unchanged: servers following the record see no change
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {name: _written(e) for name, e in sorted(tasks.items())}
        atomic_write_json(self.path, {"tasks": record})

    def stamp(self) -> tuple[int, int] | None:
        """The record file's (modification time in ns, size), to tell that it changed (None: absent)."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock while reading and changing the record (servers sharing it)."""
        if fcntl is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def relative(self, folder: Path) -> str:
        """``folder`` as the record names it: relative to ``DIR``."""
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


def _read(entry: dict[str, Any]) -> Recorded:
    return Recorded(entry["live"], entry.get("previous"), entry.get("candidate"), float(entry.get("share", 0)))


def _written(entry: Recorded) -> dict[str, object]:
    written: dict[str, object] = {"live": entry.live, "previous": entry.previous}
    if entry.candidate is not None:
        written.update(candidate=entry.candidate, share=entry.share)
    return written
