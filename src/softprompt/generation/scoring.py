"""Token log-probabilities of a text after a soft prompt: what OpenAI's ``logprobs`` and ``echo``
report, and what lm-evaluation-harness's log-likelihood requests read from them.

The scores are the model's own (temperature 1, no nucleus cut), whatever the decoding settings
that produced the text, as vLLM reports them by default: they say how likely the model finds
the text, not how it was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.backbones import Backbone
from softprompt.core.likelihood import score_rows

MAX_TOP_LOGPROBS = 5  # OpenAI's own limit for completions' ``logprobs``


@dataclass
class TokenScores:
    """Each scored token's log-probability given everything before it (None for a first token
    with nothing before it: no soft prompt and no special token), and the ``top`` most likely
    tokens at its place (token id -> log-probability, most likely first)."""

    tokens: list[int]
    logprobs: list[float | None]
    top: list[dict[int, float] | None]


def split_special(backbone: Backbone, text: str) -> tuple[list[int], list[int]]:
    """The ids of ``text`` as the model reads it (:func:`~softprompt.generation.sampling.context_ids`),
    split into the special tokens the tokenizer puts before the text (a BOS: not part of the
    text, so not reported) and the rest."""
    encoded = backbone.tokenizer(text, return_special_tokens_mask=True)
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
    lead = next((i for i, flag in enumerate(special) if not flag), len(ids))
    return ids[:lead], ids[lead:]


@torch.inference_mode()
def score_tokens(
    backbone: Backbone,
    soft: torch.Tensor | None,
    context: list[int],
    scored: list[int],
    top: int = 0,
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> TokenScores:
    """Log-probabilities of the ``scored`` ids, each given the soft prompt (or prefix tuning's
    ``prefix``), the ``context`` ids and the scored ids before it, in one forward pass over the
    whole row."""
    if not scored:
        return TokenScores([], [], [])
    [row] = score_rows(backbone, [(soft, context + scored)], [len(context)], [prefix])
    rows, taken = row.logits, row.logprobs.tolist()
    tops: list[dict[int, float] | None] = [{} for _ in taken]
    if top:
        values, index = rows.float().log_softmax(-1).topk(min(top, rows.shape[-1]), dim=-1)
        tops = [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(index, values, strict=True)]
    missing = len(scored) - len(taken)  # 1 when the first token has nothing before it, else 0
    return TokenScores(list(scored), [None] * missing + taken, [None] * missing + tops)
