"""Capturing a server's answers (``softprompt serve --capture DB``): group commit in front of the
:class:`~softprompt.lifecycle.store.Store`.

A route hands its answers to :meth:`Capture.record` and sends its response only once they are
committed, so a crash (kill -9) at any moment loses no answered request. The answers of requests
finishing together are written in one transaction (while one commit runs, the next ones gather),
on one thread of the capture's own, never the model's worker. When the store fails (disk full,
locked, a database server gone) requests are still answered: the failure is logged once, the
rows lost are counted (``softprompt_capture_failures_total``), and the next batch tries again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa

from softprompt.lifecycle.store import Captured, Store, store_problem

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORE_ERRORS = (sa.exc.SQLAlchemyError, OSError)


class StoreUnavailable(Exception):
    """The store failed an operation that must be durable before it is answered (feedback): 503."""


class Capture:
    """Group-committed capture into ``store``.

    Args:
        store: where answers go.
        rate: the share of requests captured (a seeded draw per request).
        max_rows: keep at most this many requests, dropping the oldest (None: all).
        seed: seeds the sampling draw.
    """

    def __init__(self, store: Store, rate: float = 1.0, max_rows: int | None = None, seed: int = 0):
        self.store, self.rate, self.max_rows = store, rate, max_rows
        self.random = random.Random(seed)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="capture")  # one writer: no lock waits
        self.pending: list[tuple[list[Captured], asyncio.Future]] = []
        self.writer: asyncio.Task | None = None
        self.failed_rows = 0  # answers that could not be stored
        self.failing = False  # the last write failed (logged once until one succeeds)
        self.on_failure: Callable[[int], None] = lambda rows: None

    def sampled(self) -> bool:
        """Whether to capture the next request (``serve --capture-rate``)."""
        return self.rate >= 1.0 or self.random.random() < self.rate

    async def record(self, answers: list[Captured]) -> None:
        """Return once ``answers`` are committed (or their write failed, which is counted)."""
        if not answers:
            return
        done = asyncio.get_running_loop().create_future()
        self.pending.append((answers, done))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write_pending())
        await asyncio.shield(done)  # a caller that goes away still has its answers stored

    async def _write_pending(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            rows = [answer for answers, _ in batch for answer in answers]
            try:
                await self.run(self.store.write, rows, self.max_rows)
                if self.failing:
                    logger.warning("capture store %s: writing again", self.store.target)
                self.failing = False
            except STORE_ERRORS as exc:
                self.failed_rows += len(rows)
                self.on_failure(len(rows))
                if not self.failing:
                    logger.error(
                        "capture store %s failed; requests are still answered but not captured "
                        "(counted in softprompt_capture_failures_total): %s",
                        self.store.target,
                        store_problem(exc),
                    )
                self.failing = True
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def run(self, operation: Callable[..., T], *args: Any) -> T:
        """``operation(*args)`` on the capture's thread (after the writes queued before it)."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, operation, *args)

    async def durable(self, operation: Callable[..., T], *args: Any) -> T:
        """Like :meth:`run`, but a store failure is :class:`StoreUnavailable` (for a 503)."""
        try:
            return await self.run(operation, *args)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"the capture store failed: {store_problem(exc)}; retry shortly") from None

    async def close(self) -> None:
        """Write what is pending, then release the store."""
        if self.writer is not None:
            await self.writer
        self.thread.shutdown(wait=True)
        self.store.close()
