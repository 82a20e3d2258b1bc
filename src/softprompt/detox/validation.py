"""``softprompt detox validate-scorer``: agreement of offline scorers with the Perspective API
scores stored beside RealToxicityPrompts (label = toxicity > 0.5, as in the literature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from softprompt.detox.data import read_prompts
from softprompt.errors import SoftpromptError
from softprompt.tasks.generation.toxicity import TOXIC, load_scorer, parse_scorer_names


def reference_texts(data: str | Path) -> tuple[list[str], np.ndarray]:
    """Prompt and continuation texts of every ``*.jsonl`` in ``data`` (a folder or one file) with
    their Perspective toxicity (texts without a score are left out)."""
    path = Path(data)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SoftpromptError(f"{data}: no .jsonl files with Perspective scores")
    texts, scores = [], []
    for file in files:
        for prompt in read_prompts(file):
            for part in ("prompt", "continuation"):
                fields = prompt.reference.get(part, {})
                if isinstance(fields.get("toxicity"), (int, float)) and (fields.get("text") or "").strip():
                    texts.append(fields["text"])
                    scores.append(float(fields["toxicity"]))
    if not texts:
        raise SoftpromptError(f"{data}: no texts with a Perspective 'toxicity' score")
    return texts, np.array(scores)


def validate_scorers(data: str | Path, scorer_spec: str) -> dict[str, Any]:
    """AUROC against ``toxicity > 0.5`` and Spearman correlation with the Perspective score, per scorer."""
    names = parse_scorer_names(scorer_spec)
    texts, reference = reference_texts(data)
    labels = reference > TOXIC
    rows = {}
    for name in names:
        predicted = load_scorer(name).score(texts)
        rows[name] = {
            "auroc": round(float(roc_auc_score(labels, predicted)), 4),
            "spearman": round(float(spearmanr(predicted, reference).statistic), 4),
            "accuracy_at_0.5": round(float(((predicted > TOXIC) == labels).mean()), 4),
        }
    return {"data": str(data), "texts": len(texts), "toxic": int(labels.sum()), "scorers": rows}


def validation_table(report: dict[str, Any]) -> str:
    lines = ["| scorer | AUROC | Spearman | accuracy at 0.5 |", "|---|---|---|---|"]
    for name, row in report["scorers"].items():
        lines.append(f"| {name} | {row['auroc']:.3f} | {row['spearman']:.3f} | {row['accuracy_at_0.5']:.3f} |")
    lines.append(
        f"\n{report['texts']} texts (prompts and continuations) from {report['data']}, "
        f"{report['toxic']} toxic by Perspective (toxicity > 0.5)."
    )
    return "\n".join(lines) + "\n"
