"""Reading detoxification data: prompt files (RealToxicityPrompts JSONL) and ParaDetox pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.data.records import read_rows, require_file
from softprompt.errors import SoftpromptError

DEFAULT_PROMPT_FIELD = "prompt.text"  # RealToxicityPrompts' layout; plain files may use "text"


@dataclass(frozen=True)
class Prompt:
    """A prompt to continue, with the reference scores its file carries (if any)."""

    text: str
    line: int
    reference: dict[str, Any]  # e.g. {"prompt": {...Perspective scores}, "continuation": {...}}


def _lookup(row: dict, dotted: str) -> Any:
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_prompts(path: str | Path, field: str = DEFAULT_PROMPT_FIELD, limit: int | None = None) -> list[Prompt]:
    """Prompts from a JSONL/CSV/TSV file (``field`` is a dotted path) or a ``.txt`` file (a line each).

    Raises:
        SoftpromptError: a missing file, a row without text at ``field``, or an empty prompt
            (the message names the file and line).
    """
    path = Path(path)
    require_file(path, "prompts file", ".txt, .jsonl, .csv or .tsv")
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        rows = [(number, {"text": line}) for number, line in enumerate(lines, start=1)]
        field = "text"
    else:
        rows = read_rows(path)
    prompts = []
    for number, row in rows:
        text = _lookup(row, field)
        if not isinstance(text, str):
            raise SoftpromptError(
                f"{path} line {number}: no text at field '{field}' (set prompt_field=<dotted.path> to the prompt text)"
            )
        if not text.strip():
            raise SoftpromptError(f"{path} line {number}: empty prompt at field '{field}'; remove the line or fill it")
        reference = {k: v for k, v in row.items() if isinstance(v, dict)}
        prompts.append(Prompt(text, number, reference))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise SoftpromptError(f"{path}: no prompts")
    return prompts
