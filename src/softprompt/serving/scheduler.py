"""The engine's state and its one decision: which work runs next.

Every request the worker will run is a :class:`Request` with a :class:`Status`, held in one
place (:attr:`Scheduler.requests`, and the ``waiting``/``running`` queues that order it).
:meth:`Scheduler.schedule` reads that state and returns a :class:`Plan`: at most one batch of a
one-shot kind (classification rows, scoring, task changes), the prompt tokens each generation
request may read this step (prefill chunks), and how many tokens the running decoding batch
advances, all under a budget of rows and of tokens per step. An executor runs the plan on the
backbone and answers with an :class:`Outcome`; :meth:`Scheduler.update` moves the requests on.
Nothing here touches a model, a thread or an event loop (vLLM's v1 scheduler has this shape:
``schedule()`` → execute → ``update_from_output()``), so it is tested with a fake executor.

The rules, in the order :meth:`Scheduler.schedule` applies them:

- requests whose callers went away leave at once: ``drop`` tells the executor which running
  requests to free;
- a one-shot batch takes the oldest waiting request and every other waiting one of its kind, up
  to ``max_batch`` rows; *urgent* kinds (task changes) go before any other, one kind at a time
  in the order they came. A lone batch waits up to ``max_wait`` after its oldest request arrived
  for company, unless generation is running (then the decoding slice is the wait);
- waiting generation requests are admitted while the running ones' rows leave room (a request
  larger than ``max_batch`` still runs, alone); each prefilling request may read up to what the
  step's token budget leaves after one token per decoding row, so a long prompt is read in
  chunks and never stalls decoding for longer than a chunk;
- the running batch decodes one token while no other kind of request runs or waits (a finished
  request is answered, and a new one joins, at the next step; a long prompt goes on with its
  next chunk); beside a one-shot batch, or while one waits, as many tokens as take about half
  as long as the last one-shot batch took (at least ``busy_slice``): under both loads,
  generation gets a third of the worker.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from typing import Any

from softprompt.serving.step import FINAL, Outcome, Plan, QueueFull, Request, Status


class Scheduler:
    """The engine's requests and the plan of each step (see the module docstring).

    Args:
        continuous: kinds decoded in the running batch (generation); the others run as batches.
        urgent: kinds that go before any waiting batch (task and version changes).
        max_batch: rows per one-shot batch, and rows of the running decoding batch.
        max_wait: seconds a lone batch waits for company after its oldest request arrived.
        queue_size: requests that may wait; :meth:`add` refuses more (:class:`QueueFull`).
        token_budget: tokens per step: one per decoding row, the rest for prefill chunks.
        busy_slice: tokens decoded per step while other work waits.
        max_token_wait: seconds a decoding row may wait for its next token while prompts are read
            (None: no limit but the token budget). Chunks are sized to it from the speeds the
            executor measured: a chunk costs a forward pass (about a decoding step) and then a
            rate per prompt token, measured on the newest chunk of at least ``MIN_CHUNK`` tokens.
    """

    def __init__(
        self,
        continuous: Iterable[str] = (),
        urgent: Iterable[str] = (),
        max_batch: int = 32,
        max_wait: float = 0.005,
        queue_size: int = 256,
        token_budget: int = 256,
        busy_slice: int = 4,
        max_token_wait: float | None = None,
    ):
        self.continuous, self.urgent = frozenset(continuous), frozenset(urgent)
        self.max_batch, self.max_wait, self.queue_size = max_batch, max_wait, queue_size
        self.token_budget, self.busy_slice, self.max_token_wait = token_budget, busy_slice, max_token_wait
        self.seconds_per_prompt_token: float | None = None  # measured, over a forward pass's cost
        self.seconds_per_decode_step: float | None = None
        self.batch_seconds: float | None = None  # the last one-shot batch's time
        self.requests: dict[int, Request] = {}  # every request not yet answered, by id
        self.waiting: collections.deque[Request] = collections.deque()  # in arrival order
        self.running: list[Request] = []  # generation requests prefilling or decoding, in admission order
        self._ids = itertools.count()

    # ---- what the asyncio layer calls -------------------------------------------------------

    def add(self, kind: str, payload: Any, rows: int = 1, now: float = 0.0) -> Request:
        """Queue a request (raises :class:`QueueFull` when ``queue_size`` already wait)."""
        if len(self.waiting) >= self.queue_size:
            raise QueueFull
        request = Request(next(self._ids), kind, payload, rows, now, kind in self.urgent)
        self.requests[request.id] = request
        self.waiting.append(request)
        return request

    def cancel(self, request_id: int) -> None:
        """The caller went away: a waiting request is forgotten now, a generation request leaves
        the batch at the next step (:attr:`Plan.drop`); a one-shot request already running is
        answered to no one."""
        request = self.requests.get(request_id)
        if request is None or request.status in FINAL:
            return
        if request.status is Status.WAITING:
            self.waiting.remove(request)
            del self.requests[request_id]
        request.status = Status.CANCELLED

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    @property
    def decoding_rows(self) -> int:
        return sum(r.rows for r in self.running if r.status is Status.DECODING)

    # ---- the plan ---------------------------------------------------------------------------

    def schedule(self, now: float) -> Plan:
        """The next step's plan (see the module docstring for the rules)."""
        plan = Plan(drop=[r for r in self.running if r.status is Status.CANCELLED])
        if plan.drop:
            self.running = [r for r in self.running if r.status is not Status.CANCELLED]
            for request in plan.drop:
                self.requests.pop(request.id, None)  # (gone already if its answer came meanwhile)
        generating = bool(self.running) or any(r.kind in self.continuous for r in self.waiting)
        plan.batch, plan.wait = self._one_shot(now, generating)
        self._admit()
        plan.prefill, plan.prefill_budget = self._chunks()
        if self.running:  # a batch run in this step, or one waiting, shares the worker's time
            shared = bool(plan.batch) or any(r.kind not in self.continuous for r in self.waiting)
            plan.decode_steps = self._fair_slice() if shared else 1
        return plan

    def _one_shot(self, now: float, generating: bool) -> tuple[list[Request], float | None]:
        """The one-shot batch to run now, or none and how long to wait for company."""
        candidates = [r for r in self.waiting if r.kind not in self.continuous]
        if not candidates:
            return [], None
        urgent = [r for r in candidates if r.urgent]
        head = (urgent or candidates)[0]
        batch, rows = [], 0
        for request in urgent or candidates:
            if request.kind != head.kind:
                if request.urgent:  # changes keep their order: stop at the first of another kind
                    break
                continue
            if batch and rows + request.rows > self.max_batch:
                break
            batch.append(request)
            rows += request.rows
        full = rows >= self.max_batch or len(batch) < sum(r.kind == head.kind for r in candidates)
        waited = now - head.arrived
        if not (full or head.urgent or generating or waited >= self.max_wait):
            return [], self.max_wait - waited
        for request in batch:
            self.waiting.remove(request)
            request.status = Status.RUNNING
        return batch, None

    def _admit(self) -> None:
        """Waiting generation requests join the running ones while their rows fit."""
        rows = sum(r.rows for r in self.running)
        for request in [r for r in self.waiting if r.kind in self.continuous]:
            if self.running and rows + request.rows > self.max_batch:
                break  # first come, first served: a later smaller one does not pass it
            self.waiting.remove(request)
            request.status = Status.PREFILLING
            self.running.append(request)
            rows += request.rows

    def _chunks(self) -> tuple[list[tuple[Request, int]], int]:
        """Prompt tokens each prefilling request may read this step, and all of them together:
        the token budget after one token per decoding row, and no more than the decoding rows'
        wait allows (:meth:`_time_budget`), in admission order (at least one token, so a batch
        full of decoding rows still makes progress on its prompts). A request whose length is
        not known yet may read up to all that is left; the executor stops at the total."""
        budget = max(min(self.token_budget - self.decoding_rows, self._time_budget()), 1)
        left, chunks = budget, []
        for request in self.running:
            if request.status is not Status.PREFILLING or left <= 0:
                continue
            allowed = left if request.unread is None else min(left, request.unread)
            chunks.append((request, allowed))
            if request.unread is not None:
                left -= allowed
        return chunks, budget

    def _time_budget(self) -> int | float:
        """Prompt tokens that fit in ``max_token_wait`` beside a decoding step, at the measured
        speeds (no limit while nothing decodes; ``FIRST_CHUNK`` before a rate was measured)."""
        rate, step = self.seconds_per_prompt_token, self.seconds_per_decode_step or 0.0
        if self.max_token_wait is None or not self.decoding_rows:
            return float("inf")
        if rate is None:
            return FIRST_CHUNK
        # The rows wait for the chunk's forward pass (about a step's cost, then its tokens) and
        # their own step.
        return max(int((self.max_token_wait - 2 * step) / rate), MIN_CHUNK)

    # ---- what the executor did --------------------------------------------------------------

    def update(self, plan: Plan, outcome: Outcome) -> list[Request]:
        """Move the plan's requests on by the executor's ``outcome``; the requests answered now
        (their ``result`` set), which leave the scheduler."""
        self._measure(plan, outcome)
        for request_id, (read, length) in outcome.read.items():
            request = self.requests.get(request_id)
            if request is None:
                continue
            request.prompt_tokens, request.prefilled = length, request.prefilled + read
            if request.status is Status.PREFILLING and request.prefilled >= length:
                request.status = Status.DECODING
        answered = []
        for request_id, result in outcome.results.items():
            request = self.requests.pop(request_id, None)
            if request is None or request.status is Status.CANCELLED:  # no one waits for it
                continue
            request.result = result
            request.status = Status.FAILED if isinstance(result, Exception) else Status.FINISHED
            answered.append(request)
        if answered:
            gone = {r.id for r in answered}
            self.running = [r for r in self.running if r.id not in gone]
        return answered

    def _fair_slice(self) -> int:
        """Tokens to decode beside one-shot work: about half as long as the last one-shot batch
        took (a third of the worker for generation, two for the batches, whose requests then
        wait at most about 1.5 times as long as alone), at least ``busy_slice``."""
        if self.batch_seconds is None or not self.seconds_per_decode_step:
            return self.busy_slice
        share = GENERATION_SHARE * self.batch_seconds / self.seconds_per_decode_step
        return max(self.busy_slice, min(round(share), MAX_SLICE))

    def _measure(self, plan: Plan, outcome: Outcome) -> None:
        """Keep the newest step's speeds, which chunks are sized by (a long prompt's later chunks
        cost more, attending to more: the newest is the best guess of the next)."""
        # Per step actually decoded: a slice whose rows all finished early took less time for
        # fewer steps, and dividing by the planned ones made the next slices ever longer.
        steps = plan.decode_steps if outcome.decoded_steps is None else outcome.decoded_steps
        if steps and outcome.decode_seconds > 0:
            self.seconds_per_decode_step = outcome.decode_seconds / steps
        read = sum(tokens for tokens, _ in outcome.read.values())
        if read >= MIN_CHUNK and outcome.prefill_seconds > 0:
            # Over the forward pass's own cost: divided among the tokens, it made a few short
            # prompts look dear per token, and their budget then read one prompt per step.
            # (A read of a handful of tokens is all fixed cost: it says nothing of the rate.)
            fixed = min(self.seconds_per_decode_step or 0.0, 0.75 * outcome.prefill_seconds)
            self.seconds_per_prompt_token = (outcome.prefill_seconds - fixed) / read
        if plan.batch and outcome.batch_seconds > 0:
            self.batch_seconds = outcome.batch_seconds

    def fail(self, plan: Plan, error: Exception) -> list[Request]:
        """The executor raised: every request of the plan's batch, and every running one, is
        answered with ``error`` (a failure answers its own requests, never stops the engine)."""
        failed = {r.id: error for r in plan.batch}
        failed.update((r.id, error) for r in self.running if r.status is not Status.CANCELLED)
        return self.update(plan, Outcome(results=failed))

    def idle(self) -> bool:
        """Nothing waits or runs."""
        return not self.requests


MIN_CHUNK = 16  # prompt tokens a step reads at least, however slow: a long prompt still moves on
# Prompt tokens read beside decoding rows before any speed is measured: a few short prompts
# together, or a long prompt's first chunk (about 0.3 s with smollm2-135m on 2 CPU cores).
FIRST_CHUNK = 64
MAX_SLICE = 64  # tokens decoded at most between two one-shot batches
GENERATION_SHARE = 0.5  # decoding time beside one-shot work, per second of one-shot batch
