"""Text-to-text examples: the template's fields and one or more reference outputs.

``data.target_field`` names the output column, or several (``neutral1,neutral2,neutral3``):
every non-empty one is a reference for evaluation, and each trains as a row of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.data.records import TemplateInput, numbered_records, read_data_file, require_columns, template_fields
from softprompt.errors import SoftpromptError


@dataclass(frozen=True)
class TextPair(TemplateInput):
    """A text-to-text input and its reference outputs (at least one)."""

    targets: tuple[str, ...] = ()


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
    targets_in = target_columns(target_field)
    extra = [f for f in fields or [] if f != "text"]
    required = {text_field: "data.text_field", **dict.fromkeys(extra, "data.text_field")}
    required[targets_in[0]] = "data.target_field"
    pairs = []
    for number, row in rows:
        where = f"{source} {unit} {number}"
        require_columns(row, required, where)
        values = template_fields(row, text_field, [*required, *targets_in], where)
        if not values["text"].strip():
            raise SoftpromptError(f"{where}: empty input in column '{text_field}'; fill it or drop the row")
        targets = tuple(str(row[c]).strip() for c in targets_in if row.get(c) is not None and str(row[c]).strip())
        if not targets:
            raise SoftpromptError(
                f"{where}: empty target (column{'s' if len(targets_in) > 1 else ''} {', '.join(targets_in)}); "
                "fill it or drop the row"
            )
        pairs.append(TextPair(values, targets, line=number))
    if not pairs:
        raise SoftpromptError(f"{source} has no rows")
    return pairs


def read_pairs(
    path: str | Path, text_field: str, target_field: str, fields: list[str] | None = None, key: str = "train"
) -> list[TextPair]:
    """Input/output pairs of a data file or table data given as ``data.<key>`` (see
    :func:`pairs_from_rows` and :mod:`softprompt.data.tables`)."""
    rows, unit = read_data_file(path, key)
    return pairs_from_rows(rows, str(path), text_field, target_field, fields, unit)


def pairs_from_records(
    records: Iterable[Mapping[str, Any]], source: str, text_field: str, target_field: str
) -> list[TextPair]:
    """Pairs from in-memory records (``item 1`` is the first in messages)."""
    return pairs_from_rows(numbered_records(records, source), source, text_field, target_field, unit="item")
