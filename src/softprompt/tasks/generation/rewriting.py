"""Detoxification by rewriting, measured as in ParaDetox (Logacheva et al., 2022) with offline parts:

- STA: share of outputs the toxicity scorer calls non-toxic (``classifier``, softprompt's MiniLM
  scorer; ``sta_profanity`` with the ``profanity`` scorer is reported beside it);
- SIM: cosine similarity of input and output under the bundled all-MiniLM-L6-v2 sentence
  embedding (sentence-transformers), clipped at 0;
- FL: share of outputs whose perplexity under the plain base model is at most the 95th percentile
  of the human references' perplexities on the same split (a calibrated stand-in for ParaDetox's
  CoLA classifier, which cannot be had offline);
- J: mean over sentences of STA x SIM x FL.

FL lets word deletions through ("you are a idiot" is not rare enough to be unlikely), so two more
fluency measures are reported beside it, each giving its own J (see docs/detox.md):

- FL_SLOR: share of outputs whose SLOR (Lau et al. 2017; Kann et al. 2018: the mean token
  log-probability under the plain base model minus that under a token unigram model, so that rare
  words are not mistaken for broken grammar) reaches the 5th percentile of held-out references'
  SLOR. The unigram model is fitted on the training split's texts and the threshold on the dev
  split's references (:func:`held_out_fluency_scale`), so neither has seen the test split.
- chrF: sentence chrF against the human references (PAN 2024 TextDetox's fluency part of J);
  the references row is scored leave-one-out, against the other references of its sentence, so
  only over the sentences that have several (``n_chrf`` says how many).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.embedder import embed
from softprompt.core.likelihood import score_rows
from softprompt.data.pairs import TextPair
from softprompt.prompts.template import special_affixes
from softprompt.tasks.generation.toxicity import TOXIC, load_scorer

FLUENT_PERCENTILE = 95
SLOR_PERCENTILE = 5  # an output is fluent under SLOR when it reaches this percentile of held-out references'
MAX_TOKENS = 128  # longer texts are cut when their perplexity is taken


def similarity(inputs: Sequence[str], outputs: Sequence[str]) -> np.ndarray:
    """Per-pair cosine similarity of the sentence embeddings, clipped at 0."""
    left, right = embed(inputs), embed(outputs)
    return np.clip((left * right).sum(-1), 0.0, 1.0)


@torch.inference_mode()
def scored_tokens(backbone: Backbone, texts: Sequence[str], batch_size: int = 32) -> list[tuple[list[int], float]]:
    """Per text: the tokens the model predicts (every token after the first, with the special
    tokens the tokenizer itself puts first, a BOS if any, as context) and the sum of their
    log-probabilities under ``backbone``. (A chat model's BOS, such as SmolLM2's
    ``<|im_start|>``, is not a document start, so none is added when the tokenizer adds none.)"""
    tokenizer = backbone.tokenizer
    lead = list(special_affixes(tokenizer)[0])
    scored: list[tuple[list[int], float]] = []
    for first in range(0, len(texts), batch_size):
        chunk = list(texts[first : first + batch_size])
        rows = [lead + tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in chunk]
        rows = [row if row else [tokenizer.eos_token_id] for row in rows]
        totals = score_rows(backbone, [(None, row) for row in rows], [1] * len(rows))
        scored.extend((row[1:], total.logprobs.sum().item()) for row, total in zip(rows, totals, strict=True))
    return scored


def perplexities(backbone: Backbone, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Per-text perplexity under ``backbone`` (:func:`scored_tokens`); inf for a text of fewer
    than two tokens."""
    return perplexity_of(scored_tokens(backbone, texts, batch_size))


def perplexity_of(scored: list[tuple[list[int], float]]) -> np.ndarray:
    """Per-text perplexity from :func:`scored_tokens`' output; inf where no token was predicted."""
    return np.array([math.exp(-total / len(ids)) if ids else math.inf for ids, total in scored])


@dataclass(frozen=True)
class FluencyScale:
    """What the SLOR fluency measure needs: a token unigram model and the threshold."""

    log_unigram: np.ndarray  # [vocabulary] add-one smoothed log-probability of each token
    threshold: float  # the SLOR_PERCENTILE-th percentile of held-out references' SLOR
    fitted_on: str  # said in the metrics, so that a report can tell a held-out fit from the scored split

    def slor(self, backbone: Backbone, texts: Sequence[str]) -> np.ndarray:
        """Per-text SLOR: mean over predicted tokens of log p_model - log p_unigram; -inf for a
        text of fewer than two tokens."""
        return self.slor_of(scored_tokens(backbone, texts))

    def slor_of(self, scored: list[tuple[list[int], float]]) -> np.ndarray:
        """Per-text SLOR from :func:`scored_tokens`' output (the same pass gives the perplexity)."""
        return np.array(
            [(total - float(self.log_unigram[ids].sum())) / len(ids) if ids else -math.inf for ids, total in scored]
        )


def fit_fluency_scale(
    backbone: Backbone, texts: Sequence[str], references: Sequence[str], fitted_on: str
) -> FluencyScale:
    """The unigram model from ``texts``' tokens, the threshold from ``references``' SLOR."""
    return _fitted_scale(backbone, texts, scored_tokens(backbone, references), fitted_on)


def _fitted_scale(
    backbone: Backbone, texts: Sequence[str], references: list[tuple[list[int], float]], fitted_on: str
) -> FluencyScale:
    """:func:`fit_fluency_scale` with the references already scored."""
    tokenizer = backbone.tokenizer
    counts = np.ones(max(len(tokenizer), backbone.model.get_input_embeddings().num_embeddings), dtype=np.float64)
    for text in texts:
        np.add.at(counts, tokenizer(text, add_special_tokens=False)["input_ids"], 1)
    unfitted = FluencyScale(np.log(counts / counts.sum()), 0.0, fitted_on)
    values = unfitted.slor_of(references)
    threshold = float(np.percentile(values[np.isfinite(values)], SLOR_PERCENTILE))
    return FluencyScale(unfitted.log_unigram, threshold, fitted_on)


def held_out_fluency_scale(backbone: Backbone, train: list[TextPair], dev: list[TextPair]) -> FluencyScale:
    """The SLOR scale fitted on training texts (inputs and references) and dev references."""
    texts = [text for pair in train for text in (pair.text, *pair.targets)]
    references = [target for pair in dev for target in pair.targets]
    return fit_fluency_scale(plain_backbone(backbone), texts, references, "train texts; threshold: dev references")


def plain_backbone(backbone: Backbone) -> Backbone:
    """``backbone`` when no method changed its layers, else a fresh copy of the same model."""
    if backbone.modified_by is None:
        return backbone
    return load_backbone(backbone.name, str(backbone.device), backbone.placement.precision)


def rewrite_metrics(
    backbone: Backbone,
    inputs: Sequence[str],
    outputs: Sequence[str],
    references: Sequence[Sequence[str]],
    scale: FluencyScale | None = None,
    chrf_references: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """STA, SIM, the three fluency measures and a J under each, for ``outputs`` (rewrites of
    ``inputs``). FL is calibrated on ``references``; FL_SLOR uses ``scale`` (else one fitted on
    this split's inputs and references, and said so); chrF is taken against ``chrf_references``
    (default ``references``; a sentence with none is left out of J_chrF)."""
    toxicity = load_scorer("classifier").score(outputs)
    profane = load_scorer("profanity").score(outputs)
    sim = similarity(inputs, outputs)
    base = plain_backbone(backbone)
    # One pass of the base model over the outputs and one over the references serve every
    # fluency measure (perplexity and SLOR both come from the same token log-probabilities).
    scored = scored_tokens(base, outputs)
    ours = perplexity_of(scored)
    human_texts = [r for refs in references for r in refs]
    human_scored = scored_tokens(base, human_texts)
    human = perplexity_of(human_scored)
    threshold = float(np.percentile(human[np.isfinite(human)], FLUENT_PERCENTILE))
    if scale is None:
        scale = _fitted_scale(base, [*inputs, *human_texts], human_scored, "the scored split")
    sta = (toxicity <= TOXIC).astype(float)
    fl = (ours <= threshold).astype(float)
    fl_slor = (scale.slor_of(scored) >= scale.threshold).astype(float)
    chrf, has_references = sentence_chrf(outputs, references if chrf_references is None else chrf_references)
    finite = ours[np.isfinite(ours)]
    return {
        "sta": float(sta.mean()),
        "sta_profanity": float((profane <= TOXIC).mean()),
        "sim": float(sim.mean()),
        "fl": float(fl.mean()),
        "j": float((sta * sim * fl).mean()),
        "fl_slor": float(fl_slor.mean()),
        "j_slor": float((sta * sim * fl_slor).mean()),
        "j_chrf": float((sta * sim * chrf)[has_references].mean()) if has_references.any() else None,
        "n_chrf": int(has_references.sum()),
        "fl_threshold_ppl": round(threshold, 2),
        "slor_threshold": round(scale.threshold, 4),
        "slor_fitted_on": scale.fitted_on,
        "median_ppl": float(np.median(finite)) if len(finite) else None,
    }


def sentence_chrf(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sentence sacreBLEU chrF in [0, 1], and which sentences had references to score against."""
    from sacrebleu.metrics import CHRF  # late: only the rewriting metrics need it

    chrf = CHRF()
    scores = np.zeros(len(outputs))
    scored = np.array([bool(refs) for refs in references], dtype=bool)
    for index, (output, refs) in enumerate(zip(outputs, references, strict=True)):
        if refs:
            scores[index] = chrf.sentence_score(output, list(refs)).score / 100
    return scores, scored
