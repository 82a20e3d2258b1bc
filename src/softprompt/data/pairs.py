"""Text-to-text examples: the template's fields and one or more reference outputs.

``data.target_field`` names the output column, or several (``neutral1,neutral2,neutral3``):
every non-empty one is a reference for evaluation, and each trains as a row of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.data.records import numbered_records, read_data_file
from softprompt.errors import SoftpromptError


@dataclass(frozen=True)
class TextPair:
    """An input (template fields; ``text`` is the main one) and its reference outputs."""

    fields: dict[str, str]
    targets: tuple[str, ...]
    line: int | None = field(default=None, compare=False)  # where it was read, for messages

    @property
    def text(self) -> str:
        return self.fields.get("text", "")


def target_columns(spec: str) -> list[str]:
    """``"neutral1, neutral2"`` -> ``["neutral1", "neutral2"]``."""
    columns = [c.strip() for c in spec.split(",") if c.strip()]
    if not columns:
        raise SoftpromptError("config field 'data.target_field': name the output column, e.g. data.target_field=target")
    return columns


def pairs_from_rows(
    rows: list[tuple[int, dict]],
    source: str,
    text_field: str,
    target_field: str,
    fields: list[str] | None = None,
    unit: str = "line",
) -> list[TextPair]:
    """Validate numbered rows into pairs.

    Raises:
        SoftpromptError: a missing text or target column, or a row whose targets are all empty
            (naming ``source`` and the row's line).
    """
    columns = target_columns(target_field)
    pairs = []
    for number, row in rows:
        where = f"{source} {unit} {number}"
        present = ", ".join(sorted(str(k) for k in row if k is not None))
        for column in [text_field, *[f for f in fields or [] if f != "text"], columns[0]]:
            if column not in row:
                hint = "data.target_field" if column == columns[0] else "data.text_field"
                raise SoftpromptError(f"{where}: no column '{column}' (columns: {present}); set {hint}=<column>")
        values = {str(k): str(v) for k, v in row.items() if v is not None and not isinstance(v, (dict, list))}
        values["text"] = str(row[text_field] or "")
        if not values["text"].strip():
            raise SoftpromptError(f"{where}: empty input in column '{text_field}'; fill it or drop the row")
        targets = tuple(str(row[c]).strip() for c in columns if row.get(c) is not None and str(row[c]).strip())
        if not targets:
            raise SoftpromptError(
                f"{where}: empty target (column{'s' if len(columns) > 1 else ''} {', '.join(columns)}); "
                "fill it or drop the row"
            )
        pairs.append(TextPair(values, targets, number))
    if not pairs:
        raise SoftpromptError(f"{source} has no rows")
    return pairs


def read_pairs(path: str | Path, text_field: str, target_field: str, fields: list[str] | None = None) -> list[TextPair]:
    """Input/output pairs of a ``.jsonl``, ``.csv`` or ``.tsv`` file (see :func:`pairs_from_rows`)."""
    return pairs_from_rows(read_data_file(Path(path)), str(path), text_field, target_field, fields)


def pairs_from_records(
    records: Iterable[Mapping[str, Any]], source: str, text_field: str, target_field: str
) -> list[TextPair]:
    """Pairs from in-memory records (``item 1`` is the first in messages)."""
    return pairs_from_rows(numbered_records(records, source), source, text_field, target_field, unit="item")
