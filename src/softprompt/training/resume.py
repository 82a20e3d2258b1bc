"""``--resume`` continues the same run: settings that change the result may not differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt.artifact import RUN_CONFIG_FILE
from softprompt.errors import SoftpromptError, flag

# Settings that change how fast a run goes, never what it computes.
# Decoding (gen.*) only shapes the final evaluation, which a resumed run repeats.
FREE_TO_CHANGE = (
    "threads",
    "device",
    "train.gradient_checkpointing",
    "gen.max_new_tokens",
    "gen.num_beams",
    "gen.do_sample",
    "gen.temperature",
    "gen.top_p",
    "gen.seed",
)
# Settings added after runs were saved: a saved run without them ran with these values.
ADDED_LATER = {"precision": "auto", "quantize": "none", "train.grad_accum": 1, "data.target_field": "target"}
EXTENDABLE = "train.max_steps"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (the verbalizer stays one value)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "verbalizer":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def saved_config(out: Path) -> dict[str, Any] | None:
    """The settings a run in ``out`` was started with, or None."""
    path = Path(out) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SoftpromptError(f"{path} is unreadable ({exc}); start the run again without {flag('resume')}") from None


def check_same_run(saved: dict[str, Any], requested: dict[str, Any], extend: bool = False) -> None:
    """Refuse a resume whose settings differ from the saved run's in anything that changes the
    result, naming the keys. ``extend`` allows a larger ``train.max_steps``."""
    old, new = flatten(saved), flatten(requested)
    old.update({key: value for key, value in ADDED_LATER.items() if key not in old})
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in FREE_TO_CHANGE or old.get(key) == new.get(key):
            continue
        if key == EXTENDABLE and extend and (new.get(key) or 0) >= (old.get(key) or 0):
            continue
        changed.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    if changed:
        grows = any(c.startswith(EXTENDABLE) for c in changed)
        hint = f"; {EXTENDABLE} may grow with {flag('extend')}" if grows else ""
        raise SoftpromptError(
            f"{flag('resume')} continues the same run, but these settings differ from the saved run's: "
            f"{', '.join(changed)}. Drop them, or start a new run with another out={hint}"
        )
