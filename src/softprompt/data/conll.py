"""Reading CoNLL-style tagged files: one ``token ... TAG`` line per word, blank lines between
sentences, ``-DOCSTART-`` lines between documents.

Two columns (``token TAG``) and the four of CoNLL-2003 (``token POS CHUNK TAG``) are read alike:
the first column is the word, the last its tag. Tags are converted to IOB2 (an entity starts with
``B-``): IOB1 files, where ``I-`` may open an entity, read the same as IOB2 ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softprompt.data.records import check_utf8, require_file
from softprompt.errors import SoftpromptError

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"


@dataclass(frozen=True)
class Sentence:
    """Words and their IOB2 tags (empty tags for untagged input), and where the sentence starts."""

    words: list[str]
    tags: list[str]
    line: int = 0  # line of its first word in the file (for error messages)


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """``I-X`` that does not continue an ``X`` entity becomes ``B-X`` (idempotent on IOB2)."""
    out = []
    for index, tag in enumerate(tags):
        if tag.startswith("I-"):
            previous = out[index - 1] if index else OUTSIDE
            if previous == OUTSIDE or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def _check_tag(tag: str, path: Path, number: int) -> None:
    if tag != OUTSIDE and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise SoftpromptError(f"{path} line {number}: tag '{tag}' is not O, B-<type> or I-<type>")


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL file.

    Raises:
        SoftpromptError: a missing or empty file, or a line whose column count differs from the
            file's first word line or that has a malformed tag (both with the line number).
    """
    path = Path(path)
    require_file(path, kinds="CoNLL columns: 'token ... TAG' per line")
    if path.suffix.lower() in (".jsonl", ".json"):
        raise SoftpromptError(
            f"{path}: task=ner reads CoNLL files ('token ... TAG' per line, a blank line between sentences), "
            "not JSON lines; convert it, or pass records {'tokens': [...], 'tags': [...]} from Python"
        )
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    columns = 0

    def close() -> None:
        nonlocal words, tags
        if words:
            sentences.append(Sentence(words, iob1_to_iob2(tags), start))
        words, tags = [], []

    check_utf8(path)
    with path.open(encoding="utf-8-sig") as handle:  # a BOM from Windows editors is not a token
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                close()
                continue
            if parts[0] == DOCSTART:
                close()
                continue
            columns = columns or len(parts)
            if len(parts) != columns or columns < 2:
                raise SoftpromptError(
                    f"{path} line {number}: {len(parts)} column(s), expected {max(columns, 2)} "
                    "('token TAG' or 'token POS CHUNK TAG', separated by spaces or tabs)"
                )
            _check_tag(parts[-1], path, number)
            if not words:
                start = number
            words.append(parts[0])
            tags.append(parts[-1])
    close()
    if not sentences:
        raise SoftpromptError(f"data file {path} holds no tagged sentences (empty, or only -DOCSTART- lines)")
    return sentences


def tag_set(sentences: list[Sentence]) -> list[str]:
    """The tags in the data, ``O`` first, then ``B-``/``I-`` of each entity type in name order.

    Both halves of a type are included even when only ``B-`` occurs (single-word entities only).
    """
    types = sorted({tag[2:] for sentence in sentences for tag in sentence.tags if tag != OUTSIDE})
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word + 1)`` of each entity in an IOB2 sequence (a stray ``I-``
    opens an entity, as in the CoNLL scorer)."""
    spans: list[tuple[str, int, int]] = []
    kind, begin = None, 0
    for index, tag in enumerate([*tags, OUTSIDE]):
        continues = tag.startswith("I-") and tag[2:] == kind
        if kind is not None and not continues:
            spans.append((kind, begin, index))
            kind = None
        if tag != OUTSIDE and not continues:
            kind, begin = tag[2:], index
    return spans
