"""Watching the artifacts folder while serving (``serve --watch SECONDS``): a sub-folder that
appears or whose ``task.json`` changes is served (added or replaced), one that disappears is
removed. Each change goes through the same queue as ``POST``/``DELETE /v1/tasks/{name}``, so a
request sees a task's old prompt or its new one, never a mix.

The folder is polled (a stat per sub-folder), which works on every file system, network ones
included. An artifact that does not load yet (a copy still under way) is retried at the next
poll, and its error is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from softprompt.artifact import TASK_FILE
from softprompt.serving.service import TaskChange

logger = logging.getLogger("softprompt.serve")


class FolderWatch:
    """What changed in ``directory`` since the last look; starts from what it holds now (the
    tasks loaded at start)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.seen = self.stamps()
        self.pending: dict[str, int] = {}  # the stamps the last changes were read at
        self.failed: dict[str, str] = {}  # task -> the error last logged for it

    def stamps(self) -> dict[str, int]:
        """Task name -> modification time (ns) of its ``task.json``."""
        stamps = {}
        for path in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            try:
                stamps[path.name] = (path / TASK_FILE).stat().st_mtime_ns
            except OSError:  # no task.json (yet), or the folder went away meanwhile
                continue
        return stamps

    def changes(self) -> list[TaskChange]:
        """Tasks to (re)load and tasks to remove since the last call."""
        self.pending = self.stamps() if self.directory.is_dir() else {}
        changed = [name for name, stamp in self.pending.items() if self.seen.get(name) != stamp]
        changes = [TaskChange(name, str(self.directory / name)) for name in changed]
        return changes + [TaskChange(name) for name in self.seen if name not in self.pending]

    def settle(self, change: TaskChange, error: str | None) -> None:
        """Record the outcome: a loaded or removed task is up to date; a failed one is tried again."""
        if change.path is None:  # gone from the folder: removed, or it was never served
            self.seen.pop(change.name, None)
            self.failed.pop(change.name, None)
            logger.info("watch: removed task '%s'", change.name)
            return
        if error is None:
            self.failed.pop(change.name, None)
            self.seen[change.name] = self.pending[change.name]
            logger.info("watch: serving task '%s' from %s", change.name, change.path)
            return
        if self.failed.get(change.name) != error:
            logger.warning("watch: task '%s' not served: %s", change.name, error)
        self.failed[change.name] = error


async def watch_folder(watch: FolderWatch, apply: Callable[[TaskChange], Awaitable[Any]], every: float) -> None:
    """Every ``every`` seconds, apply the folder's changes one by one (runs until cancelled)."""
    while True:
        await asyncio.sleep(every)
        try:
            changes = await asyncio.to_thread(watch.changes)
        except OSError as exc:  # the folder itself went away or cannot be read: try again later
            logger.warning("watch: cannot read %s: %s", watch.directory, exc)
            continue
        for change in changes:
            try:
                await apply(change)
            except HTTPException as exc:
                watch.settle(change, str(exc.detail))
            else:
                watch.settle(change, None)
