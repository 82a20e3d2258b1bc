"""Text-to-text metrics from the field's libraries: exact match, sacreBLEU's corpus BLEU and chrF
(multi-reference) and ROUGE-L (``rouge-score``, the best reference per output).

BLEU, chrF and ROUGE-L are on sacreBLEU's 0-100 scale; exact match is a share in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-output reference lists -> sacreBLEU's streams (stream k holds every output's k-th
    reference; outputs with fewer references hold None there, which sacreBLEU skips)."""
    depth = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]


def exact_match(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Share of outputs equal to one of their references (after stripping outer spaces)."""
    hits = sum(out.strip() in {r.strip() for r in refs} for out, refs in zip(outputs, references, strict=True))
    return hits / len(outputs) if outputs else 0.0


def rouge_l(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure (x100) against the best-matching reference of each output."""
    from rouge_score import rouge_scorer  # late: only text-to-text tasks need it

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [
        scorer.score_multi(list(refs), out)["rougeL"].fmeasure for out, refs in zip(outputs, references, strict=True)
    ]
    return 100 * sum(scores) / len(scores) if scores else 0.0


def text_metrics(outputs: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``exact_match``, ``bleu``, ``chrf``, ``rouge_l`` and ``n`` of outputs against their references."""
    import sacrebleu  # late: only text-to-text tasks need it

    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} reference lists")
    if not outputs:
        return {"exact_match": 0.0, "bleu": 0.0, "chrf": 0.0, "rouge_l": 0.0, "n": 0}
    streams = reference_streams(references)
    return {
        "exact_match": exact_match(outputs, references),
        "bleu": sacrebleu.corpus_bleu(list(outputs), streams).score,
        "chrf": sacrebleu.corpus_chrf(list(outputs), streams).score,
        "rouge_l": rouge_l(outputs, references),
        "n": len(outputs),
    }
