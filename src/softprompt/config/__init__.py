"""Run configuration: dataclasses with per-field help, loaded from YAML plus ``key=value`` overrides.

A config is plain data. ``load_config`` merges a YAML file and dotted command-line overrides
(``train.lr=3e-3``) into nested dicts, then builds the dataclasses (:mod:`softprompt.config.recipe`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.config import catalogue
from softprompt.config.compute import ComputeSettings
from softprompt.config.fields import MAX_RUN_SEED, option, require
from softprompt.config.incontext import Decoding, FewshotConfig, GenConfig
from softprompt.config.recipe import build, check_key, merge, parse_overrides, read_yaml
from softprompt.config.trackers import report_to_names
from softprompt.errors import SoftpromptError, did_you_mean

# The sections live in small modules (compute, fields, incontext, trackers, recipe); these are the
# names the rest of softprompt imports from the package. Nothing here imports torch: a config is
# read and checked before the heavy libraries load (methods and tasks are known from the catalogue).
__all__ = [
    "CALIBRATIONS",
    "ComputeSettings",
    "DataConfig",
    "Decoding",
    "FewshotConfig",
    "GenConfig",
    "PromptConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "load_dataclass",
    "method_sections",
    "option",
    "require",
]


@dataclass
class PromptConfig:
    """Soft prompt settings (used by prompt-based methods)."""

    length: int = option("number of soft tokens when the template has no {soft:N} slot", 20)
    init: str = option(
        "random | vocab | labels | text:<words> | from:<artifact> (start from a trained prompt)", "labels"
    )

    def __post_init__(self) -> None:
        require(self.length >= 1, "prompt.length", f"must be >= 1, got {self.length}")
        ok = self.init in ("random", "vocab", "labels") or self.init.startswith(("text:", "from:"))
        choices = "random, vocab, labels, text:<words>, from:<artifact>"
        require(ok, "prompt.init", f"'{self.init}' is not one of {choices}")


# transformers' schedules that need nothing but the warm-up and the number of steps
LIBRARY_SCHEDULES = ("cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


@dataclass
class TrainConfig:
    """The one training loop's settings."""

    lr: float = option("AdamW learning rate", 3e-3)
    batch_size: int = option(
        "examples per forward pass (shared out among processes under accelerate launch); "
        "an optimizer step sees batch_size x grad_accum",
        16,
    )
    grad_accum: int = option("forward passes whose gradients add up to one optimizer step", 1)
    max_steps: int = option("optimizer steps", 300)
    epochs: float | None = option("passes over the training data; when set, replaces max_steps", None)
    warmup_ratio: float = option("fraction of max_steps with linear warm-up", 0.06)
    lr_scheduler: str = option(
        "learning-rate schedule: linear (warm-up from the first step, then decay to 0) | cosine | "
        "cosine_with_restarts | polynomial | constant | constant_with_warmup | inverse_sqrt "
        "(transformers' get_scheduler, with train.warmup_ratio)",
        "linear",
    )
    eval_every: int = option("evaluate on dev and checkpoint every N steps", 50)
    patience: int = option("stop after N evaluations without dev improvement (0 = never)", 3)
    l2: float = option("L2 penalty lambda * ||P||^2 on the trainable parameters", 0.0)
    weight_decay: float = option("AdamW decoupled weight decay", 0.0)
    grad_clip: float = option("clip the gradient norm to this value (0 = off)", 1.0)
    eval_batch_size: int = option("examples per batch when evaluating", 32)
    max_length: int = option("maximum tokens of a rendered example; longer inputs are truncated", 256)
    group_by_length: bool = option(
        "batch rows of similar length together (less padding, faster steps); classifier batches keep the class mix",
        False,
    )
    zero_shot_baseline: bool = option("also report zero-shot test accuracy with the same template", False)
    gradient_checkpointing: bool = option(
        "recompute the backbone's activations in the backward pass (less memory, slower steps)", False
    )
    report_to: str = option(
        "experiment trackers, a comma list: none | tensorboard | wandb | mlflow | comet_ml | aim | clearml | "
        "dvclive | swanlab | trackio (accelerate's; TensorBoard logs go to out/trackers/)",
        "none",
    )

    def __post_init__(self) -> None:
        report_to_names(self.report_to)
        require(math.isfinite(self.lr) and self.lr > 0, "train.lr", f"must be a finite number > 0, got {self.lr}")
        for key in ("l2", "weight_decay", "grad_clip", "warmup_ratio"):
            require(math.isfinite(getattr(self, key)), f"train.{key}", f"must be finite, got {getattr(self, key)}")
        for key in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batch_size", "max_length"):
            require(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        ok = self.epochs is None or (math.isfinite(self.epochs) and self.epochs > 0)
        require(ok, "train.epochs", f"must be a finite number > 0, got {self.epochs}")
        require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        schedules = ("linear", *LIBRARY_SCHEDULES)
        if self.lr_scheduler not in schedules:
            raise SoftpromptError(
                f"config field 'train.lr_scheduler': unknown schedule {self.lr_scheduler!r}"
                f"{did_you_mean(self.lr_scheduler, schedules)}; one of {', '.join(schedules)}"
            )
        require(self.patience >= 0, "train.patience", "must be >= 0")
        require(self.l2 >= 0 and self.weight_decay >= 0, "train.l2", "penalties must be >= 0")


@dataclass
class DataConfig:
    """Where the examples come from when not using a built-in dataset."""

    train: str | None = option("training file (.jsonl, .csv or .tsv; a CoNLL file for task=ner)", None)
    dev: str | None = option("dev file; when absent, dev_size examples are held out of train", None)
    test: str | None = option("test file (optional)", None)
    text_field: str = option("column holding the input text (the template's {text})", "text")
    label_field: str = option("column holding the label", "label")
    target_field: str = option(
        "task=generation: the column(s) holding the output text; several, comma-separated "
        "(neutral1,neutral2), are references for evaluation and each trains as a row",
        "target",
    )
    path: str | None = option("the file a built-in dataset of your own data reads (dataset=paradetox-toxicity)", None)
    dev_size: int = option("examples held out of train for dev when no dev file is given", 200)
    max_train: int | None = option("use at most this many training examples (seeded sample)", None)
    max_eval: int | None = option("evaluate on at most this many dev and test examples (quick runs)", None)

    def __post_init__(self) -> None:
        require(self.dev_size >= 1, "data.dev_size", "must be >= 1")
        for key in ("max_train", "max_eval"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key}", "must be >= 1")


CALIBRATIONS = ("none", "contextual")  # see softprompt.tasks.classification.calibration


@dataclass
class RunConfig(ComputeSettings):
    """Everything one ``softprompt train`` run needs."""

    backbone: str = option("backbone name (softprompt ls backbones) or a local HF dir / .gguf file", "smollm2-135m")
    dataset: str | None = option(
        "built-in dataset (softprompt ls datasets); no default: a run needs it or data.train "
        "(the demo recipe sets rotten-tomatoes); ignored when data.train is set",
        None,
    )
    method: str = option(
        "softprompt ls methods; 'none' = zero-/few-shot without training", catalogue.method_named("PromptTuning")
    )
    task: str = option(
        "softprompt ls tasks: classification, ner (CoNLL files; an encoder) or generation (text to text)",
        "classification",
    )
    out: str = option("artifact directory", "runs/default")
    seed: int = option("random seed (data order, initialisation)", 0)
    template: str | None = option("e.g. '{soft:10} Review: {text}\\nSentiment:'; default: the dataset's", None)
    verbalizer: dict[str, Any] | None = option(  # noqa: RUF009 (option returns a dataclasses.field)
        "label -> word or list of words; default: the dataset's", None
    )
    calibrate: str = option(
        "none | contextual: divide the prompt's own label bias, measured on content-free inputs "
        "(N/A, empty, mask), out of every prediction (classification; Zhao et al. 2021)",
        "none",
    )
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    # Per-method sections (``lora.r=16``), keyed by method name: each the options dataclass its
    # method registers. Filled by load_config; written back as top-level sections by to_dict.
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "per-method sections, e.g. lora.r=16"})

    def __post_init__(self) -> None:
        # torch's generators (seed * 100_003 + epoch orders the batches) and scikit-learn's
        # (the tf-idf baseline) all take a seed in this range.
        require(0 <= self.seed <= MAX_RUN_SEED, "seed", f"must be from 0 to 2**32 - 1, got {self.seed!s:.40}")
        catalogue.check_method(self.method)
        catalogue.check_task(self.task)
        empty = self.template is not None and not self.template.strip()
        require(
            not empty, "template", "is empty; give one such as '{text}\\nLabel:', or leave it out for the dataset's"
        )
        known = ", ".join(CALIBRATIONS)
        require(self.calibrate in CALIBRATIONS, "calibrate", f"'{self.calibrate}' is not one of {known}")
        require(
            self.calibrate == "none" or self.fewshot.select != "similar" or self.fewshot.k == 0,
            "calibrate",
            "contextual calibration estimates the bias of one fixed context; fewshot.select=similar "
            "changes the demonstrations with every input (use select=balanced or random, or calibrate=none)",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, as written to the artifact (method sections at the top level)."""
        data = dataclasses.asdict(self)
        data.update(data.pop("options"))
        return data

    def ignored_sections(self) -> list[str]:
        """Method sections given for a method other than this run's (``lora.r=4`` with
        ``method=prompt_tuning``): nothing reads them."""
        return sorted(name for name in self.options if name != self.method)

    def method_options(self, method: str | None = None) -> Any:
        """The options of ``method`` (default: this run's): its section, else its defaults."""
        name = method or self.method
        sections = method_sections()
        if name not in sections:
            return None
        return self.options.get(name) or sections[name]()


def method_sections() -> dict[str, type]:
    """Method name -> its options dataclass, for the methods that have options (without importing
    the methods: see :mod:`softprompt.config.catalogue`)."""
    return catalogue.option_sections()


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> RunConfig:
    """Load a :class:`RunConfig` from an optional YAML file and ``key=value`` overrides.

    Args:
        path: YAML file with config keys (optional).
        overrides: dotted ``key=value`` strings, applied after the file.
        base: a nested dict applied first (e.g. the config saved by a run being resumed).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge(data, read_yaml(path))
    data = merge(data, parse_overrides(overrides or []))
    sections = method_sections()
    known = [f.name for f in dataclasses.fields(RunConfig) if f.name != "options"]
    for key in data:
        check_key(key)
        if key not in known and key not in sections:
            raise SoftpromptError(f"unknown config key '{key}'{did_you_mean(key, known + list(sections))}")
    found = {name: data.pop(name) for name in list(data) if name in sections}
    config = build(RunConfig, data)
    for name, value in found.items():
        if not isinstance(value, dict):
            raise SoftpromptError(f"config field '{name}' is a section; use {name}.<key>=value")
        config.options[name] = build(sections[name], value, prefix=f"{name}.")
    return config


def load_dataclass(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build config dataclass ``cls`` from an optional YAML file and ``key=value`` overrides."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    return build(cls, merge(data, parse_overrides(overrides or [])))
