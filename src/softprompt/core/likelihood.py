"""The log-likelihood of tokens under the backbone, in the two shapes every scorer needs: tokens
that continue rows already run (a KV cache: a classifier's multi-token label words, a sampler's
samples after their prompt), and whole rows scored token by token (perplexity, a served
completion's logprobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from softprompt.backbones import Backbone
from softprompt.core import forward as core


@dataclass
class Continued:
    """Logits of every continuation position and the continuations that produced them."""

    logits: torch.Tensor  # [rows x repeat, steps, V] float32: column t predicts token t + 1
    tokens: torch.Tensor  # [rows x repeat, steps] the continuations, right-padded with 0
    valid: torch.Tensor  # [rows x repeat, steps] 1 where a continuation has a token


def continue_rows(
    backbone: Backbone,
    cache: DynamicCache,
    mask: torch.Tensor,
    last_position: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    repeat: int,
) -> Continued:
    """Continue each row of ``cache`` (attention ``mask`` ``[rows, cached]``, the position of its
    last token ``[rows]``) with ``repeat`` token sequences at once: ``continuations[r * repeat + m]``
    follows row ``r``. The cache is repeated in place. Gradients flow when enabled."""
    steps = max(1, max(len(ids) for ids in continuations))
    padded = core.pad(continuations, 0, left=False, device=backbone.device, width=steps)
    cache.batch_repeat_interleave(repeat)
    attention = torch.cat([mask.repeat_interleave(repeat, 0), padded.attention_mask], dim=1)
    after = last_position.repeat_interleave(repeat).unsqueeze(1) + 1 + torch.arange(steps, device=backbone.device)
    hidden = core.hidden_states(
        backbone,
        input_ids=padded.input_ids,
        attention_mask=attention,
        position_ids=after,
        past_key_values=cache,
    ).last_hidden_state
    return Continued(core.project(backbone, hidden), padded.input_ids, padded.attention_mask)


@dataclass
class RowScores:
    """One row's scored tokens: the logits that predict each and its log-probability."""

    logits: torch.Tensor  # [n, V] float32
    logprobs: torch.Tensor  # [n]


def score_rows(
    backbone: Backbone,
    rows: Sequence[tuple[torch.Tensor | None, list[int]]],
    first: Sequence[int],
    prefixes: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None] | None = None,
) -> list[RowScores]:
    """Score ``ids[first[r]:]`` of each ``(soft prompt or None, ids)`` row, every token given the
    prompt (and the row's key/value prefix, prefix tuning's, when ``prefixes`` gives one) and the
    ids before it, in one forward pass over the left-padded rows. A first token with no input
    before it (no soft prompt, ``first`` 0) cannot be scored: no position predicts it (a prefix
    is keys and values only), so scoring starts after it."""
    embeds, mask = core.embed_rows(backbone, rows)
    prefixes = prefixes or [None] * len(rows)
    past, full_mask, positions = core.prefixed(backbone, prefixes, mask)
    logits = backbone.model(
        inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, past_key_values=past, use_cache=False
    ).logits
    width = embeds.shape[1]
    out = []
    for row, ((soft, ids), start) in enumerate(zip(rows, first, strict=True)):
        before = width - len(ids) + start  # the column of ids[start]
        begin = max(before, width - len(ids) - (0 if soft is None else len(soft)) + 1)
        predicting = logits[row, begin - 1 : width - 1].float()
        scored = torch.tensor(ids[len(ids) - (width - begin) :], device=predicting.device)
        out.append(RowScores(predicting, core.token_logprobs(predicting, scored)))
    return out
