"""``--resume`` continues the same run: settings that change the result may not differ, and
neither may the data files it read (their SHA-256 is kept beside the settings in config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.artifact import RUN_CONFIG_FILE
from softprompt.data.hashes import DATA_HASHES, data_files, data_hashes
from softprompt.errors import SoftpromptError, flag
from softprompt.training.checkpoint import require_checkpoint

if TYPE_CHECKING:
    from softprompt.config import RunConfig

# Settings that change how fast a run goes, never what it computes.
# Decoding (gen.*) only shapes the final evaluation, which a resumed run repeats.
FREE_TO_CHANGE = (
    "out",  # where the run lives, not what it computes: a moved or copied run directory resumes
    "threads",
    "device",
    "train.gradient_checkpointing",
    "train.report_to",  # where progress is reported, not what is computed
    "gen.max_new_tokens",
    "gen.num_beams",
    "gen.do_sample",
    "gen.temperature",
    "gen.top_p",
    "gen.seed",
)
# Settings added after runs were saved: a saved run without them ran with these values.
ADDED_LATER = {
    "precision": "auto",
    "quantize": "none",
    "train.grad_accum": 1,
    "data.target_field": "target",
    "train.report_to": "none",
    "train.lr_scheduler": "linear",
    "calibrate": "none",
}
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


def run_record(settings: dict[str, Any]) -> dict[str, Any]:
    """What config.json holds: the settings, and the SHA-256 of the data files they name."""
    return {**settings, DATA_HASHES: data_hashes(settings)}


def _read_record(out: Path) -> dict[str, Any] | None:
    path = Path(out) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SoftpromptError(f"{path} is unreadable ({exc}); start the run again without {flag('resume')}") from None


def saved_config(out: Path) -> dict[str, Any] | None:
    """The settings a run in ``out`` was started with, or None."""
    record = _read_record(out)
    if record is not None:
        record.pop(DATA_HASHES, None)
    return record


def check_same_data(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a resume whose data files' contents differ from what the run started on, naming
    the file (runs saved before the hashes were recorded are not checked)."""
    saved = (_read_record(out) or {}).get(DATA_HASHES)
    if not saved:
        return
    now = data_hashes(settings)
    for key, digest in saved.items():
        if key in now and now[key] != digest:  # a file now missing is the data loader's to report
            name = data_files(settings).get(key)
            raise SoftpromptError(
                f"{key} file {name} has changed since the run started (its SHA-256 differs); "
                f"{flag('resume')} needs the same data: restore the file, or start a new run with another out="
            )


def check_same_run(saved: dict[str, Any], requested: dict[str, Any], extend: bool = False) -> None:
    """Refuse a resume whose settings differ from the saved run's in anything that changes the
    result, naming the keys. ``extend`` allows a larger ``train.max_steps``."""
    old, new = flatten(saved), flatten(requested)
    # A setting this kind of run has now, missing from a run saved before it existed.
    old.update({key: value for key, value in ADDED_LATER.items() if key not in old and key in new})
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


def check_resumable(out: Path, config: RunConfig, extend: bool) -> None:
    """Before anything is written: a checkpoint to resume, saved by a run with the same settings."""
    require_checkpoint(out)
    check_same_settings(out, config.to_dict(), extend)


def check_same_settings(out: Path, settings: dict[str, Any], extend: bool = False) -> None:
    """A resumed job's settings and data files are those its ``config.json`` recorded (``settings``
    as :func:`run_record` writes them, or without the hashes; a run saved without a config.json
    is not checked)."""
    saved = saved_config(out)
    if saved is None:
        return
    requested = {key: value for key, value in settings.items() if key != DATA_HASHES}
    check_same_run(saved, requested, extend)
    check_same_data(out, requested)
