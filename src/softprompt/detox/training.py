"""``softprompt detox train``: the prompts the ``soft_prompt`` and ``experts`` methods need.

- ``kind=soft_prompt``: one prompt trained on ParaDetox's neutral paraphrases (LM loss), with an
  optional unlikelihood term on the toxic sentences; ``out`` is its artifact.
- ``kind=experts``: an expert prompt on the neutral text and an anti-expert prompt on the toxic
  text, both on the same frozen backbone; ``out/expert`` and ``out/anti_expert`` are artifacts.

Each prompt is trained by the one training loop (``softprompt.train.fit``): checkpoints, best
dev loss, ``--resume``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from softprompt.artifact import read_artifact
from softprompt.atomic import atomic_write_json
from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.config import PromptConfig
from softprompt.datasets.paradetox import ParaPair, read_paradetox
from softprompt.detox.config import DetoxTrainConfig
from softprompt.detox.registry import get_steering
from softprompt.errors import SoftpromptError
from softprompt.methods import get_method
from softprompt.methods.base import MethodContext
from softprompt.methods.prompt_tuning import PromptTuning
from softprompt.tasks.lm import LM_TASK, PromptedLM, Row, encode_texts
from softprompt.training.driver import TrainingJob, artifact_saver, run_job
from softprompt.training.resume import run_record
from softprompt.training.run import backbone_record, check_out
from softprompt.training.sharding import refuse_sharded_launch

EXPERTS_FILE = "experts.json"


def _split(pairs: list[ParaPair], config: DetoxTrainConfig) -> tuple[list[ParaPair], list[ParaPair]]:
    pairs = list(pairs)
    random.Random(config.seed).shuffle(pairs)
    if len(pairs) <= config.dev_size:
        raise SoftpromptError(f"{config.data}: {len(pairs)} pairs, not enough for dev_size={config.dev_size}")
    dev, train = pairs[: config.dev_size], pairs[config.dev_size :]
    return (train[: config.max_pairs] if config.max_pairs else train), dev


def _texts(pairs: list[ParaPair], toxic: bool) -> list[str]:
    return [p.toxic for p in pairs] if toxic else [text for p in pairs for text in p.neutral]


def _train_prompt(
    backbone: Backbone,
    config: DetoxTrainConfig,
    out: Path,
    init: str,
    rows: dict[str, list[Row]],
    role: str,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Train one soft prompt on ``rows["train"]``; returns its artifact's dev metrics."""
    prompt = PromptConfig(length=config.prompt.length, init=init)
    context = MethodContext(backbone, prompt.length, [], prompt, None, config.seed)
    model = PromptedLM(
        backbone, get_method(PromptTuning.name).build(context), config.train.max_length, config.unlikelihood
    )
    meta = {
        "task": LM_TASK,
        "method": PromptTuning.name,
        "detox_role": role,
        **model.describe(),
        "backbone": backbone_record(backbone),
        "trainable_parameters": model.method.num_trainable(),
        "saved_parameters": model.method.num_trainable(),
        "data": config.data,
        "config": config.to_dict(),
        "metrics": {},
    }
    dev_metric = lambda: model.dev_metrics(rows["dev"])  # noqa: E731
    save_best = artifact_saver(out, model, meta)
    settings = run_record(config.to_dict())  # config.json: what a resume must match
    job = TrainingJob(out, model, rows["train"], config.train, config.seed, dev_metric, save_best, settings)
    run_job(job, resume, progress)
    return read_artifact(out).meta["metrics"]["dev"]


def train_detox(
    config: DetoxTrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train what ``config.kind`` needs and return ``{role: dev metrics, "seconds": ...}``."""
    refuse_sharded_launch("softprompt detox train")
    started = time.perf_counter()
    out = Path(config.out)
    check_out(out, resume, overwrite, extra=(out / "expert",))
    apply_threads(config.threads)
    train_pairs, dev_pairs = _split(read_paradetox(config.data), config)
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    backbone.require_token_prediction("detox train")

    def rows(pairs: list[ParaPair], toxic: bool, unlikely: bool = False) -> list[Row]:
        encoded = encode_texts(backbone, _texts(pairs, toxic), config.train.max_length)
        return [(ids, unlikely) for ids in encoded if ids]

    results: dict[str, Any] = {}
    if not get_steering(config.kind).anti_expert:  # one prompt, its role the kind's name
        train_rows = rows(train_pairs, False)
        if config.unlikelihood:
            train_rows += rows(train_pairs, True, unlikely=True)
        split = {"train": train_rows, "dev": rows(dev_pairs, False)}
        results[config.kind] = _train_prompt(backbone, config, out, config.init, split, config.kind, resume, progress)
    else:
        for role, toxic, init in (("expert", False, config.init), ("anti_expert", True, config.anti_init)):
            split = {"train": rows(train_pairs, toxic), "dev": rows(dev_pairs, toxic)}
            results[role] = _train_prompt(backbone, config, out / role, init, split, role, resume, progress)
        atomic_write_json(out / EXPERTS_FILE, {"expert": "expert", "anti_expert": "anti_expert", **results})
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results
