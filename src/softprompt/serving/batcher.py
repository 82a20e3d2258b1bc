"""A bounded queue in front of the model, and one worker that batches what is waiting.

Requests wait at most ``max_wait`` seconds for company: classification texts of *any* tasks that
arrive together go through the model as one mixed batch. The queue is bounded, so a server under
more load than it can take answers 429 at once instead of hanging. Model calls run one at a time
in a worker thread, so the event loop keeps answering (health checks, 429s) while it computes.

Generation is :class:`Continuous` (iteration-level scheduling, as in vLLM and TGI): one running
decoding batch that the worker advances a slice at a time: one token while nothing else waits
(a finished job is answered, and a new one joins, at the next step), ``busy_slice`` tokens while
jobs of another kind wait (decoding keeps that share of the worker between their batches).
Between slices it runs whatever classification is waiting, lets new generation jobs join the
running batch (up to ``max_batch`` rows), and answers each job the moment its slice ends, so a
short generation never waits behind a long one. Jobs whose caller went away (disconnected,
timed out) are dropped before they run, or taken out of the running batch between slices.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Continuous:
    """A kind of job decoded in one running batch that jobs join and leave between slices."""

    # (key, payload) pairs join the running batch; the ones refused, by key, with the error to answer
    admit: Callable[[list[tuple[int, Any]]], dict[int, Exception]]
    advance: Callable[[int], dict[int, Any]]  # a slice of that many tokens; the finished jobs' results by key
    drop: Callable[[set[int]], None]  # take jobs out (their callers went away)
    rows: Callable[[Any], int]  # the batch rows a payload takes


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
        handlers: dict[str, Callable[[list[Any]], list[Any]] | Continuous],
        queue_size: int = 256,
        max_batch: int = 32,
        max_wait: float = 0.005,
        on_batch: Callable[[str, int], None] | None = None,
        urgent: frozenset[str] = frozenset(),
        busy_slice: int = 4,
    ):
        self.handlers = handlers
        self.busy_slice = busy_slice  # tokens per decoding slice while other kinds of jobs wait
        # The one kind decoded in a running batch (generation), found once rather than per loop.
        self._continuous = next(((kind, h) for kind, h in handlers.items() if isinstance(h, Continuous)), (None, None))
        # Kinds served before any waiting batch (task changes: a new task answers after one batch,
        # not after the whole queue); still one at a time, between batches.
        self.urgent = urgent
        self._order = itertools.count()  # first come, first served within a rank
        self.on_batch = on_batch  # told (kind, rows) of every model call: metrics
        self.queue: asyncio.PriorityQueue[tuple[int, int, Job]] = asyncio.PriorityQueue(maxsize=queue_size)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._worker: asyncio.Task | None = None
        self._held: Job | None = None  # a job that did not fit the last batch
        self._joining: collections.deque[Job] = collections.deque()  # continuous jobs not yet admitted
        self._running: dict[int, Job] = {}  # continuous jobs in the running batch, by key
        self._rows = 0  # batch rows the running jobs take
        self._waiting: collections.Counter[str] = collections.Counter()  # queued jobs by kind

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
            self.queue.put_nowait((0 if kind in self.urgent else 1, next(self._order), job))
        except asyncio.QueueFull:
            raise QueueFull from None
        self._waiting[kind] += 1
        return await job.future

    async def _get(self, timeout: float | None = None) -> Job:
        job = (await (self.queue.get() if timeout is None else asyncio.wait_for(self.queue.get(), timeout)))[2]
        self._waiting[job.kind] -= 1
        return job

    async def _next_batch(self) -> list[Job]:
        first = self._held or await self._get()
        self._held = None
        batch, rows = [first], first.size
        deadline = asyncio.get_running_loop().time() + self.max_wait
        # Only jobs of the same kind share a batch; the first other one waits for the next batch.
        while rows < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                job = await self._get(timeout)
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
            busy = bool(self._running or self._joining)
            if not busy or self._held is not None or not self.queue.empty():
                batch = self._live(await self._next_batch())
                if batch and isinstance(self.handlers[batch[0].kind], Continuous):
                    self._joining.extend(batch)
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
        if self.on_batch is not None:
            self.on_batch(batch[0].kind, sum(job.size for job in batch))
        try:
            results = await asyncio.get_running_loop().run_in_executor(None, handler, [job.payload for job in batch])
            self._answer(batch, results)
        except Exception as exc:  # a failure answers its own requests, never stops the worker
            self._fail(batch, exc)

    async def _advance(self) -> None:
        """Drop running jobs whose callers went away, admit waiting ones that fit, then advance the
        running batch a slice and answer the jobs that finished."""
        kind, handler = self._continuous
        if handler is None:
            return
        loop = asyncio.get_running_loop()
        gone = {key for key, job in self._running.items() if job.future.done()}
        if gone:
            await loop.run_in_executor(None, handler.drop, gone)
            self._settle(gone)
        joining = []
        while self._joining:
            job = self._joining[0]
            alone = not self._running and not joining  # a job over max_batch rows still runs, alone
            if not alone and self._rows + handler.rows(job.payload) > self.max_batch:
                break
            self._joining.popleft()
            if job.future.done():
                self.queue.task_done()
                continue
            joining.append(job)
            self._rows += handler.rows(job.payload)
        if joining:
            try:
                refused = await loop.run_in_executor(None, handler.admit, [(id(job), job.payload) for job in joining])
                self._running.update((id(job), job) for job in joining)
                for key, error in refused.items():
                    self._answer([self._running[key]], [error])
                    self._settle({key}, answered=True)
            except Exception as exc:  # a failure answers its own requests, never stops the worker
                self._rows -= sum(handler.rows(job.payload) for job in joining)
                self._fail(joining, exc)
        if not self._running:
            return
        if self.on_batch is not None:
            self.on_batch(kind, self._rows)
        # One token while nothing else waits: a finished job is answered, and a waiting one joins,
        # at the next step (with 4, short requests behind a long one were answered in 0.9 s rather
        # than 0.7 s in one benchmarks/serving.py comparison). busy_slice while other kinds wait,
        # so that decoding keeps its share of the worker between their batches.
        others = self._held is not None or any(n for k, n in self._waiting.items() if k != kind)
        try:
            finished = await loop.run_in_executor(None, handler.advance, self.busy_slice if others else 1)
        except Exception as exc:
            running = list(self._running.values())
            await loop.run_in_executor(None, handler.drop, set(self._running))
            self._running, self._rows = {}, 0
            self._fail(running, exc)
            return
        for key, result in finished.items():
            job = self._running[key]
            self._answer([job], [result])
            self._settle({key}, answered=True)

    def _settle(self, keys: set[int], answered: bool = False) -> None:
        """Forget running jobs that left the batch (``answered``: their queue slot is done already)."""
        for key in keys:
            job = self._running.pop(key)
            self._rows -= self._continuous[1].rows(job.payload)
            if not answered:
                self.queue.task_done()

    def _answer(self, batch: list[Job], results: list[Any]) -> None:
        """Each job its result; a handler answers one job of a batch with an error by returning
        the exception as that job's result."""
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            self.queue.task_done()

    def _fail(self, batch: list[Job], exc: Exception) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(exc)
            self.queue.task_done()
