"""Continuous batching: one decoding batch that requests join and leave between steps.

A server keeps one :class:`RunningBatch`. A new request is pre-filled (its soft prompt and text
run once, the cache repeated for its samples) and joins the batch at the next step boundary; a
request whose samples are all finished leaves at once and frees its rows, so a short generation
never waits behind a long one and no row idles until the longest ends.

Each request keeps its own soft prompt, settings and random generator, and its samples draw
together, so what it gets does not depend on what shared the batch or when it joined: the same
tokens as :func:`~softprompt.generation.sampling.sample_continuations` gives it alone.

transformers 5 has continuous batching of its own (``generate_batch``, paged attention), but it
takes token ids only: no soft prompts as input embeddings, and no per-request generator. Hence
this small scheduler over public APIs (``inputs_embeds``, ``past_key_values``, ``DynamicCache``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.generation.sampling import SampleRequest, context_ids, draw

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, width, dim]


@dataclass(eq=False)  # compared by identity: a request holds tensors
class Member:
    """A request in the batch; its samples hold ``samples`` consecutive rows."""

    key: Hashable
    request: SampleRequest
    generator: torch.Generator
    tokens: list[list[int]]  # per sample, the ids decoded so far (no end-of-sequence token)
    done: list[bool]  # per sample
    steps: int = 0  # tokens drawn so far, the same for all its samples

    @property
    def finished(self) -> bool:
        return all(self.done) or self.steps >= self.request.max_new_tokens


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

    @property
    def size(self) -> int:
        """Rows in the batch (samples of the requests in it)."""
        return sum(m.request.samples for m in self.members)

    @torch.inference_mode()
    def admit(self, requests: Sequence[tuple[Hashable, SampleRequest]]) -> None:
        """Pre-fill ``(key, request)`` pairs and add them to the batch (nothing is added if it fails)."""
        if not requests:
            return
        prompts = [(r.soft, context_ids(self.backbone, r.prompt)) for _, r in requests]
        embeds, mask = core.embed_rows(self.backbone, prompts)
        positions = core.positions(mask)
        logits, cache = core.next_token_logits(
            self.backbone, inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        )
        counts = torch.tensor([r.samples for _, r in requests])
        repeat = torch.repeat_interleave(torch.arange(len(requests)), counts).to(self.backbone.device)
        layers = [(layer.keys[repeat], layer.values[repeat]) for layer in cache.layers]
        new = Rows(logits[:, -1][repeat], layers, mask[repeat], positions[:, -1:][repeat])
        self.rows = new if self.rows is None else Rows.joined(self.rows, new)
        for key, request in requests:
            samples = request.samples
            generator = torch.Generator().manual_seed(request.seed)
            self.members.append(Member(key, request, generator, [[] for _ in range(samples)], [False] * samples))

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
        """One token per row, each request from its own generator; updates the members."""
        eos = self.backbone.tokenizer.eos_token_id
        picks, start = [], 0
        for member in self.members:
            request, span = member.request, slice(start, start + member.request.samples)
            start = span.stop
            logits = self.rows.logits[span]
            # Temperature 0: greedy (the most likely token), as in OpenAI's API.
            chosen = draw(logits, request.temperature, request.top_p, member.generator)
            for sample, token in enumerate(chosen.tolist()):
                if member.done[sample]:
                    continue
                if token == eos:
                    member.done[sample] = True
                    continue
                tokens = member.tokens[sample]
                tokens.append(token)
                member.done[sample] = len(tokens) >= request.max_new_tokens or self._stopped(tokens, request.stop)
            member.steps += 1
            picks.append(chosen)
        return torch.cat(picks)

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
                keep += range(start, start + member.request.samples)
            start += member.request.samples
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
        logits, cache = core.next_token_logits(
            self.backbone,
            input_ids=chosen.unsqueeze(1).to(self.backbone.device),
            attention_mask=mask,
            position_ids=last,
            past_key_values=cache,
        )
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.rows = Rows(logits[:, -1], layers, mask, last)
