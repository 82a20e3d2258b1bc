"""Runs the scheduler's plans on the server's model side (:class:`ServiceExecutor`).

A plan's parts run in a fixed order: requests whose callers went away leave the decoding batch,
the one-shot batch runs (classification, scoring, task and version changes: changes therefore
apply before the generation requests of the same step are read), prompts are read, then the
running batch decodes. A failure answers its own part's requests and never the others'.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from softprompt.serving.step import Outcome, Plan, Request


class Generation(Protocol):
    """The running decoding batch, as the executor drives it (the server's
    :class:`~softprompt.serving.service.Service`)."""

    def prefill_generation(
        self, chunks: list[tuple[int, Any, int]], budget: int
    ) -> tuple[dict[int, tuple[int, int]], dict[int, Exception]]: ...

    def advance_generation(self, steps: int) -> dict[int, Any]: ...

    def decoded_steps(self) -> int: ...

    def drop_generation(self, keys: set[int]) -> None: ...

    def generation_keys(self) -> set[Hashable]: ...

    def generation_rows(self) -> int: ...


@dataclass
class ServiceExecutor:
    """``handlers[kind](payloads) -> results`` for the one-shot kinds (a result may be the
    exception that answers that one request); ``generation`` for the continuous kind.
    ``on_batch(kind, rows)`` is told of every model call (metrics)."""

    handlers: dict[str, Callable[[list[Any]], list[Any]]]
    generation: Generation | None = None
    on_batch: Callable[[str, int], None] | None = None
    continuous_kind: str = "generate"

    def run(self, plan: Plan) -> Outcome:
        outcome = Outcome()
        if plan.drop and self.generation is not None:
            self.generation.drop_generation({r.id for r in plan.drop})
        if plan.batch:
            self._run_batch(plan.batch, outcome)
        if self.generation is not None and (plan.prefill or plan.decode_steps):
            self._generate(plan, outcome)
        return outcome

    def _run_batch(self, batch: list[Request], outcome: Outcome) -> None:
        kind = batch[0].kind
        self._told(kind, sum(r.rows for r in batch))
        started = time.perf_counter()
        try:
            results = self.handlers[kind]([r.payload for r in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        outcome.batch_seconds = time.perf_counter() - started
        outcome.results.update((r.id, result) for r, result in zip(batch, results, strict=True))

    def _generate(self, plan: Plan, outcome: Outcome) -> None:
        generation = self.generation
        chunks = [(r.id, r.payload, tokens) for r, tokens in plan.prefill]
        started = time.perf_counter()
        try:
            read, refused = generation.prefill_generation(chunks, plan.prefill_budget)
        except Exception as exc:  # the prompts being read fail; the rows already decoding go on
            keys = {key for key, _, _ in chunks}
            generation.drop_generation(keys)
            outcome.results.update(dict.fromkeys(keys, exc))
            read, refused = {}, {}
        outcome.prefill_seconds = time.perf_counter() - started
        outcome.read.update(read)
        outcome.results.update(refused)
        if not plan.decode_steps:
            return
        running = generation.generation_keys()
        if not running:
            return
        self._told(self.continuous_kind, generation.generation_rows())
        started = time.perf_counter()
        try:
            outcome.results.update(generation.advance_generation(plan.decode_steps))
            outcome.decode_seconds = time.perf_counter() - started
            outcome.decoded_steps = generation.decoded_steps()
        except Exception as exc:  # every running row fails with it
            generation.drop_generation(set(running))
            outcome.results.update(dict.fromkeys(running, exc))

    def _told(self, kind: str, rows: int) -> None:
        if self.on_batch is not None:
            self.on_batch(kind, rows)
