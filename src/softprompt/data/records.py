"""Reading and validating labelled examples from JSONL, CSV and TSV files."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.data.tables import dataframe_records, is_table, table_rows
from softprompt.errors import SoftpromptError

READERS = (".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class TemplateInput:
    """What every example shape shares: the template's fields by name (``text`` is the main
    one) and where the row was read, for messages."""

    fields: dict[str, str]
    line: int | None = field(default=None, compare=False, kw_only=True)

    @property
    def text(self) -> str:
        return self.fields.get("text", "")


@dataclass(frozen=True)
class Example(TemplateInput):
    """A classification or tagging input and its label (None: unlabelled)."""

    label: str | None = None


@dataclass
class Dataset:
    """Examples of one split plus where they came from (for error messages)."""

    examples: list[Example]
    source: str
    skipped_empty: int = 0
    notes: list[str] = field(default_factory=list)


def require_file(path: Path, what: str = "data file", kinds: str = ".jsonl, .csv or .tsv") -> None:
    """Refuse a path that is missing or a directory, saying which."""
    if path.is_dir():
        raise SoftpromptError(f"{what} {path} is a directory; give a file ({kinds}) inside it")
    if not path.is_file():
        raise SoftpromptError(f"{what} {path} does not exist")


def check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8 text, naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SoftpromptError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) pairs of a JSONL/CSV/TSV file, with file + line errors."""
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise SoftpromptError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .csv or .tsv)")
    check_utf8(path)
    try:
        return _read_rows(path, suffix)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise SoftpromptError(f"{path}: unreadable as {suffix[1:].upper()} ({exc})") from None


def _read_rows(path: Path, suffix: str) -> list[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:  # Excel's "CSV UTF-8" starts with a BOM
        if suffix in (".jsonl", ".json"):
            rows = []
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SoftpromptError(f"{path} line {number}: malformed JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise SoftpromptError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append((number, row))
            return rows
        reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
        # line_num after reading a row is the physical line it ended on (header is line 1).
        return [(reader.line_num, row) for row in reader]


def read_examples(
    path: str | Path,
    text_field: str = "text",
    label_field: str | None = "label",
    fields: list[str] | None = None,
    key: str = "train",
) -> Dataset:
    """Read labelled examples from a file.

    Args:
        path: a ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet`` file, a ``datasets``
            ``save_to_disk`` folder, or ``hf:NAME[:CONFIG][@SPLIT]``.
        text_field: the column that becomes the template's ``{text}``.
        label_field: the label column, or None for unlabelled input.
        fields: other template fields that every row must have.
        key: the ``data.*`` key it was given as (picks the split of a dataset that has several).

    Rows whose text is empty are skipped and counted (``Dataset.skipped_empty``).

    Raises:
        SoftpromptError: missing/empty file, malformed line (with its number), missing column.
    """
    rows, unit = read_data_file(path, key)
    return examples_from_rows(rows, str(path), text_field, label_field, fields, unit)


def read_data_file(path: str | Path, key: str = "train") -> tuple[list[tuple[int, dict]], str]:
    """The numbered rows of the data given as ``data.<key>`` (a file that must exist and hold at
    least one row, or table data: see :mod:`softprompt.data.tables`), and what a row is called
    in messages ("line" of a text file, "row" of a table)."""
    if is_table(path):
        return table_rows(path, key), "row"
    path = Path(path)
    require_file(path)
    rows = read_rows(path)
    if not rows:
        raise SoftpromptError(f"data file {path} is empty")
    return rows, "line"


def examples_from_records(
    records: Iterable[Mapping[str, Any]], source: str, text_field: str = "text", label_field: str | None = "label"
) -> Dataset:
    """Examples from in-memory records (a list of dicts, a ``datasets.Dataset`` or a DataFrame), checked as a
    file's rows are; errors name ``source`` and the record's position (``item 1`` is the first)."""
    return examples_from_rows(numbered_records(records, source), source, text_field, label_field, unit="item")


def numbered_records(records: Iterable[Mapping[str, Any]], source: str) -> list[tuple[int, dict]]:
    """In-memory records as numbered rows (``item 1`` is the first), each checked to be a dict;
    a pandas or polars DataFrame gives its rows."""
    frame = dataframe_records(records)
    records = records if frame is None else frame
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise SoftpromptError(f"{source} item {number}: expected a dict, got {type(record).__name__}")
        rows.append((number, dict(record)))
    if not rows:
        raise SoftpromptError(f"{source} is empty")
    return rows


def examples_from_rows(
    rows: list[tuple[int, dict]],
    source: str,
    text_field: str = "text",
    label_field: str | None = "label",
    fields: list[str] | None = None,
    unit: str = "line",
) -> Dataset:
    """Validate numbered rows into examples; rows whose text is empty are skipped and counted."""
    extra = [f for f in (fields or []) if f != "text"]
    columns = {text_field: "data.text_field", **dict.fromkeys(extra, "data.text_field")}
    if label_field:
        columns[label_field] = "data.label_field"
    examples, skipped = [], 0
    for number, row in rows:
        where = f"{source} {unit} {number}"
        require_columns(row, columns, where)
        for column in columns:
            if row[column] is None:  # the column exists, this row has no value in it
                raise SoftpromptError(f"{where}: no value for '{column}'; fill it or drop the row")
        values = template_fields(row, text_field, list(columns), where)
        if not values["text"].strip():
            skipped += 1
            continue
        label = str(row[label_field]).strip() if label_field else None
        examples.append(Example(values, label, line=number))
    if not examples:
        raise SoftpromptError(f"{source} has no non-empty texts in column '{text_field}'")
    notes = [f"{source}: skipped {skipped} rows with empty text"] if skipped else []
    return Dataset(examples, source, skipped_empty=skipped, notes=notes)


def require_columns(row: dict, columns: dict[str, str], where: str) -> None:
    """Refuse a row that lacks one of ``columns`` (column name -> the setting that names it),
    listing the columns it has."""
    for column, setting in columns.items():
        if column not in row:
            present = ", ".join(sorted(str(k) for k in row if k is not None))
            raise SoftpromptError(f"{where}: no column '{column}' (columns: {present}); set {setting}=<column>")


def template_fields(row: dict, text_field: str, read: list[str], where: str) -> dict[str, str]:
    """A row's values as template fields (``text`` taken from ``text_field``; nested values are
    not fields), each column in ``read`` checked to be text a tokenizer can take."""
    values = {str(k): str(v) for k, v in row.items() if v is not None and not isinstance(v, (dict, list))}
    values["text"] = "" if row[text_field] is None else str(row[text_field])
    for column in read:
        if row.get(column) is not None:
            require_unicode(str(row[column]), f"{where}, '{column}'")
    return values


def require_unicode(text: str, where: str) -> None:
    """Refuse text a tokenizer cannot take: a lone surrogate (what Python makes of undecodable
    bytes), which it would fail on with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SoftpromptError(
            f"{where}: not valid Unicode (a lone surrogate {text[exc.start]!r} at character {exc.start + 1}); "
            "texts must be UTF-8"
        ) from None


def seeded_split(examples: list[Example], sizes: dict[str, int], seed: int) -> dict[str, list[Example]]:
    """Shuffle with ``seed`` and cut fixed-size splits; the rest is ``train``."""
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = shuffled[start : start + size]
        start += size
    splits["train"] = shuffled[start:]
    return splits


def sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most ``limit`` examples, a seeded sample preserving order."""
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
