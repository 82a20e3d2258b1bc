"""The generation side of the server: what a served writer is, one caller's decoding job, and a
shared decoding batch that reports each job's new tokens as they come (for streaming).

Every job keeps its own soft prompt, settings and seed (:class:`RequestSampler`), so what it gets
does not depend on what shared its batch. Temperature 0 is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.config import GenConfig
from softprompt.generation.sampling import RequestSampler, SampleRequest
from softprompt.prompts import Template

Listener = Callable[[int, list[int], bool], None]  # (sample index, new token ids, finished)


@dataclass
class Writer:
    """A served generation task: its soft prompt (put before the text), the template that
    renders a request's text (None: the text is the prompt itself, as for detox LM prompts),
    and the decoding defaults its artifact recorded."""

    soft: torch.Tensor | None
    template: Template | None = None
    demonstrations: str = ""
    defaults: GenConfig = field(default_factory=GenConfig)

    def render(self, text: str) -> str:
        if self.template is None:
            return text
        return self.demonstrations + self.template.without_soft().render({"text": text})

    def describe(self) -> dict[str, Any]:
        return {
            "soft_tokens": 0 if self.soft is None else int(self.soft.shape[0]),
            **({"template": self.template.source} if self.template is not None else {}),
        }


@dataclass
class WriteJob:
    """One caller's decoding job; ``None`` settings take the writer's defaults."""

    task: str | None
    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    samples: int = 1
    seed: int = 0
    listener: Listener | None = None  # told of new tokens after every decoding slice


def sample_request(job: WriteJob, writer: Writer | None) -> SampleRequest:
    """The sampler's request for ``job``: its settings, else the writer's, else plain sampling."""
    defaults = writer.defaults if writer is not None else GenConfig(max_new_tokens=30, do_sample=True, top_p=0.9)
    greedy = 0.0 if not defaults.do_sample else defaults.temperature
    return SampleRequest(
        writer.render(job.prompt) if writer is not None else job.prompt,
        writer.soft if writer is not None else None,
        job.samples,
        job.max_new_tokens or defaults.max_new_tokens,
        job.top_p if job.top_p is not None else defaults.top_p,
        job.temperature if job.temperature is not None else greedy,
        job.seed,
    )


class Writing:
    """A decoding batch in progress, with what each job's listener has been told so far."""

    def __init__(self, backbone: Backbone, jobs: list[WriteJob], writers: dict[str, Writer]):
        self.jobs = jobs
        requests = [sample_request(job, writers.get(job.task) if job.task else None) for job in jobs]
        self.sampler = RequestSampler(backbone, requests)
        self.sent = [0] * len(self.sampler.tokens)
        self.closed = [False] * len(self.sampler.tokens)

    def advance(self, steps: int) -> bool:
        finished = self.sampler.advance(steps)
        self.report(finished)
        return finished

    def report(self, finished: bool) -> None:
        """Tell each listener the tokens decoded since the last report."""
        sampler = self.sampler
        for job, span in zip(self.jobs, sampler.spans, strict=True):
            if job.listener is None:
                continue
            for sample, row in enumerate(range(span.start, span.stop)):
                if self.closed[row]:
                    continue
                end = min(sampler.step, int(sampler.lengths[row]))
                done = finished or bool(sampler.done[row])
                if end > self.sent[row] or done:
                    job.listener(sample, sampler.tokens[row, self.sent[row] : end].tolist(), done)
                    self.sent[row], self.closed[row] = max(self.sent[row], end), done

    def results(self) -> list[list[list[int]]]:
        return self.sampler.results()
