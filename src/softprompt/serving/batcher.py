"""A bounded queue in front of the model, and one worker that batches what is waiting.

Requests wait at most ``max_wait`` seconds for company: classification texts of *any* tasks that
arrive together go through the model as one mixed batch. The queue is bounded, so a server under
more load than it can take answers 429 at once instead of hanging. Model calls run one at a time
in a worker thread, so the event loop keeps answering (health checks, 429s) while it computes.

Long jobs (generation) are :class:`Stepwise`: the worker advances them a slice at a time and runs
whatever else is waiting between slices, so a long generation never starves classification. Jobs
whose caller went away (disconnected, timed out) are dropped before they run, and a generation
whose callers have all gone is abandoned between slices.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stepwise:
    """A kind of job computed in slices: ``start(payloads) -> state``, ``advance(state) -> done``,
    ``finish(state) -> results`` (one per payload)."""

    start: Callable[[list[Any]], Any]
    advance: Callable[[Any], bool]
    finish: Callable[[Any], list[Any]]


class QueueFull(Exception):
    """The server is at capacity: the caller should retry later (HTTP 429)."""


@dataclass
class Job:
    """One request: ``kind`` picks the handler; ``size`` is how many batch rows it takes."""

    kind: str
    payload: Any
    size: int = 1
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


class Batcher:
    """Collects jobs and runs them in batches with ``handlers[kind](payloads) -> results``."""

    def __init__(
        self,
        handlers: dict[str, Callable[[list[Any]], list[Any]] | Stepwise],
        queue_size: int = 256,
        max_batch: int = 32,
        max_wait: float = 0.005,
    ):
        self.handlers = handlers
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._worker: asyncio.Task | None = None
        self._held: Job | None = None  # a job that did not fit the last batch
        self._waiting: collections.deque[list[Job]] = collections.deque()  # stepwise batches not started
        self._active: tuple[list[Job], Any] | None = None  # the stepwise batch being advanced

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every job already queued, then stop."""
        await self.queue.join()
        if self._worker:
            self._worker.cancel()

    async def submit(self, kind: str, payload: Any, size: int = 1) -> Any:
        """Queue a job and wait for its result (raises :class:`QueueFull` when full)."""
        job = Job(kind, payload, size, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return await job.future

    async def _next_batch(self) -> list[Job]:
        first = self._held or await self.queue.get()
        self._held = None
        batch, rows = [first], first.size
        deadline = asyncio.get_running_loop().time() + self.max_wait
        # Only jobs of the same kind share a batch; the first other one waits for the next batch.
        while rows < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                break
            if job.kind != first.kind or rows + job.size > self.max_batch:
                self._held = job
                break
            batch.append(job)
            rows += job.size
        return batch

    async def _run(self) -> None:
        while True:
            busy = self._active is not None or self._waiting
            if not busy or self._held is not None or not self.queue.empty():
                batch = self._live(await self._next_batch())
                if batch and isinstance(self.handlers[batch[0].kind], Stepwise):
                    self._waiting.append(batch)
                elif batch:
                    await self._run_once(batch)
            await self._advance()

    def _live(self, batch: list[Job]) -> list[Job]:
        """The jobs of ``batch`` whose callers still wait; the others are done with now."""
        live = [job for job in batch if not job.future.done()]
        for _ in range(len(batch) - len(live)):
            self.queue.task_done()
        return live

    async def _run_once(self, batch: list[Job]) -> None:
        handler = self.handlers[batch[0].kind]
        try:
            results = await asyncio.get_running_loop().run_in_executor(None, handler, [job.payload for job in batch])
            self._answer(batch, results)
        except Exception as exc:  # a failure answers its own requests, never stops the worker
            self._fail(batch, exc)

    async def _advance(self) -> None:
        """Start the next stepwise batch if none is active, then advance the active one a slice."""
        loop = asyncio.get_running_loop()
        if self._active is None and self._waiting:
            batch = self._live(self._waiting.popleft())
            if batch:
                steps = self.handlers[batch[0].kind]
                try:
                    state = await loop.run_in_executor(None, steps.start, [job.payload for job in batch])
                    self._active = (batch, state)
                except Exception as exc:  # a failure answers its own requests, never stops the worker
                    self._fail(batch, exc)
        if self._active is None:
            return
        batch, state = self._active
        if all(job.future.done() for job in batch):  # every caller went away: stop computing
            self._active = None
            self._live(batch)
            return
        steps = self.handlers[batch[0].kind]
        try:
            finished = await loop.run_in_executor(None, steps.advance, state)
            results = steps.finish(state) if finished else None
        except Exception as exc:
            self._active = None
            self._fail(batch, exc)
            return
        if finished:
            self._active = None
            self._answer(batch, results)

    def _answer(self, batch: list[Job], results: list[Any]) -> None:
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
            self.queue.task_done()

    def _fail(self, batch: list[Job], exc: Exception) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(exc)
            self.queue.task_done()
