"""Following the served folder's record of versions (:class:`~softprompt.lifecycle.versions.LiveRecord`):
what another server sharing the folder changed (a replica of ``serve --ray`` that took a candidate,
a promote or a rollback), and what was recorded before a restart (a candidate beside the live
version), is served here too.

The record is compared with what this server serves, not with what it last read: a change that
could not be followed yet (its task not loaded yet, an artifact that did not load) is tried again
at the next look, and following twice changes nothing. Artifacts are loaded in a thread beside the
worker; the swaps go through the worker's queue like every version change, so a request sees one
version, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.versions import Recorded
from softprompt.serving.registry import ServedTasks, artifact_version, load_task
from softprompt.serving.service import Service
from softprompt.serving.versions import TaskVersions, VersionChange

logger = logging.getLogger("softprompt.serve")


class RecordFollower:
    """The changes that make a server's versions what the record says. ``shadows``: whether this
    server captures (a shadow's answers are only captured, so without a store it is not served)."""

    def __init__(self, versions: TaskVersions, shadows: bool):
        self.versions = versions
        self.shadows = shadows
        self.stamp: tuple[int, int] | None = None
        self.known: set[str] = set()  # tasks the record named at the last look (one gone is served from DIR/NAME)
        self.behind = True  # something could not be followed yet: look again even if the record did not change
        self.logged: dict[str, str] = {}  # task -> the problem last logged for it
        self.turn = asyncio.Lock()  # one look at a time (the periodic one, a version route's)

    def changes(self, tasks: ServedTasks, load: Callable[[Path], Any]) -> list[VersionChange]:
        """What to apply (with each artifact already loaded by ``load``); runs in a thread."""
        stamp = self.versions.record.stamp()
        if stamp == self.stamp and not self.behind:
            return []
        self.stamp, self.behind = stamp, False
        record = self.versions.record.read()
        names = sorted(set(record) | self.known | set(self.versions.candidates))
        self.known = set(record)
        out: list[VersionChange] = []
        for name in names:
            if not tasks.serves(name):  # not loaded here yet (the folder watch will): later
                self.behind = self.behind or name in record
                continue
            try:
                out += self.task_changes(tasks, name, record.get(name) or Recorded(name, None), load)
            except SoftpromptError as exc:
                self.behind = True
                self.log(name, str(exc))
        return out

    def task_changes(
        self, tasks: ServedTasks, name: str, entry: Recorded, load: Callable[[Path], Any]
    ) -> list[VersionChange]:
        root, out = self.versions.record.root, []
        live = root / entry.live
        version = artifact_version(live)
        if version and version != tasks.versions.get(name):
            out.append(VersionChange("live", name, live, load(live), version=version, recorded=True))
        served = self.versions.candidates.get(name)
        if entry.candidate is None or (entry.share == 0 and not self.shadows):
            if entry.candidate is not None:
                self.log(name, "its recorded shadow is not served: start the server with --capture DB")
            if served is not None:
                out.append(VersionChange("drop", name, recorded=True))
            return out
        folder = root / entry.candidate
        if served is None or served.folder != folder or served.share != entry.share:
            model = load(folder)
            out.append(VersionChange("candidate", name, folder, model, entry.share, artifact_version(folder), True))
        return out

    def log(self, name: str, problem: str) -> None:
        if self.logged.get(name) != problem:
            logger.warning("versions: task '%s' does not follow the record yet: %s", name, problem)
        self.logged[name] = problem


async def follow_record(follower: RecordFollower, service: Service, submit: Callable[..., Any]) -> None:
    """Apply the record's changes once, through the worker's queue (``submit("versions", change)``)."""
    async with follower.turn:
        load = lambda folder: load_task(folder, service.backbone)  # noqa: E731
        for change in await asyncio.to_thread(follower.changes, service.tasks, load):
            try:
                await submit("versions", change)
            except HTTPException as exc:  # refused (another kind, other labels), or the task went away
                follower.behind = True
                follower.log(change.name, str(exc.detail))
            else:
                logger.info("versions: task '%s' follows the record (%s)", change.name, change.action)


async def keep_following(follower: RecordFollower, service: Service, submit: Callable[..., Any], every: float) -> None:
    """Follow the record now, then every ``every`` seconds (runs until cancelled)."""
    while True:
        try:
            await follow_record(follower, service, submit)
        except (OSError, SoftpromptError) as exc:  # an unreadable or damaged record: keep serving, look again
            follower.behind = True
            follower.log("*", str(exc))
        await asyncio.sleep(every)
