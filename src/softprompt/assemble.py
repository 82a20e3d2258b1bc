"""Putting the parts together: data splits, template + verbalizer, and the classifier.

Used by ``train`` (from a :class:`RunConfig`) and by ``eval``/``predict`` (from an artifact), so
both build exactly the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifact import read_artifact
from softprompt.backbones import Backbone, load_backbone
from softprompt.config import PromptConfig, RunConfig, load_config
from softprompt.data import Example, read_examples, sample, seeded_split
from softprompt.datasets import get_spec, load_builtin
from softprompt.errors import SoftpromptError
from softprompt.methods import MethodContext, get_method
from softprompt.model import PromptedClassifier
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.classification import ClassificationTask, demonstrations

DEFAULT_DATASET = "rotten-tomatoes"


@dataclass
class Splits:
    """Train/dev/test examples and a description of their source."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def load_splits(config: RunConfig) -> Splits:
    """Examples from ``data.train`` / ``data.dev`` / ``data.test`` files, or a built-in dataset."""
    data = config.data
    if data.train:

        def read(path: str):
            return read_examples(path, data.text_field, data.label_field)

        train = read(data.train)
        notes = list(train.notes)
        if data.dev:
            dev = read(data.dev)
            notes += dev.notes
            train_examples, dev_examples = train.examples, dev.examples
        else:
            if len(train.examples) < 2:
                raise SoftpromptError(f"{data.train}: need at least 2 examples to hold out a dev split")
            held = seeded_split(
                train.examples, {"dev": min(data.dev_size, len(train.examples) // 5 or 1)}, seed=config.seed
            )
            train_examples, dev_examples = held["train"], held["dev"]
            notes.append(f"held out {len(dev_examples)} training examples as dev (no data.dev given)")
        test_examples: list[Example] = []
        if data.test:
            test = read(data.test)
            notes += test.notes
            test_examples = test.examples
        source = {
            "train": data.train,
            "dev": data.dev,
            "test": data.test,
            "text_field": data.text_field,
            "label_field": data.label_field,
        }
        splits = Splits(train_examples, dev_examples, test_examples, source, notes)
    else:
        name = config.dataset or DEFAULT_DATASET
        raw = load_builtin(name)
        splits = Splits(raw["train"], raw["dev"], raw["test"], {"dataset": name})
    splits.train = sample(splits.train, data.max_train, seed=config.seed)
    splits.dev = sample(splits.dev, data.max_eval, seed=config.seed)
    splits.test = sample(splits.test, data.max_eval, seed=config.seed)
    return splits


def resolve_prompting(config: RunConfig) -> tuple[Template, Verbalizer]:
    """The run's template and verbalizer: its own, else its dataset's."""
    spec = None
    if not config.data.train:
        spec = get_spec(config.dataset or DEFAULT_DATASET)
    template_source = config.template or (spec.template if spec else None)
    mapping = config.verbalizer or (spec.verbalizer if spec else None)
    if template_source is None:
        template_source = "{text}\nLabel:"
    if mapping is None:
        raise SoftpromptError("no verbalizer: set verbalizer={label: word, ...} for your data's labels")
    template = Template(template_source)
    method = get_method(config.method)
    if method.uses_soft_tokens and template.num_soft == 0:
        template = template.with_prefix(config.prompt.length)
    if not method.uses_soft_tokens and template.num_soft:
        raise SoftpromptError(
            f"template {template.source!r} has soft slots but method={config.method} has no "
            "soft tokens; remove them or use method=prompt_tuning"
        )
    return template, Verbalizer(mapping)


def validate_examples(task: ClassificationTask, splits: Splits) -> None:
    """Every template field present and every label known, before anything is trained or written."""
    for name, examples in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        where = str(splits.source.get(name) or splits.source.get("dataset"))
        if examples:
            task.template.check_fields(set(examples[0].fields), f"the {name} data ({where})")
            task.label_ids(examples, f"{where} ({name})")


def build_classifier(
    backbone: Backbone,
    method_name: str,
    template: Template,
    verbalizer: Verbalizer,
    prompt: PromptConfig,
    seed: int,
    max_length: int,
    demos: str = "",
    method_options: Any = None,
) -> PromptedClassifier:
    """A :class:`PromptedClassifier` for this backbone, method and prompt.

    ``method_options`` is the method's config section (its defaults when None). A method that
    changes the backbone's layers needs a freshly loaded backbone.
    """
    if backbone.kind == "encoder" and not get_method(method_name).trains:
        raise SoftpromptError(
            f"backbone {backbone.name} is an encoder without an LM head: zero-/few-shot "
            "(method=none) needs a causal LM; train a method instead"
        )
    task = ClassificationTask(
        template,
        verbalizer,
        backbone.tokenizer,
        causal=backbone.kind == "causal",
        max_length=max_length,
        demonstrations=demos,
    )
    words = [w for ws in verbalizer.words for w in ws]
    context = MethodContext(backbone, template.num_soft, words, prompt, method_options, seed)
    method = get_method(method_name).build(context)
    return PromptedClassifier(backbone, method, task, seed=seed)


def classifier_for_config(config: RunConfig, backbone: Backbone, splits: Splits) -> PromptedClassifier:
    """Build and validate the classifier a run config describes."""
    template, verbalizer = resolve_prompting(config)
    demos = demonstrations(template, verbalizer, splits.train, config.fewshot.k, config.seed)
    model = build_classifier(
        backbone,
        config.method,
        template,
        verbalizer,
        config.prompt,
        config.seed,
        config.train.max_length,
        demos,
        config.method_options(),
    )
    validate_examples(model.task, splits)
    return model


def load_classifier(path: str | Path, backbone: Backbone | None = None) -> tuple[PromptedClassifier, dict]:
    """Rebuild a trained classifier from an artifact directory.

    Args:
        path: the artifact directory.
        backbone: an already loaded backbone to attach to (it must be the one the artifact was
            trained on); loaded from the artifact's record when None.

    Raises:
        SoftpromptError: corrupt artifact, or a backbone other than the one it was trained on.
    """
    files = read_artifact(path)
    meta = files.meta
    recorded = meta["backbone"]
    if backbone is None:
        backbone = load_backbone(recorded["name"])
    if backbone.fingerprint != recorded["fingerprint"]:
        raise SoftpromptError(
            f"artifact {path} was trained on backbone '{recorded['name']}' (fingerprint "
            f"{recorded['fingerprint']}), not on '{backbone.name}' ({backbone.fingerprint})"
        )
    config = load_config(base=meta["config"])
    model = build_classifier(
        backbone,
        meta["method"],
        Template(meta["template"]),
        Verbalizer(meta["verbalizer"]),
        config.prompt,
        seed=0,
        max_length=meta["max_length"],
        demos=meta.get("demonstrations", ""),
        method_options=config.method_options(meta["method"]),
    )
    try:
        model.load_export(files.state)
    except RuntimeError as exc:
        raise SoftpromptError(f"artifact {path}: weights do not fit the method ({str(exc).splitlines()[0]})") from None
    model.method.prepare_for_inference()
    return model, meta
