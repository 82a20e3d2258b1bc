"""Scoring outputs of a text-to-text task, and the baselines that need no model to write:
copy the input, delete the words a lexicon marks (learned from the training pairs' edits), and
the human references scored against each other."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from softprompt.backbones import Backbone
from softprompt.data.pairs import TextPair
from softprompt.generation.metrics import text_metrics

WORD = re.compile(r"[A-Za-z0-9']+")
MIN_DELETIONS = 3  # a word enters the lexicon after this many deletions...
MIN_SHARE = 0.5  # ...in at least this share of the training inputs holding it


def score_outputs(
    backbone: Backbone | None,
    pairs: list[TextPair],
    outputs: list[str],
    extra: list[str],
    references=None,
    fluency: FluencyFit | None = None,
    chrf_references=None,
) -> dict[str, Any]:
    """Text metrics of ``outputs`` against the pairs' references (or ``references``), plus the
    ``extra`` metrics (``detox``: STA, SIM, the fluency measures and their J, which need
    ``backbone``; ``fluency`` gives the held-out SLOR scale, ``chrf_references`` the references
    chrF-based fluency is taken against)."""
    references = references if references is not None else [list(p.targets) for p in pairs]
    metrics = text_metrics(outputs, references)
    if "detox" in extra and backbone is not None:
        from softprompt.tasks.generation.rewriting import rewrite_metrics  # late: loads scorers and an embedder

        calibration = [list(p.targets) for p in pairs]
        scale = fluency.scale(backbone) if fluency is not None else None
        metrics.update(rewrite_metrics(backbone, [p.text for p in pairs], outputs, calibration, scale, chrf_references))
    return metrics


class FluencyFit:
    """The training and dev pairs the SLOR fluency scale is fitted on, fitted once when first needed
    (only rewriting metrics use it, and fitting runs the base model over the dev references)."""

    def __init__(self, train: list[TextPair], dev: list[TextPair]) -> None:
        self.train, self.dev = train, dev
        self._scale = None

    def scale(self, backbone: Backbone):
        if self._scale is None:
            from softprompt.tasks.generation.rewriting import held_out_fluency_scale  # late, as above

            self._scale = held_out_fluency_scale(backbone, self.train, self.dev)
        return self._scale


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def deletion_lexicon(train: list[TextPair]) -> set[str]:
    """Words the references drop from their input in most training pairs that hold them."""
    held, dropped = Counter(), Counter()
    for pair in train:
        kept = {w for target in pair.targets for w in words(target)}
        for word in set(words(pair.text)):
            held[word] += 1
            dropped[word] += word not in kept
    return {w for w, n in dropped.items() if n >= MIN_DELETIONS and n / held[w] >= MIN_SHARE}


def delete_words(text: str, lexicon: set[str]) -> str:
    """``text`` without the lexicon's words (case-insensitive), spaces tidied."""
    kept = WORD.sub(lambda m: "" if m.group(0).lower() in lexicon else m.group(0), text)
    return re.sub(r"\s+", " ", kept).strip()


def offline_baselines(
    backbone: Backbone | None,
    splits: tuple[list[TextPair], list[TextPair], list[TextPair]],
    wanted: list[str],
    extra: list[str],
) -> list[tuple[str, dict[str, Any]]]:
    """``(label, metrics)`` of each wanted baseline among copy, delete and references, scored on
    the last of ``splits`` (train, dev, test); the delete lexicon and the SLOR scale come from the
    training and dev pairs."""
    train, dev, test = splits
    fluency = FluencyFit(train, dev) if dev else None
    rows = []
    if "copy" in wanted:
        rows.append(("copy the input", score_outputs(backbone, test, [p.text for p in test], extra, fluency=fluency)))
    if "delete" in wanted:
        lexicon = deletion_lexicon(train)
        outputs = [delete_words(p.text, lexicon) for p in test]
        metrics = score_outputs(backbone, test, outputs, extra, fluency=fluency)
        rows.append((f"delete ({len(lexicon)}-word lexicon)", metrics))
    if "references" in wanted:
        # The first reference as the output; BLEU/chrF against the others where there are others
        # (and the chrF-based fluency likewise, leave-one-out).
        several = [p for p in test if len(p.targets) > 1]
        others = [list(p.targets[1:]) for p in test]
        metrics = score_outputs(
            backbone, test, [p.targets[0] for p in test], extra, fluency=fluency, chrf_references=others
        )
        among = text_metrics([p.targets[0] for p in several], [list(p.targets[1:]) for p in several])
        metrics.update({k: among[k] for k in ("exact_match", "bleu", "chrf", "rouge_l")}, n_bleu=among["n"])
        rows.append(("human references", metrics))
    return rows
