"""Detoxification by rewriting, measured as in ParaDetox (Logacheva et al., 2022) with offline parts:

- STA: share of outputs the toxicity scorer calls non-toxic (``classifier``, softprompt's MiniLM
  scorer; ``sta_profanity`` with the ``profanity`` scorer is reported beside it);
- SIM: cosine similarity of input and output under the bundled all-MiniLM-L6-v2 sentence
  embedding (sentence-transformers), clipped at 0;
- FL: share of outputs whose perplexity under the plain base model is at most the 95th percentile
  of the human references' perplexities on the same split (a calibrated stand-in for ParaDetox's
  CoLA classifier, which cannot be had offline);
- J: mean over sentences of STA x SIM x FL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from softprompt.backbones import Backbone, load_backbone
from softprompt.core import forward as core
from softprompt.prompts.template import special_affixes
from softprompt.tasks.generation.toxicity import TOXIC, load_scorer

EMBEDDER = "minilm-l6"  # the bundled sentence-transformers directory
FLUENT_PERCENTILE = 95
MAX_TOKENS = 128  # longer texts are cut when their perplexity is taken


@lru_cache(maxsize=1)
def sentence_embedder():
    """The bundled all-MiniLM-L6-v2 as a sentence-transformers model (loaded once)."""
    from sentence_transformers import SentenceTransformer  # late: only rewriting metrics need it

    from softprompt.backbones.sources import resolve

    return SentenceTransformer(str(resolve(EMBEDDER)[2]), device="cpu")


def similarity(inputs: Sequence[str], outputs: Sequence[str]) -> np.ndarray:
    """Per-pair cosine similarity of the sentence embeddings, clipped at 0."""
    model = sentence_embedder()
    left = model.encode(list(inputs), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    right = model.encode(list(outputs), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.clip((left * right).sum(-1), 0.0, 1.0)


@torch.inference_mode()
def perplexities(backbone: Backbone, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Per-text perplexity under ``backbone``: of every token after the first, with the special
    tokens the tokenizer itself puts first (a BOS, if any) as context; inf for a text of fewer
    than two tokens. (A chat model's BOS, such as SmolLM2's ``<|im_start|>``, is not a document
    start, so none is added when the tokenizer adds none.)"""
    tokenizer = backbone.tokenizer
    lead = list(special_affixes(tokenizer)[0])
    out = np.full(len(texts), math.inf)
    for first in range(0, len(texts), batch_size):
        chunk = list(texts[first : first + batch_size])
        rows = [lead + tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in chunk]
        rows = [row if row else [tokenizer.eos_token_id] for row in rows]
        padded = core.pad(rows, tokenizer.pad_token_id or 0, left=True, device=backbone.device)
        ids, mask = padded.input_ids, padded.attention_mask
        logits, _ = core.next_token_logits(
            backbone, ids.shape[1], input_ids=ids, attention_mask=mask, position_ids=core.positions(mask)
        )
        nll = -core.token_logprobs(logits[:, :-1], ids[:, 1:])
        valid = (mask[:, 1:] * mask[:, :-1]).float()  # left padding: the start token is not predicted
        counts = valid.sum(-1)
        mean = (nll * valid).sum(-1) / counts.clamp(min=1)
        for offset, (value, count) in enumerate(zip(mean.tolist(), counts.tolist(), strict=True)):
            if count:
                out[first + offset] = math.exp(value)
    return out


def plain_backbone(backbone: Backbone) -> Backbone:
    """``backbone`` when no method changed its layers, else a fresh copy of the same model."""
    if backbone.modified_by is None:
        return backbone
    return load_backbone(backbone.name, str(backbone.device), backbone.placement.precision)


def rewrite_metrics(
    backbone: Backbone, inputs: Sequence[str], outputs: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """STA, SIM, FL and J of ``outputs`` (rewrites of ``inputs``), FL calibrated on ``references``."""
    toxicity = load_scorer("classifier").score(outputs)
    profane = load_scorer("profanity").score(outputs)
    sim = similarity(inputs, outputs)
    base = plain_backbone(backbone)
    ours = perplexities(base, outputs)
    human = perplexities(base, [r for refs in references for r in refs])
    threshold = float(np.percentile(human[np.isfinite(human)], FLUENT_PERCENTILE))
    sta = (toxicity <= TOXIC).astype(float)
    fl = (ours <= threshold).astype(float)
    finite = ours[np.isfinite(ours)]
    return {
        "sta": float(sta.mean()),
        "sta_profanity": float((profane <= TOXIC).mean()),
        "sim": float(sim.mean()),
        "fl": float(fl.mean()),
        "j": float((sta * sim * fl).mean()),
        "fl_threshold_ppl": round(threshold, 2),
        "median_ppl": float(np.median(finite)) if len(finite) else None,
    }
