"""A bounded queue in front of the model, and one worker that batches what is waiting.

Requests wait at most ``max_wait`` seconds for company: classification texts of *any* tasks that
arrive together go through the model as one mixed batch. The queue is bounded, so a server under
more load than it can take answers 429 at once instead of hanging. Model calls run one at a time
in a worker thread, so the event loop keeps answering (health checks, 429s) while it computes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
        handlers: dict[str, Callable[[list[Any]], list[Any]]],
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
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            handler = self.handlers[batch[0].kind]
            try:
                results = await loop.run_in_executor(None, handler, [job.payload for job in batch])
                for job, result in zip(batch, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
            except Exception as exc:  # a failure answers its own requests, never stops the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                for _ in batch:
                    self.queue.task_done()
