"""Reading prompts into the running decoding batch: together in one forward pass when they fit a
step's token budget (:func:`read_rows`), a chunk per step when one does not
(:class:`PartialPrefill`), so that a long prompt never holds up the decoding rows for longer
than a chunk. A soft prompt that leads its row is read from the prompt caches when the request
names its key (computed once per task, like a classifier's), so only the text runs."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.prompt_caches import PromptCaches
from softprompt.generation.batch_state import Layers, Rows
from softprompt.generation.sampling import SampleRequest, prompt_ids
from softprompt.methods.row_adapters import RowAdapter, RowAdapters


@dataclass
class RowSpec:
    """One row to pre-fill: ``[prefix keys/values][soft prompt][ids]``, with its adapter, repeated
    for ``samples`` rows once read."""

    soft: torch.Tensor | None
    ids: list[int]
    prefix: Layers | None
    adapter: RowAdapter | None
    samples: int


def row_specs(backbone: Backbone, request: SampleRequest, caches: PromptCaches | None) -> list[RowSpec]:
    """The rows a request is pre-filled as (one per variant). Its soft prompt comes from
    ``caches`` as a prefix when it names a key there (and has no steering or adapter that the
    cache would not have been computed with)."""
    cached = caches is not None and request.prompt_key is not None and request.soft is not None
    if cached and request.steering is None and request.row_adapter is None:
        (prefix,) = caches.own([request.prompt_key], lambda _: request.soft)
        return [RowSpec(None, prompt_ids(backbone, request.prompt), prefix, None, request.samples)]
    return [
        RowSpec(
            variant.soft,
            prompt_ids(backbone, request.prompt, variant.text_prefix),
            request.prefix,
            request.row_adapter,
            request.samples,
        )
        for variant in request.variants()
    ]


def read_rows(
    backbone: Backbone, adapters: RowAdapters, specs: Sequence[RowSpec]
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
    """One forward pass over left-padded rows: their last logits ``[N, V]``, the cache, the mask
    (prefix columns in front) and each row's last position ``[N, 1]``."""
    embeds, mask = core.embed_rows(backbone, [(spec.soft, spec.ids) for spec in specs])
    past, mask, positions = core.prefixed(backbone, [spec.prefix for spec in specs], mask)
    with adapters.selected([spec.adapter for spec in specs]):
        logits, cache = core.next_token_logits(
            backbone, inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past
        )
    return logits[:, -1], cache, mask, positions[:, -1:]


def repeated(
    specs: Sequence[RowSpec], logits: torch.Tensor, cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor
) -> Rows:
    """Read rows as batch rows: each repeated for its samples."""
    counts = torch.tensor([spec.samples for spec in specs])
    repeat = torch.repeat_interleave(torch.arange(len(specs)), counts).to(logits.device)
    layers = [(layer.keys[repeat], layer.values[repeat]) for layer in cache.layers]
    return Rows(logits[repeat], layers, mask[repeat], last[repeat])


@dataclass
class PartialPrefill:
    """A request's prompt read a chunk per step (a request of one variant), its cache kept
    between chunks; it joins the batch once :attr:`done`."""

    key: Hashable
    request: SampleRequest
    spec: RowSpec
    read: int = 0
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None
    last: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return len(self.spec.ids)

    @property
    def done(self) -> bool:
        return self.read >= self.length

    @property
    def width(self) -> int:
        """Its cache's columns once all is read (known after the first chunk: prefix and soft
        prompt included)."""
        return (0 if self.mask is None else self.mask.shape[1]) + self.length - self.read

    @torch.inference_mode()
    def read_more(self, backbone: Backbone, adapters: RowAdapters, tokens: int) -> int:
        """Read up to ``tokens`` more of the prompt; how many were read."""
        chunk = self.spec.ids[self.read : self.read + max(tokens, 1)]
        if self.cache is None:  # the first chunk, after its prefix and soft prompt
            first = replace(self.spec, ids=chunk)
            self.logits, self.cache, self.mask, self.last = read_rows(backbone, adapters, [first])
        else:
            device = backbone.device
            self.mask = torch.cat([self.mask, self.mask.new_ones(1, len(chunk))], dim=1)
            positions = self.last + 1 + torch.arange(len(chunk), device=device)
            with adapters.selected([self.spec.adapter]):
                logits, self.cache = core.next_token_logits(
                    backbone,
                    input_ids=torch.tensor([chunk], device=device),
                    attention_mask=self.mask,
                    position_ids=positions,
                    past_key_values=self.cache,
                )
            self.logits, self.last = logits[:, -1], positions[:, -1:]
        self.read += len(chunk)
        return len(chunk)

    def rows(self) -> Rows:
        return repeated([self.spec], self.logits, self.cache, self.mask, self.last)
