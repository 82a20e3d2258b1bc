"""The model side of the server: the loaded tasks and the batch handlers the worker calls
(:class:`Service`). What every request passes through on its way here is :mod:`softprompt.serving.gate`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.backbones import Backbone
from softprompt.core.prompt_caches import PromptCacheSettings
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.lifecycle.drift import DriftMonitor
from softprompt.serving.registry import ServedTasks, artifact_version, is_internal, load_task, load_tasks
from softprompt.serving.requests import ClassifyRequest
from softprompt.serving.versions import (
    Candidate,
    TaskVersions,
    VersionChange,
    VersionConflict,
    VersionRefused,
    candidate_key,
)
from softprompt.serving.writing import GenerationStream, Scored, ScoreJob, WriteJob, score_job
from softprompt.tasks.classification.mixed import classify_mixed

logger = logging.getLogger(__name__)


class UnknownTask(LookupError):
    """The request names a task that is not (or no longer) served: HTTP 404."""

    def __init__(self, name: str):
        super().__init__(f"unknown task '{shown_name(name)}'; GET /v1/tasks lists them")


@dataclass(frozen=True)
class TaskChange:
    """Serve the artifact at ``path`` as task ``name`` (replacing one), or remove it (no path).
    ``loaded`` is the artifact already loaded (off the worker); None: the worker loads it."""

    name: str
    path: str | None = None
    loaded: Any = field(default=None, compare=False, repr=False)
    from_api: bool = True  # False: from the watched folder (see Service.api_changes)


class Service:
    """The model side: the loaded tasks and the batch handlers the worker calls."""

    def __init__(
        self,
        backbone: Backbone,
        artifacts: str | Path,
        caches: PromptCacheSettings | None = None,
    ):
        self.backbone = backbone
        self.artifacts = artifacts  # the folder whose sub-folders are the served tasks' artifacts
        self.caches = caches or PromptCacheSettings()  # how prompt caches are kept (memory, dtype, folder)
        self.versions = TaskVersions(artifacts)  # candidates, and the folder's record of live versions
        self.tasks: ServedTasks = self._load_tasks()
        self.stream = GenerationStream(backbone)  # the server's running decoding batch
        self.stream.batch.caches = self.tasks.prompt_caches  # writers' soft prompts kept there too
        # Tasks added (name -> path) or removed (name -> None) through the API: a reload re-reads
        # the folder beneath them, so they outlast it (not a restart). A change the watched folder
        # makes to a task replaces the API's.
        self.api_changes: dict[str, str | None] = {}
        self.drift = DriftMonitor()  # create_app sets the window and threshold of its settings
        self.report_skipped()

    def serves(self, name: str) -> bool:
        return self.tasks.serves(name)

    def _load_tasks(self) -> ServedTasks:
        return load_tasks(self.artifacts, self.backbone, self.caches, self.versions.live_folders())

    def report_skipped(self) -> None:
        for name, reason in self.tasks.skipped.items():
            logger.warning("skipped task '%s': %s", name, reason)

    def classify(self, payloads: list[ClassifyRequest]) -> list[list[dict[str, Any]] | UnknownTask]:
        """One mixed batch for every text of every request (a request whose task was removed
        while it waited is answered with :class:`UnknownTask`). A request is answered by its
        task's live version or, for a canary's share, by its candidate; a shadow candidate's
        rows join the same batch and its answers ride along under ``"shadow"`` (for capture)."""
        served = self.tasks.classifiers
        plans: list[tuple[str, Candidate | None] | None] = []
        rows = []
        for payload in payloads:
            if payload.task not in served or is_internal(payload.task):
                plans.append(None)
                continue
            key, _ = self.versions.answering(payload.task)
            shadow = self.versions.shadow(payload.task)
            plans.append((key, shadow))
            for text in payload.texts:
                rows.append((key, Example({"text": text})))
                if shadow is not None:
                    rows.append((candidate_key(payload.task), Example({"text": text})))
        probabilities = iter(classify_mixed(self.tasks.mixed, rows, batch_size=len(rows)) if rows else [])
        out: list[list[dict[str, Any]] | UnknownTask] = []
        for payload, plan in zip(payloads, plans, strict=True):
            if plan is None:
                out.append(UnknownTask(payload.task))
                continue
            key, shadow = plan
            labels = served[payload.task].task.labels
            version = self.versions.version_of(self.tasks, key)
            answers = []
            for text in payload.texts:
                answer = labelled(text, labels, next(probabilities).tolist(), version)
                if key == payload.task:  # the live version's answers (not a canary's) are watched
                    self.drift.observe(payload.task, version, served[key], answer)
                if shadow is not None:
                    answer["shadow"] = labelled(text, labels, next(probabilities).tolist(), shadow.version)
                    shadow.compare(answer["label"], answer["shadow"]["label"])
                answers.append(answer)
            out.append(answers)
        return out

    def change_versions(self, changes: list[VersionChange]) -> list[dict[str, Any] | Exception]:
        """Candidates, promotions and rollbacks, in the worker between batches (see
        :mod:`softprompt.serving.versions`)."""
        out: list[dict[str, Any] | Exception] = []
        for change in changes:
            if not self.tasks.serves(change.name):
                out.append(UnknownTask(change.name))
                continue
            try:
                out.append(self.versions.apply(self.tasks, change))
            except (VersionConflict, VersionRefused, SoftpromptError, OSError) as exc:
                out.append(exc)
        return out

    def prefill_generation(
        self, chunks: list[tuple[int, WriteJob, int]], budget: int
    ) -> tuple[dict[int, tuple[int, int]], dict[int, UnknownTask]]:
        """Read up to the given number of prompt tokens of each ``(key, job, tokens)``, ``budget``
        of them all (see :meth:`GenerationStream.prefill`); a job joins the running decoding batch
        once its prompt is read, keeping its own settings and seed, so its answer does not depend
        on what it shares the batch with, or when it joined. A new job whose task was removed
        while it waited is refused; one for a candidate promoted or dropped meanwhile is answered
        by the live version. Returns ``(tokens read, prompt length)`` per key, and the refused."""
        served, refused, reading = self.tasks.writers, {}, []
        for key, job, tokens in chunks:
            if key not in self.stream.pending:
                job = self.versions.settled(job, served)
                if job.task is not None and job.task not in served:
                    refused[key] = UnknownTask(job.task)
                    continue
            reading.append((key, job, tokens))
        return self.stream.prefill(reading, served, budget), refused

    def advance_generation(self, steps: int) -> dict[int, list[str]]:
        """Decode ``steps`` tokens for every job in the batch; the texts of the jobs that finished,
        by key."""
        return {key: self._texts(ids) for key, ids in self.stream.advance(steps).items()}

    def decoded_steps(self) -> int:
        """Forward passes the last :meth:`advance_generation` ran: fewer than asked when every
        row finished before the end of the slice (what the scheduler divides its time by)."""
        return self.stream.batch.steps_run

    def drop_generation(self, keys: set[int]) -> None:
        self.stream.drop(keys)

    def generation_keys(self) -> set[int]:
        """The jobs in the running decoding batch."""
        return {member.key for member in self.stream.batch.members}

    def generation_rows(self) -> int:
        return self.stream.rows

    def _texts(self, samples: list[list[int]]) -> list[str]:
        return [self.backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in samples]

    def score(self, jobs: list[ScoreJob]) -> list[Scored | UnknownTask]:
        """Token log-probabilities of texts after their tasks' soft prompts (``logprobs``, ``echo``)."""
        served = self.tasks.writers
        out: list[Scored | UnknownTask | SoftpromptError] = []
        for job in jobs:
            try:
                known = job.task in served
                out.append(
                    score_job(self.backbone, job, served[job.task], self.stream.batch.adapters)
                    if known
                    else UnknownTask(job.task)
                )
            except SoftpromptError as exc:  # this job's own: the others are answered
                out.append(exc)
        return out

    def change_tasks(self, changes: list[TaskChange]) -> list[dict[str, Any] | Exception]:
        """Add, replace (a path given) or remove (none) tasks. It runs in the worker between
        batches, so a request sees a task's old prompt or its new one, never a mix."""
        out: list[dict[str, Any] | Exception] = []
        for change in changes:
            dropped = self.versions.drop(self.tasks, change.name)  # a candidate stands beside one version
            with self.versions.record.locked():
                if change.path is not None and not change.from_api:
                    self.versions.record.set(change.name, None)  # the folder's own version is live now
                elif dropped:
                    self.versions.note(change.name, candidate=None, share=0.0)
            outcome = self._apply(change)
            if not isinstance(outcome, Exception) and change.from_api:
                self.api_changes[change.name] = change.path
            elif not isinstance(outcome, Exception):
                self.api_changes.pop(change.name, None)
            out.append(outcome)
        return out

    def _apply(self, change: TaskChange) -> dict[str, Any] | Exception:
        if change.path is None:
            return {"removed": change.name} if self.tasks.remove(change.name) else UnknownTask(change.name)
        try:
            loaded = change.loaded if change.loaded is not None else load_task(Path(change.path), self.backbone)
            self.tasks.put(change.name, loaded, artifact_version(Path(change.path)))
            self.tasks.warm([change.name])  # its first request finds its prompt cache kept
        except SoftpromptError as exc:
            return exc
        logger.info("serving task '%s' from %s", change.name, change.path)
        return self.tasks.describe_one(change.name)  # not the whole list: a change costs O(1)

    def reload(self, _: list[Any]) -> list[dict[str, Any]]:
        """Re-read the artifacts folder, then apply the changes made through the API again: a task
        added through the API stays (read again from its path; listed in ``skipped`` if that no
        longer loads), and one removed through the API stays removed."""
        self.tasks = self._load_tasks()
        self.stream.batch.caches = self.tasks.prompt_caches
        self.versions.restore(self.tasks)
        for name, path in self.api_changes.items():
            outcome = self._apply(TaskChange(name, path))
            if isinstance(outcome, SoftpromptError):
                self.tasks.skipped[name] = f"added through the API from {path}: {outcome}"
        self.report_skipped()
        return [{"tasks": self.tasks.describe(), "skipped": dict(self.tasks.skipped)}] * len(_)

    def note_skipped(self, name: str, reason: str | None) -> None:
        """List (or, with None, unlist) a task that did not load, as ``GET /v1/tasks`` shows it."""
        if reason is None:
            self.tasks.skipped.pop(name, None)
        else:
            self.tasks.skipped[name] = reason


def labelled(text: str, labels: list[str], scores: list[float], version: str) -> dict[str, Any]:
    """A classified text's answer: its label (the most probable), every label's probability and
    the version that answered."""
    best = max(range(len(labels)), key=scores.__getitem__)
    return {"text": text, "label": labels[best], "scores": dict(zip(labels, scores, strict=True)), "version": version}


def shown_name(name: str) -> str:
    """A client's task name as an error repeats it: the first 100 characters."""
    return name if len(name) <= 100 else f"{name[:100]}..."
