"""What ``softprompt retrain`` will do, worked out and checked before torch loads: the parent's
record and settings, the feedback it trains on and the newest share held out for the gate, the
data its forgetting guard and the gate's dev split read, and where the new version goes.

Every mistake here is one line (:class:`~softprompt.errors.SoftpromptError`) and nothing is
written: the command answers in a second, before the backbone loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifact import TASK_FILE
from softprompt.config import RunConfig, catalogue, load_config, option, require
from softprompt.config.recipe import build, merge
from softprompt.continual.config import EwcConfig
from softprompt.errors import SoftpromptError, flag
from softprompt.lifecycle.feedback import training_row
from softprompt.lifecycle.gate import gate_metric
from softprompt.lifecycle.parent_data import check_data

logger = logging.getLogger(__name__)

GUARDS = ("replay", "ewc")
FRESH_METHOD = catalogue.method_named("PromptTuning")  # what a zero-/few-shot parent starts


@dataclass
class RetrainSettings:
    """The ``retrain.*`` keys: the hold-out, the guard against forgetting, the gate's tolerance."""

    guard: str = option(
        "replay (the parent's own training rows mixed with the feedback) | ewc (a Fisher-weighted "
        "pull toward the parent's weights); both read the parent's training data",
        "replay",
    )
    replay: float = option("with guard=replay: replayed training rows per feedback row; 0 turns the guard off", 1.0)
    holdout: float = option("share of the newest feedback held out as the gate's test (at least one row)", 0.2)
    max_dev_drop: float | None = option(
        "how far the candidate's dev score may fall below the parent's, on a 0-1 scale (default 0.005: "
        "0.5 accuracy points; 0.01 for chrF / 100: 1 chrF point); negative: it must rise by that much",
        None,
    )
    ewc: EwcConfig = field(default_factory=EwcConfig)

    def __post_init__(self) -> None:
        require(self.guard in GUARDS, "retrain.guard", f"'{self.guard}' is not one of {', '.join(GUARDS)}")
        require(math.isfinite(self.replay) and self.replay >= 0, "retrain.replay", "must be a number >= 0")
        require(0 < self.holdout < 1, "retrain.holdout", "must be between 0 and 1 (0.2: the newest 20%)")
        drop = self.max_dev_drop
        require(drop is None or -1 <= drop <= 1, "retrain.max_dev_drop", "must be between -1 and 1")

    @property
    def reads_training_data(self) -> bool:
        """Whether the guard reads the parent's training rows (replay of some, or EWC's Fisher)."""
        return self.guard == "ewc" or self.replay > 0


@dataclass
class RetrainPlan:
    """One checked ``retrain``: everything the run needs, nothing loaded yet.

    Attributes:
        artifact: the parent's artifact directory.
        meta: the parent's ``task.json``.
        config: the candidate's run: the parent's settings with the overrides on top.
        settings: the ``retrain.*`` keys.
        task: the task's name in the store.
        store: the store as given (a URL without its password).
        train: the feedback rows (store rows) that train, oldest first.
        held_out: the newest feedback rows, the gate's test.
        kind: ``classify`` or ``generate``: what the feedback is, and so the gate's metric.
        continues: the candidate starts from the parent's weights (same method); else a fresh prompt.
        out: where the new version goes.
        overwrite: replace what ``out`` holds.
    """

    artifact: Path
    meta: dict[str, Any]
    config: RunConfig
    settings: RetrainSettings
    task: str
    store: str
    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    kind: str
    continues: bool
    out: Path
    overwrite: bool = False


def plan_retrain(
    artifact: str | Path,
    db: str,
    out: str | Path | None,
    task: str | None = None,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> RetrainPlan:
    """Check a retrain and work out what it does (no torch; nothing written).

    Args:
        artifact: the served artifact directory (its folder name is the task's name in the store).
        db: the capture store (a file path or an SQLAlchemy URL).
        out: the new artifact directory.
        task: the task's name in the store, when not the folder's name.
        settings: run settings over the parent's (nested, e.g. ``{"train": {"max_steps": 50}}``)
            and the ``retrain`` section (:class:`RetrainSettings`).
        overwrite: replace a non-empty ``out``.

    Raises:
        SoftpromptError: a missing artifact or store, no feedback to train on, training data
            that moved or changed, an ``out`` that holds something, a bad setting.
    """
    artifact = Path(artifact)
    meta = _read_record(artifact)
    given = dict(settings or {})
    section = given.pop("retrain", None) or {}
    if not isinstance(section, dict):
        raise SoftpromptError("config field 'retrain' is a section; use retrain.<key>=value")
    retrain_settings = build(RetrainSettings, section, prefix="retrain.")
    if retrain_settings.reads_training_data and not learned_from_training_split(meta):
        # Nothing to forget: replaying (or anchoring to) labels the parent never learned would
        # train on data the task never had. The feedback so far (all of it, each round) trains.
        logger.info("retrain: the parent never learned from its training split (zero-/few-shot): no replay")
        retrain_settings = dataclasses.replace(retrain_settings, guard="replay", replay=0.0)
    if out is None or not str(out).strip():
        raise SoftpromptError("give out=DIR: the folder the new version is written to")
    config = _candidate_config(meta, given, str(out))
    out = Path(out)
    check_out(out, artifact, overwrite)
    name = task or artifact.resolve().name
    rows = _feedback(db, name)
    kind = rows[0]["kind"]
    held = held_out_count(len(rows), retrain_settings.holdout)
    train, held_out = rows[: len(rows) - held], rows[len(rows) - held :]
    gate_metric(kind, retrain_settings.max_dev_drop)  # the kind is one the gate scores
    check_data(config, artifact, retrain_settings.guard, retrain_settings.reads_training_data)
    continues = config.method == meta.get("method")  # a method that trains: _candidate_config saw to it
    return RetrainPlan(
        artifact, meta, config, retrain_settings, name, _shown(db), train, held_out, kind, continues, out, overwrite
    )


def learned_from_training_split(meta: dict[str, Any]) -> bool:
    """Whether the artifact ``meta`` records learned from its run's training split: a version
    that ``retrain`` made did when its guard read that split; any other when its method trains
    (a zero-/few-shot artifact read no labels). A chain of retrains from a zero-shot start so
    never replays the original training split's labels."""
    lineage = meta.get("lineage")
    if isinstance(lineage, dict):
        return (lineage.get("guard") or {}).get("kind") in GUARDS
    return bool(catalogue.check_method(str(meta.get("method"))).settings["trains"])


def _read_record(artifact: Path) -> dict[str, Any]:
    """The parent's ``task.json`` (its weights are checked against it when they load)."""
    if not artifact.is_dir():
        raise SoftpromptError(f"artifact {artifact}: no such folder (give the artifact folder the task is served from)")
    try:
        meta = json.loads((artifact / TASK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoftpromptError(
            f"artifact {artifact}: no {TASK_FILE} (give the folder `softprompt train` wrote)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SoftpromptError(f"artifact {artifact / TASK_FILE} is corrupt ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise SoftpromptError(f"artifact {artifact}: {TASK_FILE} records no run settings (config); retrain needs them")
    return meta


def _candidate_config(meta: dict[str, Any], given: dict[str, Any], out: str) -> RunConfig:
    """The parent's recorded settings with ``given`` on top; a parent that trained nothing
    (zero-/few-shot) starts a prompt unless a method is given."""
    base = dict(meta["config"])
    if "method" not in given and not catalogue.check_method(str(base.get("method"))).settings["trains"]:
        given = {**given, "method": FRESH_METHOD}
    config = load_config(base=merge(base, {**given, "out": out}))
    declared = catalogue.check_method(config.method).settings
    if not declared["trains"]:
        raise SoftpromptError(f"method={config.method} trains nothing; retrain needs a method that trains")
    if declared["changes_layers"]:
        raise SoftpromptError(
            f"method={config.method} changes the backbone's layers; retrain continues soft-prompt methods "
            "(prompt_tuning, ptuning...); train a new version of this task with `softprompt train`"
        )
    return config


def check_out(out: Path, artifact: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, the parent itself, or a folder with something in it
    (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise SoftpromptError(f"out={out} is a file; give a folder for the new version")
    if out.exists() and out.resolve() == artifact.resolve():
        raise SoftpromptError(f"out={out} is the parent artifact itself; write the new version to another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SoftpromptError(f"out={out} is not empty; give another out=, or {flag('overwrite')} to replace it")


def _feedback(db: str, task: str) -> list[dict[str, Any]]:
    """The feedback in force for ``task`` that trains (with its row in ``train_row``), oldest first."""
    from softprompt.lifecycle.store import Store  # SQLAlchemy: only once the settings are right

    if "://" not in db and not Path(db).is_file():
        raise SoftpromptError(f"--db {db}: no such file (give the store of `softprompt serve --capture`)")
    store = Store(db, create=False)
    try:
        rows = [row for row in store.latest_feedback(task) if training_row(row) is not None]
        given = len(rows) or sum(1 for _ in store.latest_feedback(task))
        others = [] if rows else sorted({r["task"] for r in store.latest_feedback() if training_row(r)} - {task})
    finally:
        store.close()
    if not rows:
        raise SoftpromptError(_no_feedback(task, _shown(db), given, others))
    if len(rows) < 2:
        raise SoftpromptError(
            f"task '{task}' has 1 feedback to train on in {_shown(db)}; retrain needs at least 2 "
            "(the newest is held out to test the new version)"
        )
    kinds = sorted({row["kind"] for row in rows})
    if len(kinds) > 1:
        raise SoftpromptError(f"task '{task}' in {_shown(db)} has feedback of several kinds ({', '.join(kinds)})")
    return rows


def _no_feedback(task: str, store: str, given: int, others: list[str]) -> str:
    """Why there is nothing to train on, and where feedback is."""
    if given:
        return (
            f"task '{task}' has {given} feedback in {store}, none with a right answer to train on "
            "(a zero or negative score says only that an answer was wrong)"
        )
    if others:
        return (
            f"no feedback for task '{task}' in {store}; it holds feedback for: {', '.join(others)} (give --task NAME)"
        )
    return f"no feedback for task '{task}' in {store}; it holds no feedback yet (POST /v1/feedback to the server)"


def held_out_count(count: int, share: float) -> int:
    """Rows held out of ``count``: ``share`` of them, rounded, at least 1 and leaving 1 to train."""
    return min(count - 1, max(1, round(share * count)))


def _shown(db: str) -> str:
    """The store as messages and the lineage name it: a URL without its password."""
    if "://" not in db:
        return db
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(db).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return db
