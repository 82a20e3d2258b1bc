"""Continuous batching: one decoding batch that requests join and leave between steps.

A server keeps one :class:`RunningBatch`. A new request is pre-filled (its soft prompt and text run once, the
cache repeated for its samples) and joins at the next step; a finished one leaves at once and frees its rows, so
a short generation never waits behind a long one and no row idles until the longest ends.

Each request keeps its own soft prompt, settings and random generator, and its samples draw together, so what it
gets does not depend on what shared the batch or when it joined.

It is the one sampling loop: detoxification's steered sampling (:func:`sample_continuations`) runs through it
too, a request then being several rows per sample (a steering's variants) whose logits combine into one draw.
transformers' ``generate`` decodes the rest (beam search, soft tokens inside the template:
:mod:`softprompt.generation.decode`).

transformers 5 has continuous batching of its own (``generate_batch``, paged attention), but it takes token ids
only: no soft prompts as input embeddings, and no per-request generator. Hence this small scheduler over public
APIs (``inputs_embeds``, ``past_key_values``, ``DynamicCache``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.generation.rows import Steering
from softprompt.generation.sampling import SampleRequest, draw, prompt_ids
from softprompt.methods.row_adapters import RowAdapters

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, width, dim]


@dataclass(eq=False)  # compared by identity: a request holds tensors
class Member:
    """A request in the batch. Its rows are consecutive, variant-major: row ``r * samples + j``
    is variant ``r`` of sample ``j`` (one variant without a steering)."""

    key: Hashable
    request: SampleRequest
    generator: torch.Generator
    tokens: list[list[int]]  # per sample, the ids decoded so far (no end-of-sequence token)
    done: list[bool]  # per sample
    steps: int = 0  # tokens drawn so far, the same for all its samples
    width: int = 1  # rows per sample
    nll: list[float] | None = None  # per sample, under the steering's plain row (when it has one)

    @property
    def finished(self) -> bool:
        return all(self.done) or self.steps >= self.request.max_new_tokens

    @property
    def rows(self) -> int:
        return self.request.samples * self.width


@dataclass
class Rows:
    """The batch's tensors, one row per sample, left-padded to a common width."""

    logits: torch.Tensor  # [R, V] next-token logits
    layers: Layers  # the key/value cache
    mask: torch.Tensor  # [R, width] attention mask
    last: torch.Tensor  # [R, 1] position of each row's last token

    def select(self, index: torch.Tensor) -> Rows:
        layers = [(k[index], v[index]) for k, v in self.layers]
        return Rows(self.logits[index], layers, self.mask[index], self.last[index]).trimmed()

    def trimmed(self) -> Rows:
        """Without the leading columns that no row attends to any more (left by rows that left)."""
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start == 0:
            return self
        layers = [(k[:, :, start:], v[:, :, start:]) for k, v in self.layers]
        return Rows(self.logits, layers, self.mask[:, start:], self.last)

    @staticmethod
    def joined(a: Rows, b: Rows) -> Rows:
        """``a``'s rows then ``b``'s, the narrower padded on the left."""
        width = max(a.mask.shape[1], b.mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if not missing:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = [
            (torch.cat([left_pad(ka, 2), left_pad(kb, 2)]), torch.cat([left_pad(va, 2), left_pad(vb, 2)]))
            for (ka, va), (kb, vb) in zip(a.layers, b.layers, strict=True)
        ]
        mask = torch.cat([left_pad(a.mask, 1), left_pad(b.mask, 1)])
        return Rows(torch.cat([a.logits, b.logits]), layers, mask, torch.cat([a.last, b.last]))


@dataclass
class RunningBatch:
    """The decoding batch of a server: :meth:`admit` requests, :meth:`step` them, collect what
    :meth:`step` reports finished; :meth:`drop` a request whose caller went away."""

    backbone: Backbone
    members: list[Member] = field(default_factory=list)
    rows: Rows | None = None
    adapters: RowAdapters = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.adapters = RowAdapters(self.backbone.model)  # applies LoRA and IA3 requests' weights to their rows

    @property
    def size(self) -> int:
        """Rows in the batch (samples of the requests in it, times their variants)."""
        return sum(m.rows for m in self.members)

    @torch.inference_mode()
    def admit(self, requests: Sequence[tuple[Hashable, SampleRequest]]) -> None:
        """Pre-fill ``(key, request)`` pairs and add them to the batch (nothing is added if it fails).
        Each variant of each request runs once; its cache is repeated for the request's samples."""
        if not requests:
            return
        prompts, counts, adapted, prefixes = [], [], [], []
        for _, request in requests:
            for variant in request.variants():
                prompts.append((variant.soft, prompt_ids(self.backbone, request.prompt, variant.text_prefix)))
                counts.append(request.samples)
                adapted.append(request.row_adapter)
                prefixes.append(request.prefix)
        embeds, mask = core.embed_rows(self.backbone, prompts)
        past, mask, positions = core.prefixed(self.backbone, prefixes, mask)  # prefix tuning's rows
        with self.adapters.selected(adapted):
            logits, cache = core.next_token_logits(
                self.backbone, inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past
            )
        repeat = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts)).to(self.backbone.device)
        layers = [(layer.keys[repeat], layer.values[repeat]) for layer in cache.layers]
        new = Rows(logits[:, -1][repeat], layers, mask[repeat], positions[:, -1:][repeat])
        self.rows = new if self.rows is None else Rows.joined(self.rows, new)
        for key, request in requests:
            samples, width = request.samples, len(request.variants())
            plain = request.steering is not None and request.steering.plain_row() is not None
            generator = torch.Generator().manual_seed(request.seed)
            member = Member(key, request, generator, [[] for _ in range(samples)], [False] * samples, width=width)
            member.nll = [0.0] * samples if plain else None
            self.members.append(member)

    @torch.inference_mode()
    def step(self, steps: int = 1) -> list[Member]:
        """Decode up to ``steps`` tokens for every request; the requests that finished (and left)."""
        finished: list[Member] = []
        for _ in range(steps):
            if not self.members:
                break
            chosen = self._draw()
            leaving = [m for m in self.members if m.finished]
            kept = self._leave(leaving)
            finished += leaving
            if self.members:
                self._feed(chosen[kept])
        return finished

    def drop(self, keys: set[Hashable]) -> None:
        """Take out the requests of ``keys`` (their callers went away)."""
        self._leave([m for m in self.members if m.key in keys])

    def _draw(self) -> torch.Tensor:
        """One token per sample, each request from its own generator (fed to all of the sample's
        rows); updates the members."""
        picks, start = [], 0
        for member in self.members:
            request, span = member.request, slice(start, start + member.rows)
            start = span.stop
            logits = self.rows.logits[span]
            if request.steering is not None:  # [samples, variants, V], combined into [samples, V]
                grouped = logits.view(member.width, request.samples, -1).transpose(0, 1)
                logits = request.steering.combine(grouped)
            # Temperature 0: greedy (the most likely token), as in OpenAI's API.
            chosen = draw(logits, request.temperature, request.top_p, member.generator)
            if member.nll is not None:
                plain = grouped[:, request.steering.plain_row()]
                self._score(member, core.token_logprobs(plain, chosen.to(plain.device)).cpu().tolist(), chosen)
            self._append(member, chosen.tolist())
            picks.append(chosen.repeat(member.width))
        return torch.cat(picks)

    def _score(self, member: Member, logprobs: list[float], chosen: torch.Tensor) -> None:
        """Add the chosen tokens' plain-model log-likelihood to the samples they extend (the end
        of the sequence token is not part of a sample's text, so not of its likelihood)."""
        eos = self.backbone.tokenizer.eos_token_id
        for sample, (logprob, token) in enumerate(zip(logprobs, chosen.tolist(), strict=True)):
            if not member.done[sample] and token != eos:
                member.nll[sample] -= logprob

    def _append(self, member: Member, chosen: list[int]) -> None:
        eos, request = self.backbone.tokenizer.eos_token_id, member.request
        for sample, token in enumerate(chosen):
            if member.done[sample]:
                continue
            if token == eos:
                member.done[sample] = True
                continue
            tokens = member.tokens[sample]
            tokens.append(token)
            member.done[sample] = len(tokens) >= request.max_new_tokens or self._stopped(tokens, request.stop)
        member.steps += 1

    def _stopped(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        """Whether the text's end holds a stop string (only the last tokens are decoded: every
        token is at least one character, so a stop string fits in as many tokens, plus one
        token it may have started inside)."""
        if not stop:
            return False
        tail = self.backbone.tokenizer.decode(tokens[-(max(map(len, stop)) + 1) :], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _leave(self, leaving: list[Member]) -> torch.Tensor:
        """Remove ``leaving`` and their rows; the indices of the rows that stay."""
        keep, start = [], 0
        for member in self.members:
            if member not in leaving:
                keep += range(start, start + member.rows)
            start += member.rows
        kept = torch.tensor(keep, dtype=torch.long)
        if leaving:
            self.members = [m for m in self.members if m not in leaving]
            self.rows = self.rows.select(kept.to(self.backbone.device)) if keep else None
        return kept

    def _feed(self, chosen: torch.Tensor) -> None:
        """Run one chosen token per row: the rows' next logits and their longer cache."""
        rows = self.rows
        mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.mask), 1)], dim=1)
        last = rows.last + 1
        cache = DynamicCache(rows.layers, config=self.backbone.model.config)
        adapted = [m.request.row_adapter for m in self.members for _ in range(m.rows)]
        with self.adapters.selected(adapted):
            logits, cache = core.next_token_logits(
                self.backbone,
                input_ids=chosen.unsqueeze(1).to(self.backbone.device),
                attention_mask=mask,
                position_ids=last,
                past_key_values=cache,
            )
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.rows = Rows(logits[:, -1], layers, mask, last)


@dataclass
class Sampled:
    """Continuations as ``[prompt][sample]`` token ids, and, when the steering ran the plain model
    as one of its rows, each one's ``(negative log-likelihood, tokens)`` under it."""

    tokens: list[list[list[int]]]
    nll: list[list[tuple[float, int]]] | None = None


def prompt_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """A seed per prompt (by its index in the whole input), so that a prompt's samples do not
    depend on which prompts shared its batch, nor on the batch size."""
    return [seed * 1_000_003 + index for index in indices]


def sample_continuations(
    backbone: Backbone,
    steering: Steering,
    prompts: Sequence[str],
    k: int,
    max_new_tokens: int,
    top_p: float,
    seeds: Sequence[int],
    temperature: float = 1.0,
) -> Sampled:
    """``k`` sampled continuations (token ids, without the end-of-sequence token) of each prompt,
    the prompt ``i``'s from its own generator seeded ``seeds[i]``.

    All rows of all prompts (``len(prompts) * k * len(steering.variants)``) go through the model
    together at every step; each prompt's sample gets one token, appended to all of its rows.
    When the steering has a plain row, the plain model's likelihood of the samples comes along.
    """
    batch = RunningBatch(backbone)
    requests = [
        SampleRequest(p, None, k, max_new_tokens, top_p, temperature, seed, steering=steering)
        for p, seed in zip(prompts, seeds, strict=True)
    ]
    finished: dict[Hashable, Member] = {}
    with backbone.decoding():  # float32 on a CPU, whatever precision training used: faster there
        batch.admit(list(enumerate(requests)))
        while batch.members:
            finished.update((member.key, member) for member in batch.step())
    members = [finished[i] for i in range(len(prompts))]
    if steering.plain_row() is None:
        return Sampled([m.tokens for m in members])
    scored = [[(nll, len(ids)) for nll, ids in zip(m.nll, m.tokens, strict=True)] for m in members]
    return Sampled([m.tokens for m in members], scored)
