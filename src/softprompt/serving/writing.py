"""The generation side of the server: what a served writer is, one caller's decoding job, and the
running decoding batch that jobs join and leave between steps, reporting each job's new tokens
as they come (for streaming).

Every job keeps its own soft prompt, settings and seed (:class:`~softprompt.generation.running.RunningBatch`),
so what it gets does not depend on what shared its batch. Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from softprompt.backbones import Backbone
from softprompt.config import GenConfig
from softprompt.generation.prefill import PartialPrefill
from softprompt.generation.running import Member, RunningBatch
from softprompt.generation.sampling import Prompt, SampleRequest, prompt_ids
from softprompt.generation.scoring import TokenScores, score_tokens, split_special
from softprompt.methods.row_adapters import RowAdapter, RowAdapters
from softprompt.prompts import Template
from softprompt.tasks.fewshot import SimilarDemonstrations

if TYPE_CHECKING:
    from softprompt.serving.metrics import ServerMetrics

Listener = Callable[[int, list[int], bool], None]  # (sample index, new token ids, finished)


_IDS_GO_HERE = "\x00ids\x00"  # where a token-id prompt goes in a rendered template (no text has it)


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


@dataclass
class Writer:
    """A served generation task: its soft prompt (put before the text), the template that
    renders a request's text (None: the text is the prompt itself, as for detox LM prompts),
    and the decoding defaults its artifact recorded."""

    soft: torch.Tensor | None
    template: Template | None = None
    demonstrations: str = ""
    defaults: GenConfig = field(default_factory=GenConfig)
    chooser: SimilarDemonstrations | None = None  # few-shot pairs chosen per request instead
    row_adapter: RowAdapter | None = None  # a LoRA or IA3 task's weights, applied to its rows
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # prefix tuning's keys/values, per layer

    def render(self, prompt: Prompt, tokenizer: Any = None) -> Prompt:
        """What the model reads after the soft prompt: a text rendered by the template; token ids
        (``tokenizer`` needed) put where the template's ``{text}`` goes, the template's own text
        tokenized around them with no special token added."""
        if self.template is None:
            return prompt
        demos = self.demonstrations
        if self.chooser:  # demonstrations chosen by likeness to the input's text
            text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
            demos = self.chooser.for_input({"text": text})
        if isinstance(prompt, str):
            return demos + self.template.without_soft().render({"text": prompt})
        before, _, after = (demos + self.template.without_soft().render({"text": _IDS_GO_HERE})).partition(_IDS_GO_HERE)
        return _plain_ids(tokenizer, before) + list(prompt) + _plain_ids(tokenizer, after)

    def describe(self) -> dict[str, Any]:
        return {
            "soft_tokens": 0 if self.soft is None else int(self.soft.shape[0]),
            **({"template": self.template.source} if self.template is not None else {}),
        }


@dataclass
class WriteJob:
    """One caller's decoding job; ``None`` settings take the writer's defaults."""

    task: str | None
    prompt: Prompt
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    samples: int = 1
    seed: int = 0
    listener: Listener | None = None  # told of new tokens after every decoding slice
    created: float = field(default_factory=time.perf_counter)  # arrival, for the time to first token
    stop: tuple[str, ...] = ()  # a sample ends once its text holds one of these (not shown)
    rendered: bool = False  # the prompt is final (rendered by the route): no task template


@dataclass
class ScoreJob:
    """Score one choice's text for ``logprobs``/``echo``: the generated ids after the task's
    rendered prompt, and with ``echo`` the prompt's own tokens too."""

    task: str
    prompt: Prompt
    generated: list[int]
    top: int = 0  # how many most likely tokens to report at each place
    echo: bool = False
    rendered: bool = False  # the prompt is already rendered by the task's template


@dataclass
class Scored:
    """A :class:`ScoreJob`'s answer: the prompt as the model read it, and the scored tokens."""

    rendered: str
    scores: TokenScores


def score_job(backbone: Backbone, job: ScoreJob, writer: Writer, adapters: RowAdapters) -> Scored:
    """The log-probabilities a :class:`ScoreJob` asks for, from one forward pass (``adapters``:
    the hooks that apply the writer's LoRA or IA3 weights, if it has some; a prefix-tuned
    writer's rows continue its prefix)."""
    rendered = job.prompt if job.rendered else writer.render(job.prompt, backbone.tokenizer)
    if isinstance(rendered, str):
        lead, prompt_ids = split_special(backbone, rendered)
    else:  # token ids: read as they are
        lead, prompt_ids, rendered = [], rendered, backbone.tokenizer.decode(rendered)
    with adapters.selected([writer.row_adapter]):
        if job.echo:
            scores = score_tokens(backbone, writer.soft, lead, prompt_ids + job.generated, job.top, writer.prefix)
        else:
            scores = score_tokens(backbone, writer.soft, lead + prompt_ids, job.generated, job.top, writer.prefix)
    return Scored(rendered, scores)


def sample_request(job: WriteJob, writer: Writer | None, tokenizer: Any = None) -> SampleRequest:
    """The sampler's request for ``job``: its settings, else the writer's, else plain sampling."""
    defaults = writer.defaults if writer is not None else GenConfig(max_new_tokens=30, do_sample=True, top_p=0.9)
    greedy = 0.0 if not defaults.do_sample else defaults.temperature
    return SampleRequest(
        writer.render(job.prompt, tokenizer) if writer is not None and not job.rendered else job.prompt,
        writer.soft if writer is not None else None,
        job.samples,
        job.max_new_tokens or defaults.max_new_tokens,
        job.top_p if job.top_p is not None else defaults.top_p,
        job.temperature if job.temperature is not None else greedy,
        job.seed,
        job.stop,
        row_adapter=writer.row_adapter if writer is not None else None,
        prefix=writer.prefix if writer is not None else None,
        prompt_key=writer_cache_key(job.task) if writer is not None and writer.soft is not None else None,
    )


def writer_cache_key(task: str) -> tuple[str, str]:
    """A generation task's key in the server's prompt caches (classifiers' keys are their names)."""
    return ("write", task)


def visible_text(text: str, stop: tuple[str, ...], finished: bool) -> str:
    """What may be shown of a sample's text: cut before its first stop string; while it is still
    being written, also without an ending that could be the start of one (so a stream never
    shows part of a stop string)."""
    found = [text.find(s) for s in stop if s in text]
    if found:
        return text[: min(found)]
    if finished:
        return text
    hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold]


@dataclass
class _Running:
    """A job in the running batch and what has been said of it so far."""

    job: WriteJob
    sent: list[int]  # per sample, tokens reported to the listener (-1: its last report said done)
    produced: int = 0  # tokens counted in the metrics


class GenerationStream:
    """The server's running decoding batch (continuous batching, :class:`RunningBatch`) and what
    each job's listener has been told so far. Jobs join with :meth:`admit`, leave when finished
    (:meth:`advance` returns their samples' token ids) or when dropped."""

    def __init__(self, backbone: Backbone):
        self.batch = RunningBatch(backbone)
        self.running: dict[Hashable, _Running] = {}  # what each job's listener was told, by key
        self.pending: dict[Hashable, PartialPrefill] = {}  # jobs whose long prompts are being read
        self.metrics: ServerMetrics | None = None  # the server's, when it has them

    @property
    def rows(self) -> int:
        """Rows being decoded (samples of the jobs in the batch)."""
        return self.batch.size

    def prefill(
        self, chunks: list[tuple[Hashable, WriteJob, int]], writers: dict[str, Writer], budget: int
    ) -> dict[Hashable, tuple[int, int]]:
        """Read ``(key, job, tokens)`` in order: up to that many tokens of each job's prompt, and
        ``budget`` tokens of them all. New jobs whose whole prompts fit are read together, in one
        forward pass; a longer one a chunk per call. A job joins the batch (decoded at the next
        step) once its prompt is read. Per key: ``(tokens read now, the prompt's length)``."""
        tokenizer = self.batch.backbone.tokenizer
        whole, read = [], {}
        for key, job, tokens in chunks:
            tokens = min(tokens, budget)
            partial = self.pending.get(key)
            if partial is None:
                request = sample_request(job, writers.get(job.task) if job.task else None, tokenizer)
                self.running[key] = _Running(job, [0] * job.samples)
                ids = prompt_ids(self.batch.backbone, request.prompt)
                if len(ids) <= tokens:
                    whole.append((key, replace(request, prompt=ids)))
                    read[key] = (len(ids), len(ids))
                    budget -= len(ids)
                    continue
                partial = self.pending[key] = self.batch.start(key, replace(request, prompt=ids))
            done = self.batch.read(partial, tokens) if tokens > 0 else 0
            read[key], budget = (done, partial.length), budget - done
            if partial.done:
                del self.pending[key]
        self.batch.admit(whole)
        return read

    def advance(self, steps: int) -> dict[Hashable, list[list[int]]]:
        """Decode ``steps`` tokens; report new tokens to listeners; the finished jobs' token ids."""
        finished = self.batch.step(steps)
        for member in [*self.batch.members, *finished]:
            self._report(member, member in finished)
            self._count(member)
        results = {}
        for member in finished:
            del self.running[member.key]
            results[member.key] = [list(tokens) for tokens in member.tokens]
        return results

    def drop(self, keys: set[Hashable]) -> None:
        """Stop decoding the jobs of ``keys`` (their callers went away)."""
        self.batch.drop(keys)
        for key in keys:
            self.running.pop(key, None)
            self.pending.pop(key, None)

    def _count(self, member: Member) -> None:
        """Generated tokens and, at a job's first, its time to first token, into the metrics."""
        if self.metrics is None:
            return
        state = self.running[member.key]
        now = sum(len(tokens) for tokens in member.tokens)
        if now > state.produced:
            first_after = time.perf_counter() - state.job.created if state.produced == 0 else None
            self.metrics.generated(state.job.task or "", now - state.produced, first_after)
            state.produced = now

    def _report(self, member: Member, finished: bool) -> None:
        state = self.running[member.key]
        listener, sent = state.job.listener, state.sent
        if listener is None:
            return
        for sample, tokens in enumerate(member.tokens):
            if sent[sample] < 0:  # closed: its last report said done
                continue
            done = finished or member.done[sample]
            if len(tokens) > sent[sample] or done:
                listener(sample, tokens[sent[sample] :], done)
                sent[sample] = -1 if done else len(tokens)
