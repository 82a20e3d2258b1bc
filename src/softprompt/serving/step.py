"""What the engine's scheduler and executor pass each other: a :class:`Request` and its
:class:`Status` (the one record of where a request is), a step's :class:`Plan`, and what the
executor did (:class:`Outcome`). See :mod:`softprompt.serving.scheduler` for the rules."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The server is at capacity: the caller should retry later (HTTP 429)."""


class Status(enum.Enum):
    """Where a request is in its life: waiting → running (one-shot kinds) or prefilling → decoding
    (generation) → finished; cancelled (its caller went away) or failed from any state before
    finished."""

    WAITING = "waiting"
    RUNNING = "running"  # a one-shot request in the batch the executor runs now
    PREFILLING = "prefilling"  # generation: its prompt being read, a chunk per step
    DECODING = "decoding"  # generation: in the running decoding batch
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


FINAL = frozenset({Status.FINISHED, Status.CANCELLED, Status.FAILED})


@dataclass(eq=False)
class Request:
    """One request: ``kind`` picks what runs it, ``payload`` is what the executor is handed,
    ``rows`` the batch rows it takes (a classification's texts, a generation's samples)."""

    id: int
    kind: str
    payload: Any
    rows: int = 1
    arrived: float = 0.0
    urgent: bool = False
    status: Status = Status.WAITING
    prompt_tokens: int | None = None  # generation: its prompt's length, once the executor has read it
    prefilled: int = 0  # generation: prompt tokens read so far
    result: Any = None  # what it is answered with: a value, or the exception to raise

    @property
    def unread(self) -> int | None:
        """Prompt tokens still to read (None: not known before the first chunk)."""
        return None if self.prompt_tokens is None else self.prompt_tokens - self.prefilled


@dataclass
class Plan:
    """One step's work, for the executor: it frees ``drop``, runs ``batch`` (one kind, one model
    call), reads each of ``prefill``'s prompts for up to its number of tokens, in order, and all
    of them together for at most ``prefill_budget`` (a prompt's length is known only once the
    executor has rendered and tokenized it, at its first chunk), then decodes
    ``decode_steps`` tokens for every running generation row. ``wait``: nothing is to run before
    that many seconds pass (a batch waiting for company), unless a request arrives."""

    drop: list[Request] = field(default_factory=list)
    batch: list[Request] = field(default_factory=list)
    prefill: list[tuple[Request, int]] = field(default_factory=list)
    prefill_budget: int = 0  # tokens all of ``prefill`` may read together (lengths not known yet)
    decode_steps: int = 0
    wait: float | None = None

    @property
    def empty(self) -> bool:
        return not (self.drop or self.batch or self.prefill or self.decode_steps)


@dataclass
class Outcome:
    """What the executor did: ``results`` answers requests that are done (a value, or the
    exception for that request); ``read`` gives, per generation request that read prompt
    tokens, ``(tokens read this step, its prompt's length)``."""

    results: dict[int, Any] = field(default_factory=dict)
    read: dict[int, tuple[int, int]] = field(default_factory=dict)
    batch_seconds: float = 0.0  # how long the one-shot batch took
    prefill_seconds: float = 0.0  # how long reading prompts took
    decode_seconds: float = 0.0  # how long the decoding slice took
    decoded_steps: int | None = None  # the slice's forward passes actually run (None: all the plan's)
