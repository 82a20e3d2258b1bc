"""Task versions on a running server: a candidate beside the live version, run as a shadow (on
every request of its task, in the same batch, its answers captured and never returned) or as a
canary (answering a share of the requests); promote and roll back.

A candidate is served under an internal name (``NAME@candidate``; ``@`` is not allowed in task
names, so no client can name it) in the same mixed batch and prompt-cache store as every task:
a shadow costs its own rows and nothing else. Every change runs in the server's worker between
batches, so a request sees one version, never a mix; promote and rollback write the served
folder's record first (:class:`~softprompt.lifecycle.versions.LiveRecord`), so a restart serves
what was live, and a record that cannot be written changes nothing. Posting or dropping a
candidate is recorded too: servers sharing the folder follow the record
(:mod:`softprompt.serving.version_follow`), with changes marked ``recorded`` (applied here, not
written again).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.lifecycle.versions import LiveRecord, Recorded
from softprompt.serving.registry import ServedTasks, is_internal
from softprompt.serving.writing import Writer

CANDIDATE_SUFFIX = "@candidate"


class VersionConflict(Exception):
    """Nothing to promote or roll back to (HTTP 409)."""


class VersionRefused(Exception):
    """A candidate that cannot stand beside its task (another kind, other labels): HTTP 400."""


def candidate_key(name: str) -> str:
    return f"{name}{CANDIDATE_SUFFIX}"


@dataclass
class Candidate:
    """A version served beside task ``name``'s live one."""

    name: str
    version: str
    folder: Path  # its kept copy under the served folder
    share: float  # 0: shadow; (0, 1]: the share of requests it answers
    model: Any = field(repr=False)
    compared: int = 0  # requests both versions answered (shadow)
    agreed: int = 0  # ... with the same answer
    answered: int = 0  # requests it answered (canary)

    def compare(self, live: Any, mine: Any) -> None:
        """Count a request both versions answered (``live``'s answer against this one's)."""
        self.compared += 1
        self.agreed += live == mine

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.folder),
            "share": self.share,
            "mode": "shadow" if self.share == 0 else "canary",
            "compared": self.compared,
            "agreement": self.agreed / self.compared if self.compared else None,
            "answered": self.answered,
        }


@dataclass(frozen=True)
class VersionChange:
    """One change of a task's versions, run by the worker: ``candidate`` (``model`` loaded from
    ``folder``), ``drop`` the candidate, ``promote`` it, or ``rollback`` to ``model`` (the
    previous version, loaded from ``folder``). ``recorded``: the record already says so (another
    server changed it); apply it here without writing the record, and ``live`` serves ``model``
    as the live version."""

    action: str
    name: str
    folder: Path | None = None
    model: Any = field(default=None, compare=False, repr=False)
    share: float = 0.0
    version: str = ""
    recorded: bool = False


class TaskVersions:
    """The candidates of a server's tasks and the served folder's record of live versions."""

    def __init__(self, root: str | Path, seed: int = 0):
        self.record = LiveRecord(root)
        self.candidates: dict[str, Candidate] = {}
        self.draw = random.Random(seed)  # the canary's choice, per request

    def answering(self, name: str) -> tuple[str, str]:
        """``(key to run, role)`` for a request of task ``name``: the live task, or (a canary's
        share of the time) its candidate."""
        candidate = self.candidates.get(name)
        if candidate is not None and candidate.share > 0 and self.draw.random() < candidate.share:
            candidate.answered += 1
            return candidate_key(name), "canary"
        return name, "live"

    def shadow(self, name: str) -> Candidate | None:
        """Task ``name``'s shadow candidate, if it has one."""
        candidate = self.candidates.get(name)
        return candidate if candidate is not None and candidate.share == 0 else None

    def live_folders(self) -> dict[str, Path]:
        """The folder of each recorded task's live version (for loading the served folder)."""
        return {name: self.record.root / entry.live for name, entry in self.record.read().items()}

    def settled(self, job: Any, served: dict[str, Any]) -> Any:
        """``job`` for the live version when it names a candidate no longer served (promoted or
        dropped between the request's choice and its turn)."""
        if job.task is not None and is_internal(job.task) and job.task not in served:
            return dataclasses.replace(job, task=job.task.removesuffix(CANDIDATE_SUFFIX))
        return job

    def version_of(self, tasks: ServedTasks, key: str) -> str:
        if is_internal(key):
            return self.candidates[key.removesuffix(CANDIDATE_SUFFIX)].version
        return tasks.versions.get(key, "")

    def apply(self, tasks: ServedTasks, change: VersionChange) -> dict[str, Any]:
        """Run ``change`` on ``tasks`` (in the worker, between batches), holding the record's lock.

        Raises:
            VersionRefused: a candidate of another kind or with other labels.
            VersionConflict: nothing to drop, promote or roll back to.
        """
        with self.record.locked():
            if change.recorded:
                self.follow(tasks, change)
            elif change.action == "candidate":
                self.stand_beside(tasks, change)
                self.note(change.name, candidate=self.record.relative(change.folder), share=change.share)
            elif change.action == "drop":
                if not self.drop(tasks, change.name):
                    raise VersionConflict(f"task '{change.name}' has no candidate")
                self.note(change.name, candidate=None, share=0.0)
            elif change.action == "promote":
                self.promote(tasks, change.name)
            elif change.action == "rollback":
                self.rollback(tasks, change.name, change)
        return self.describe(tasks, change.name)

    def note(self, name: str, **fields: Any) -> None:
        """Change fields of task ``name``'s record."""
        self.record.set(name, dataclasses.replace(self.record.entry(name), **fields))

    def follow(self, tasks: ServedTasks, change: VersionChange) -> None:
        """Serve what another server recorded: a candidate, no candidate, or another live version."""
        if change.action == "candidate":
            self.stand_beside(tasks, change)
        elif change.action == "drop":
            self.drop(tasks, change.name)
        elif change.action == "live":
            tasks.put(change.name, change.model, change.version)
            tasks.warm([change.name])

    def stand_beside(self, tasks: ServedTasks, change: VersionChange) -> None:
        """Serve ``change.model`` as task ``change.name``'s candidate (replacing one)."""
        name = change.name
        check_beside(tasks, name, change.model)
        self.drop(tasks, name)
        tasks.put(candidate_key(name), change.model, change.version)
        tasks.warm([candidate_key(name)])
        self.candidates[name] = Candidate(name, change.version, change.folder, change.share, change.model)

    def drop(self, tasks: ServedTasks, name: str) -> bool:
        if self.candidates.pop(name, None) is None:
            return False
        tasks.remove(candidate_key(name))
        return True

    def promote(self, tasks: ServedTasks, name: str) -> None:
        candidate = self.candidates.get(name)
        if candidate is None:
            raise VersionConflict(f"task '{name}' has no candidate to promote; POST /v1/tasks/{name}/candidate first")
        live = self.record.live_folder(name)
        self.record.set(name, Recorded(self.record.relative(candidate.folder), self.record.relative(live)))
        self.drop(tasks, name)
        tasks.put(name, candidate.model, candidate.version)
        tasks.warm([name])

    def previous(self, name: str) -> Path | None:
        """The folder task ``name`` rolls back to (None: nothing recorded)."""
        recorded = self.record.read().get(name)
        return None if recorded is None or recorded.previous is None else self.record.root / recorded.previous

    def rollback(self, tasks: ServedTasks, name: str, change: VersionChange) -> None:
        if change.folder is None or self.previous(name) != change.folder:
            raise VersionConflict(f"task '{name}' has no previous version to roll back to")
        self.record.set(name, Recorded(self.record.relative(change.folder), None))
        self.drop(tasks, name)
        tasks.put(name, change.model, change.version)
        tasks.warm([name])

    def restore(self, tasks: ServedTasks) -> None:
        """Put the candidates back after the tasks were read again (reload); a candidate whose
        task is gone goes too."""
        for name, candidate in list(self.candidates.items()):
            if name in tasks.classifiers or name in tasks.writers:
                tasks.put(candidate_key(name), candidate.model, candidate.version)
            else:
                del self.candidates[name]

    def describe(self, tasks: ServedTasks, name: str) -> dict[str, Any]:
        """Task ``name``'s versions as ``GET /v1/tasks/{name}`` shows them."""
        previous = self.previous(name)
        candidate = self.candidates.get(name)
        return {
            **tasks.describe_one(name),
            "live": {"version": tasks.versions.get(name, ""), "path": str(self.record.live_folder(name))},
            "candidate": None if candidate is None else candidate.describe(),
            "previous": None if previous is None else {"path": str(previous)},
        }


def check_beside(tasks: ServedTasks, name: str, model: Any) -> None:
    """A candidate must be of its task's kind and, for a classifier, have its labels."""
    writer = name in tasks.writers
    if writer != isinstance(model, Writer):
        kinds = ("generation", "classification") if writer else ("classification", "generation")
        raise VersionRefused(f"task '{name}' is a {kinds[0]} task; the candidate is a {kinds[1]} artifact")
    if not writer and list(model.task.labels) != list(tasks.classifiers[name].task.labels):
        live, other = tasks.classifiers[name].task.labels, model.task.labels
        raise VersionRefused(f"the candidate's labels {other} differ from task '{name}''s {live}")
