"""Reading ParaDetox (Logacheva et al., ACL 2022): toxic sentences with neutral paraphrases.

Shared by the built-in ``paradetox-toxicity`` dataset and the detox prompts' training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softprompt.data.records import read_rows
from softprompt.errors import SoftpromptError


@dataclass(frozen=True)
class ParaPair:
    """A toxic sentence and its human-written neutral paraphrases."""

    toxic: str
    neutral: list[str]


def read_paradetox(path: str | Path) -> list[ParaPair]:
    """ParaDetox TSV (columns ``toxic``, ``neutral1`` .. ``neutral3``); rows may lack paraphrases."""
    path = Path(path)
    if not path.is_file():
        raise SoftpromptError(f"ParaDetox file {path} does not exist")
    rows = read_rows(path)
    if not rows:
        raise SoftpromptError(f"{path}: no rows")
    columns = list(rows[0][1])
    neutral_columns = [c for c in columns if c.startswith("neutral")]
    if "toxic" not in columns or not neutral_columns:
        raise SoftpromptError(
            f"{path} line 1: expected columns 'toxic' and 'neutral1'.. (ParaDetox layout), got {', '.join(columns)}"
        )
    pairs = []
    for _number, row in rows:
        toxic = (row.get("toxic") or "").strip()
        neutral = [text.strip() for c in neutral_columns if (text := row.get(c) or "").strip()]
        if toxic:
            pairs.append(ParaPair(toxic, neutral))
    return pairs
