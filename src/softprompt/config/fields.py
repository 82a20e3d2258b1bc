"""How a config field is declared and checked: help text in the field's metadata, one-line errors."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from softprompt.errors import SoftpromptError

MAX_RUN_SEED = 2**32 - 1
MAX_GEN_SEED = 2**63 - 1  # what a torch.Generator takes


def option(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A config dataclass field carrying its help text in metadata (shown by ``--help`` and in
    the generated configuration reference)."""
    if default is dataclasses.MISSING:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


def require(condition: bool, key: str, message: str) -> None:
    """Raise the one-line error of a bad config value unless ``condition`` holds."""
    if not condition:
        raise SoftpromptError(f"config field '{key}': {message}")
