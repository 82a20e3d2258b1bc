"""The engine's loop: schedule → execute → update, and the asyncio side that only enqueues,
cancels and delivers.

Requests wait in the :class:`~softprompt.serving.scheduler.Scheduler`, which is bounded: a server
under more load than it can take answers 429 at once instead of hanging. The executor runs each
step's plan in a worker thread, one step at a time, so the event loop keeps answering (health
checks, 429s) while the model computes. A request whose caller went away (disconnected, timed
out) is cancelled: forgotten while it waits, taken out of the running batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from softprompt.serving.scheduler import Scheduler
from softprompt.serving.step import Outcome, Plan, Request


class Executor(Protocol):
    """Runs a :class:`Plan` on the backbone (in the worker thread) and says what it did."""

    def run(self, plan: Plan) -> Outcome: ...


class Engine:
    """One loop over a scheduler and an executor; :meth:`submit` is all a route calls."""

    def __init__(self, scheduler: Scheduler, executor: Executor):
        self.scheduler, self.executor = scheduler, executor
        self._futures: dict[int, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Answer every request already queued, then stop."""
        while not self.scheduler.idle() and self._worker is not None and not self._worker.done():
            await asyncio.sleep(0.01)
        if self._worker:
            self._worker.cancel()

    async def submit(self, kind: str, payload: Any, rows: int = 1) -> Any:
        """Queue a request and wait for its answer (raises
        :class:`~softprompt.serving.scheduler.QueueFull` when the queue is full). Cancelling the
        caller's task cancels the request."""
        loop = asyncio.get_running_loop()
        request = self.scheduler.add(kind, payload, rows, loop.time())
        future = self._futures[request.id] = loop.create_future()
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            self.scheduler.cancel(request.id)
            self._wake.set()
            raise
        finally:
            self._futures.pop(request.id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            plan = self.scheduler.schedule(loop.time())
            if plan.empty:
                with contextlib.suppress(TimeoutError):  # until a request arrives, or a batch's wait is up
                    await asyncio.wait_for(self._wake.wait(), plan.wait)
                continue
            try:
                outcome = await loop.run_in_executor(None, self.executor.run, plan)
                answered = self.scheduler.update(plan, outcome)
            except Exception as exc:  # a failure answers its own requests, never stops the engine
                answered = self.scheduler.fail(plan, exc)
            self._deliver(answered)

    def _deliver(self, answered: list[Request]) -> None:
        for request in answered:
            future = self._futures.get(request.id)
            if future is None or future.done():
                continue
            if isinstance(request.result, Exception):
                future.set_exception(request.result)
            else:
                future.set_result(request.result)
