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
APIs (``inputs_embeds``, ``past_key_values``, a cache written in place: :mod:`softprompt.generation.kv_slots`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.prompt_caches import PromptCaches
from softprompt.generation.batch_state import Member, Rows
from softprompt.generation.kv_slots import ConcatKv, KvSlots, supports
from softprompt.generation.prefill import PartialPrefill, read_rows, repeated, row_specs
from softprompt.generation.ragged import ragged_attention
from softprompt.generation.rows import Steering
from softprompt.generation.sampling import SampleRequest, draw
from softprompt.methods.row_adapters import RowAdapters


@dataclass
class RunningBatch:
    """The decoding batch of a server: :meth:`admit` requests, :meth:`step` them, collect what
    :meth:`step` reports finished; :meth:`drop` a request whose caller went away."""

    backbone: Backbone
    members: list[Member] = field(default_factory=list)
    caches: PromptCaches | None = None  # a server's prompt caches: soft prompts read as prefixes
    adapters: RowAdapters = field(init=False, repr=False)
    kv: KvSlots | ConcatKv = field(init=False, repr=False)  # the rows' cache, mask and positions
    logits: torch.Tensor | None = field(default=None, init=False, repr=False)  # [rows, V] next-token logits
    # Forward passes the last step() ran: fewer than asked when the batch emptied, and none for
    # a step whose every row finished on its drawn token (it costs next to nothing, and counting
    # it made the scheduler think decoding was ~free and plan a slice of dozens of steps).
    steps_run: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.adapters = RowAdapters(self.backbone.model)  # applies LoRA and IA3 requests' weights to their rows
        config = self.backbone.model.config
        self.kv = KvSlots() if supports(config) else ConcatKv(config)

    @property
    def size(self) -> int:
        """Rows in the batch (samples of the requests in it, times their variants)."""
        return self.kv.rows

    @torch.inference_mode()
    def admit(self, requests: Sequence[tuple[Hashable, SampleRequest]]) -> None:
        """Pre-fill ``(key, request)`` pairs in one forward pass and add them to the batch
        (nothing is added if it fails). Each variant of each request runs once; its cache is
        repeated for the request's samples."""
        if not requests:
            return
        specs = [spec for _, request in requests for spec in row_specs(self.backbone, request, self.caches)]
        self._join(requests, repeated(specs, *read_rows(self.backbone, self.adapters, specs)))

    @torch.inference_mode()
    def start(self, key: Hashable, request: SampleRequest) -> PartialPrefill:
        """A request (of one variant) whose prompt is to be read a chunk at a time
        (:meth:`read`); it joins the batch when read."""
        (spec,) = row_specs(self.backbone, request, self.caches)
        return PartialPrefill(key, request, spec)

    @torch.inference_mode()
    def read(self, partial: PartialPrefill, tokens: int) -> int:
        """Read up to ``tokens`` more of ``partial``'s prompt (joining the batch once all is
        read); how many were read."""
        read = partial.read_more(self.backbone, self.adapters, tokens)
        if partial.done:
            self._join([(partial.key, partial.request)], partial.rows())
        else:  # its room laid out now, a share of the layers moved into it per chunk: no stall at the join
            self.kv.reserve(partial.request.samples, partial.width)
            self.kv.grow(parts=-(-(partial.length - partial.read) // max(read, 1)))  # the chunks to come
        return read

    def _join(self, requests: Sequence[tuple[Hashable, SampleRequest]], new: Rows) -> None:
        """Add pre-filled requests: their rows are written after the rows in use (the others'
        cache does not move)."""
        rows = iter(self.kv.join(new.layers, new.mask, new.last))
        self.logits = new.logits if self.logits is None else torch.cat([self.logits, new.logits])
        for key, request in requests:
            samples, width = request.samples, len(request.variants())
            plain = request.steering is not None and request.steering.plain_row() is not None
            generator = torch.Generator().manual_seed(request.seed)
            member = Member(key, request, generator, [[] for _ in range(samples)], [False] * samples, width=width)
            member.slots = [next(rows) for _ in range(member.rows)]
            member.nll = [0.0] * samples if plain else None
            self.members.append(member)

    @torch.inference_mode()
    def step(self, steps: int = 1) -> list[Member]:
        """Decode up to ``steps`` tokens for every request; the requests that finished (and left)."""
        finished: list[Member] = []
        self.steps_run = 0
        for _ in range(steps):
            if not self.members:
                break
            chosen = self._draw()
            leaving = [m for m in self.members if m.finished]
            self._leave(leaving)
            finished += leaving
            if self.members:
                self._feed(chosen)
                self.steps_run += 1
        return finished

    @torch.inference_mode()
    def drop(self, keys: set[Hashable]) -> None:
        """Take out the requests of ``keys`` (their callers went away)."""
        self._leave([m for m in self.members if m.key in keys])

    def _draw(self) -> dict[Hashable, list[int]]:
        """One token per sample, each request from its own generator (fed to all of the sample's
        rows); updates the members. Per member's key, the chosen token of each of its rows."""
        chosen_by_member = {}
        for member in self.members:
            request = member.request
            logits = self.logits[member.slots]
            if request.steering is not None:  # [samples, variants, V], combined into [samples, V]
                grouped = logits.view(member.width, request.samples, -1).transpose(0, 1)
                logits = request.steering.combine(grouped)
            # Temperature 0: greedy (the most likely token), as in OpenAI's API.
            chosen = draw(logits, request.temperature, request.top_p, member.generator)
            if member.nll is not None:
                plain = grouped[:, request.steering.plain_row()]
                self._score(member, core.token_logprobs(plain, chosen.to(plain.device)).cpu().tolist(), chosen)
            self._append(member, chosen.tolist())
            chosen_by_member[member.key] = chosen.repeat(member.width).tolist()
        return chosen_by_member

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

    def _leave(self, leaving: list[Member]) -> None:
        """Remove ``leaving`` and free their rows: each freed row takes the batch's last row
        (one row copied), so the rows in use stay ``[0, rows)``."""
        if not leaving:
            return
        self.members = [m for m in self.members if m not in leaving]
        owner = {row: (member, i) for member in self.members for i, row in enumerate(member.slots)}
        for row in sorted((row for m in leaving for row in m.slots), reverse=True):
            moved = self.kv.remove(row)
            if moved is not None:
                self.logits[row] = self.logits[moved]
                member, i = owner.pop(moved)
                member.slots[i] = row
                owner[row] = (member, i)
        self.logits = self.logits[: self.kv.rows]
        self.kv.trim()

    def _feed(self, chosen: dict[Hashable, list[int]]) -> None:
        """Run one chosen token per row: the rows' next logits, their cache one column longer."""
        tokens, adapted = [0] * self.kv.rows, [None] * self.kv.rows
        for member in self.members:  # rows as they are now (leaving rows gave their places to others)
            for row, token in zip(member.slots, chosen[member.key], strict=True):
                tokens[row], adapted[row] = token, member.request.row_adapter
        cache, mask, positions = self.kv.step()
        with self.adapters.selected(adapted), ragged_attention(self.backbone.model):
            logits, cache = core.next_token_logits(
                self.backbone,
                input_ids=torch.tensor(tokens, device=self.backbone.device).unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
            )
        self.kv.stepped(cache)
        self.logits = logits[:, -1]


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
