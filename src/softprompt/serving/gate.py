"""What every request passes through on its way to the model's worker (:class:`Gate`): the
server's limits, the task check, the path check, and the queue with its timeout and disconnect
watch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.capture import Capture
from softprompt.serving.engine import Engine
from softprompt.serving.guards import outside_roots
from softprompt.serving.registry import is_internal, load_task, reserved_name_problem
from softprompt.serving.service import Service, TaskChange, UnknownTask, shown_name
from softprompt.serving.settings import ServeSettings, over_limit
from softprompt.serving.shared_folder import publish, withdraw
from softprompt.serving.step import QueueFull
from softprompt.serving.versions import VersionConflict, VersionRefused


async def _until_disconnected(request: Request, every: float = 0.1) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every)


TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # a task name is also a folder name


class Gate:
    """What every request passes through: limits, the task check, and the queue with its
    timeout and disconnect watch."""

    def __init__(self, service: Service, engine: Engine, settings: ServeSettings, capture: Capture | None = None):
        self.service, self.engine, self.settings = service, engine, settings
        self.capture = capture  # serve --capture: where answers are stored (None: not captured)
        self.ignored_logged: set[str] = set()  # request fields this server ignores, logged once each
        self.background: set[asyncio.Task] = set()  # work no response waits for (shadows' capture)

    async def submit(self, kind: str, payload: Any, size: int = 1, request: Request | None = None) -> Any:
        """Queue the work and wait for it; a caller that disconnects or times out takes its work
        out of the queue (or out of a running generation) with it."""
        rows = payload.samples if kind == "generate" else size  # a generation takes a row per sample
        work = asyncio.ensure_future(self.engine.submit(kind, payload, rows))
        watchers = {work}
        if request is not None:
            watchers.add(asyncio.ensure_future(_until_disconnected(request)))
        timeout = self.settings.timeout_s
        try:
            done, _ = await asyncio.wait(watchers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller's own task was cancelled (a dropped stream)
            work.cancel()  # takes the job out of the queue, or out of the running batch
            raise
        finally:
            for other in watchers - {work}:
                other.cancel()
        if work not in done:
            work.cancel()
            if not done:
                raise HTTPException(504, f"the request took longer than {timeout:g} s")
            raise HTTPException(499, "the client closed the request")
        try:
            return work.result()
        except QueueFull:
            raise HTTPException(429, "the request queue is full; retry shortly") from None
        except UnknownTask as exc:
            raise HTTPException(404, str(exc)) from None
        except VersionConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except VersionRefused as exc:
            raise HTTPException(400, str(exc)) from None
        except SoftpromptError as exc:
            raise HTTPException(400, str(exc)) from None

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without a response waiting for it (kept referenced until it is done)."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def change(self, change: TaskChange) -> Any:
        """Add, replace or remove a task. The artifact is loaded in a thread beside the worker, so
        loading holds up no batch; only the swap waits for the worker (between batches, ahead of
        the requests already queued)."""
        reserved = reserved_name_problem(change.name)
        if reserved:
            raise HTTPException(400, reserved)
        if change.path is not None and change.from_api:
            self.confined(change.path)
        if change.path is not None and change.loaded is None:
            loop = asyncio.get_running_loop()
            try:
                loaded = await loop.run_in_executor(None, load_task, Path(change.path), self.service.backbone)
            except SoftpromptError as exc:
                raise HTTPException(400, str(exc)) from None
            change = dataclasses.replace(change, loaded=loaded)
        answer = await self.submit("tasks", change)
        if self.settings.shared_folder and change.from_api:  # the other replicas follow the folder
            root, loop = self.service.artifacts, asyncio.get_running_loop()
            if change.path is None:
                await loop.run_in_executor(None, withdraw, root, change.name)
            else:
                await loop.run_in_executor(None, publish, root, change.name, Path(change.path))
        return answer

    def confined(self, path: str) -> None:
        """403 for a path outside the served folder and the ``--artifacts-root`` folders."""
        outside = outside_roots(path, [self.service.artifacts, *self.settings.artifacts_roots])
        if outside:
            raise HTTPException(403, outside)

    def within_limits(self, texts: list[str], cost: int = 0) -> None:
        """413 for a text over ``max_text_chars`` or a generation over ``max_generated_tokens``."""
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise HTTPException(413, f"text {index} has {len(text):,} characters; the limit is {limit:,}")
        tokens = self.settings.max_generated_tokens
        if cost > tokens:
            raise HTTPException(413, f"max_new_tokens x samples = {cost:,} is over the limit of {tokens:,} tokens")

    def known(self, task: str, kind: str) -> None:
        """404 for an unknown task, 400 for a task that answers another ``kind`` than the route's."""
        served = None if is_internal(task) else self.service.tasks.kind_of(task)
        if served is None:
            raise HTTPException(404, f"unknown task '{shown_name(task)}'; GET /v1/tasks lists them")
        if served != kind:
            raise HTTPException(400, f"task '{task}' is not a {kind} task; see GET /v1/tasks")

    def at_most(self, field_name: str, value: int | None, limit: int, flag: str) -> None:
        """An invalid-request error (422, or 400 on OpenAI's routes) for a count over a limit of
        the server's (set by ``serve --FLAG``)."""
        problem = over_limit(value, limit, flag)
        if problem is not None:
            error = {"type": "less_than_equal", "loc": ("body", field_name), "msg": problem, "input": value}
            raise RequestValidationError([error])
