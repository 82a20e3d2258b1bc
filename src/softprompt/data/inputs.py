"""What the public API takes from a caller's hands, checked: texts, records (a DataFrame read by
rows) and a batch size, each refused in one line that names what is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from softprompt.data.records import require_unicode
from softprompt.data.splits import Records
from softprompt.data.tables import dataframe_records, is_dataframe
from softprompt.errors import SoftpromptError


def checked_texts(texts: Any) -> list[str]:
    """The inputs of predict/generate as a list of strings, or a one-line error naming the bad one."""
    if is_dataframe(texts):  # iterating it would give the column names
        raise SoftpromptError(
            "texts must be a string or a list of strings, got a DataFrame; pass one column (df['text'])"
        )
    if isinstance(texts, (bytes, Mapping)) or not isinstance(texts, Iterable):
        raise SoftpromptError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            shown = "None" if text is None else f"{text!r:.40} ({type(text).__name__})"
            raise SoftpromptError(f"texts must be strings; item {number} is {shown}")
        require_unicode(text, f"texts item {number}")
    return texts


def checked_batch_size(value: Any) -> int:
    """``batch_size`` checked: a whole number >= 1 (0 or a negative one would batch nothing)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SoftpromptError(f"batch_size must be a whole number >= 1, got {value!r:.40}")
    return value


def checked_records(data: Records, name: str) -> Records:
    """Refuse a single dict or a string where a list of records (dicts) belongs; a DataFrame gives its rows."""
    frame = dataframe_records(data)
    if frame is not None:
        return frame
    if isinstance(data, (Mapping, str, bytes)) or not isinstance(data, Iterable):
        raise SoftpromptError(f"{name} must be a list of records (dicts), got a {type(data).__name__}")
    return data
