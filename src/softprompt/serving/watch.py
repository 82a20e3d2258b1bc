"""Watching the artifacts folder while serving (``serve --watch SECONDS``): a sub-folder that
appears or whose files change is served (added or replaced), one that disappears is removed.
Each change goes through the same queue as ``POST``/``DELETE /v1/tasks/{name}``, so a request
sees a task's old prompt or its new one, never a mix.

The folder is polled (a stat per file), which works on every file system, network ones
included. A folder is applied once its files (names, sizes, modification times) are the same at
two looks in a row, so a copy still under way is not read half done; one that does not load is
tried again at the next look, its error logged once. Tasks that did not load at start are tried
like new ones. If the folder itself cannot be read, the served tasks stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from softprompt.artifact import TASK_FILE
from softprompt.serving.service import TaskChange

logger = logging.getLogger("softprompt.serve")


Stamp = tuple[tuple[str, int, int], ...]  # (file name, size, modification time in ns) per file


class FolderWatch:
    """What changed in ``directory`` since the last look; starts from the tasks ``served``.
    ``note_skipped(name, reason)`` lists a task that did not load (``GET /v1/tasks``'s
    ``skipped``), and unlists it (reason None) once it is served or its folder is gone."""

    def __init__(
        self,
        directory: str | Path,
        served: Iterable[str],
        note_skipped: Callable[[str, str | None], None] = lambda name, reason: None,
    ) -> None:
        self.directory = Path(directory)
        self.note_skipped = note_skipped
        now = self.stamps()
        self.seen: dict[str, Stamp] = {name: now[name] for name in served if name in now}
        self.last: dict[str, Stamp] = now  # the previous look, to tell a settled folder
        self.failed: dict[str, str] = {}  # task -> the error last logged for it

    def stamps(self) -> dict[str, Stamp]:
        """Task name -> the stamp of its files, for every sub-folder holding a ``task.json``
        (OSError when the folder itself cannot be read)."""
        stamps = {}
        for path in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            try:
                if (path / TASK_FILE).is_file():
                    files = sorted((f.name, f.stat()) for f in path.iterdir() if f.is_file())
                    stamps[path.name] = tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in files)
            except OSError:  # the folder (or a file) went away meanwhile: the next look sees it
                continue
        return stamps

    def changes(self) -> list[TaskChange]:
        """Tasks to (re)load, once settled, and tasks to remove, since the last call."""
        now, previous = self.stamps(), self.last
        self.last = now
        settled = [name for name, stamp in now.items() if previous.get(name) == stamp != self.seen.get(name)]
        changes = [TaskChange(name, str(self.directory / name), from_api=False) for name in settled]
        gone = [*self.seen, *(name for name in self.failed if name not in self.seen)]
        return changes + [TaskChange(name, from_api=False) for name in gone if name not in now]

    def settle(self, change: TaskChange, error: str | None, missing: bool = False) -> None:
        """Record the outcome: a loaded or removed task is up to date; a failed one is tried again
        (``missing``: the server did not hold the task, so a removal is done all the same)."""
        if error is None or (change.path is None and missing):
            self.failed.pop(change.name, None)
            self.note_skipped(change.name, None)
            if change.path is None:
                self.seen.pop(change.name, None)
                logger.info("watch: removed task '%s'", change.name)
            else:
                self.seen[change.name] = self.last[change.name]
                logger.info("watch: serving task '%s' from %s", change.name, change.path)
            return
        if self.failed.get(change.name) != error:
            undone = "removed" if change.path is None else "served"
            logger.warning("watch: task '%s' not %s: %s", change.name, undone, error)
        self.failed[change.name] = error
        if change.path is not None:
            self.note_skipped(change.name, error)


async def watch_folder(watch: FolderWatch, apply: Callable[[TaskChange], Awaitable[Any]], every: float) -> None:
    """Every ``every`` seconds, apply the folder's changes one by one (runs until cancelled)."""
    unreadable = ""  # the last error reading the folder itself, logged once
    while True:
        await asyncio.sleep(every)
        try:
            changes = await asyncio.to_thread(watch.changes)
        except OSError as exc:  # the folder itself went away or cannot be read: keep the tasks, try again
            if str(exc) != unreadable:
                logger.warning("watch: cannot read %s: %s", watch.directory, exc)
            unreadable = str(exc)
            continue
        unreadable = ""
        for change in changes:
            try:
                await apply(change)
            except HTTPException as exc:  # 400: the artifact does not load; 404: no such task; 429/504: busy
                watch.settle(change, str(exc.detail), missing=exc.status_code == 404)
            except Exception as exc:  # anything else must not stop the watch: log it, try again
                watch.settle(change, f"{type(exc).__name__}: {exc}")
            else:
                watch.settle(change, None)
