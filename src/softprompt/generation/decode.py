"""Decoding prompted inputs with transformers' ``generate`` (greedy, beam search or sampling).

Rows are left-padded embeddings with the method's soft tokens at their slots (``inputs_embeds``),
so soft tokens may stand anywhere in the template and rows of one batch may differ. A method with
key/value prefixes (prefix tuning) passes them as ``past_key_values``: ``generate`` then expects
the full sequence, cached part included, and slices the cached columns off the embeddings, so
those columns hold placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from softprompt.backbones import Backbone
from softprompt.config import GenConfig
from softprompt.core import forward as core
from softprompt.core.batching import length_sorted_batches
from softprompt.methods.base import Method
from softprompt.prompts import EncodedInput
from softprompt.seeding import seeded_on


def generation_config(backbone: Backbone, settings: GenConfig) -> GenerationConfig:
    """``settings`` as transformers' config (the model's own defaults are not used: a run's
    outputs depend only on what it states)."""
    tokenizer = backbone.tokenizer
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0} if settings.do_sample else {}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )


@torch.inference_mode()
def decode_batch(
    backbone: Backbone, method: Method, prompts: Sequence[EncodedInput], settings: GenConfig
) -> list[list[int]]:
    """Generated token ids (without EOS and padding) of one batch of encoded prompts."""
    pad_id = backbone.tokenizer.pad_token_id or 0
    padded = core.pad(
        [p.ids for p in prompts], pad_id, left=True, device=backbone.device, soft=[p.soft for p in prompts]
    )
    embeds = core.embed(backbone, padded.input_ids, padded.soft_index, method.soft_embeddings())
    # generate repeats each row for its beams but not a cache it is given: the prefixes are the
    # same in every row, so a cache for rows x beams is the repeated one.
    context = core.leading_context(backbone, method, len(prompts) * settings.num_beams)
    mask = context.mask(padded.attention_mask)
    extra = {"past_key_values": context.cache} if context.cache is not None else {}
    if context.length:  # generate reads the cache's length off the inputs: placeholders for its columns
        embeds = torch.cat([embeds.new_zeros(len(prompts), context.length, embeds.shape[-1]), embeds], dim=1)
    config = generation_config(backbone, settings)
    with seeded_on(backbone.device, settings.seed):
        out = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config, **extra)
    ends = {config.eos_token_id, config.pad_token_id}
    results = []
    for row in out.tolist():
        stop = next((i for i, token in enumerate(row) if token in ends), len(row))
        results.append(row[:stop])
    return results


def decode(
    backbone: Backbone,
    method: Method,
    prompts: Sequence[EncodedInput],
    settings: GenConfig,
    batch_size: int = 32,
    bar=None,
) -> list[str]:
    """The text generated for each prompt, in input order (batched by length: less padding)."""
    texts: list[str] = [""] * len(prompts)
    with backbone.decoding():  # float32 on a CPU, whatever precision training used: faster there
        for index in length_sorted_batches([len(p.ids) for p in prompts], batch_size):
            rows = decode_batch(backbone, method, [prompts[i] for i in index], settings)
            for i, ids in zip(index, rows, strict=True):
                texts[i] = backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()
            if bar is not None:
                bar.update(len(index))
    return texts
