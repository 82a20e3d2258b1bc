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
from softprompt.conll import Sentence, read_conll, tag_set
from softprompt.data import Example, read_examples, sample, seeded_split
from softprompt.datasets import get_spec, load_builtin
from softprompt.errors import SoftpromptError
from softprompt.methods import MethodContext, get_method
from softprompt.model import PromptedClassifier, TaskModel
from softprompt.prompts import Template, Verbalizer
from softprompt.tagger import TokenTagger
from softprompt.tasks.classification import ClassificationTask, demonstrations
from softprompt.tasks.ner import TaggingTask

DEFAULT_DATASET = "rotten-tomatoes"


@dataclass
class Splits:
    """Train/dev/test examples (tagged sentences for NER) and a description of their source."""

    train: list[Example] | list[Sentence]
    dev: list[Example] | list[Sentence]
    test: list[Example] | list[Sentence]
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
            train_examples, dev_examples = _hold_out_dev(train.examples, config, notes)
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
        raw = load_builtin(name, data.path)
        source = {"dataset": name, **({"path": data.path} if data.path else {})}
        splits = Splits(raw["train"], raw["dev"], raw["test"], source)
    return _limit(splits, config)


def _limit(splits: Splits, config: RunConfig) -> Splits:
    """Apply ``data.max_train`` / ``data.max_eval`` (seeded samples)."""
    splits.train = sample(splits.train, config.data.max_train, seed=config.seed)
    splits.dev = sample(splits.dev, config.data.max_eval, seed=config.seed)
    splits.test = sample(splits.test, config.data.max_eval, seed=config.seed)
    return splits


def _hold_out_dev(train: list, config: RunConfig, notes: list[str]) -> tuple[list, list]:
    """Seeded train/dev split of the training data when no dev file is given."""
    if len(train) < 2:
        raise SoftpromptError(f"{config.data.train}: need at least 2 examples to hold out a dev split")
    held = seeded_split(train, {"dev": min(config.data.dev_size, len(train) // 5 or 1)}, seed=config.seed)
    notes.append(f"held out {len(held['dev'])} training examples as dev (no data.dev given)")
    return held["train"], held["dev"]


def load_ner_splits(config: RunConfig) -> Splits:
    """Tagged sentences from CoNLL files ``data.train`` / ``data.dev`` / ``data.test``."""
    data = config.data
    if not data.train:
        raise SoftpromptError(
            "task=ner needs data.train=PATH: a CoNLL file ('token TAG' per line, blank between sentences)"
        )
    notes: list[str] = []
    train = read_conll(data.train)
    if data.dev:
        dev = read_conll(data.dev)
    else:
        train, dev = _hold_out_dev(train, config, notes)
    test = read_conll(data.test) if data.test else []
    source = {"train": data.train, "dev": data.dev, "test": data.test, "format": "conll"}
    return _limit(Splits(train, dev, test, source, notes), config)


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
    for_inference: bool = False,
) -> PromptedClassifier:
    """A :class:`PromptedClassifier` for this backbone, method and prompt.

    ``method_options`` is the method's config section (its defaults when None). A method that
    changes the backbone's layers needs a freshly loaded backbone. ``for_inference``: the
    method's state will be loaded from an artifact (initialisation sources are not read).
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
    context = MethodContext(backbone, template.num_soft, words, prompt, method_options, seed, for_inference)
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


def build_tagger(
    backbone: Backbone,
    method_name: str,
    tags: list[str],
    prompt: PromptConfig,
    seed: int,
    max_length: int,
    method_options: Any = None,
    for_inference: bool = False,
) -> TokenTagger:
    """A :class:`TokenTagger` for this encoder, method and tag set.

    Soft-token methods put ``prompt.length`` soft tokens after ``[CLS]``. The window is
    ``max_length`` tokens, less what position embeddings the method's prefixes take.
    """
    if backbone.kind != "encoder":
        raise SoftpromptError(
            f"task=ner needs an encoder backbone (e.g. backbone=minilm-l6); {backbone.name} is {backbone.kind}"
        )
    spec = get_method(method_name)
    if not spec.trains:
        raise SoftpromptError("task=ner needs a trained tag head: choose a method other than 'none'")
    num_soft = prompt.length if spec.uses_soft_tokens else 0
    kinds = sorted({tag[2:].lower() for tag in tags if tag != "O"})
    method = spec.build(MethodContext(backbone, num_soft, kinds, prompt, method_options, seed, for_inference))
    positions = getattr(backbone.model.config, "max_position_embeddings", None) or max_length
    window = min(max_length, positions - method.prefix_length())
    task = TaggingTask(backbone.tokenizer, tags, num_soft, window)
    return TokenTagger(backbone, method, task, seed=seed)


def tagger_for_config(config: RunConfig, backbone: Backbone, splits: Splits) -> TokenTagger:
    """Build the tagger a run config describes, its tag set read from the training data."""
    return build_tagger(
        backbone,
        config.method,
        tag_set(splits.train),
        config.prompt,
        config.seed,
        config.train.max_length,
        config.method_options(),
    )


def model_for_config(config: RunConfig, backbone: Backbone, splits: Splits) -> TaskModel:
    """The classifier or tagger of ``config.task``."""
    if config.task == "ner":
        return tagger_for_config(config, backbone, splits)
    return classifier_for_config(config, backbone, splits)


def load_classifier(path: str | Path, backbone: Backbone | None = None) -> tuple[PromptedClassifier, dict]:
    """Rebuild a trained classifier from an artifact directory (see :func:`load_model`)."""
    model, meta = load_model(path, backbone)
    if not isinstance(model, PromptedClassifier):
        raise SoftpromptError(f"artifact {path} is a {meta['task']} model, not a classifier")
    return model, meta


def load_model(path: str | Path, backbone: Backbone | None = None) -> tuple[TaskModel, dict]:
    """Rebuild a trained classifier or tagger from an artifact directory.

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
    options = config.method_options(meta["method"])
    if meta.get("task") == "ner":
        model: TaskModel = build_tagger(
            backbone, meta["method"], meta["tags"], config.prompt, 0, meta["max_length"], options, for_inference=True
        )
    else:
        model = build_classifier(
            backbone,
            meta["method"],
            Template(meta["template"]),
            Verbalizer(meta["verbalizer"]),
            config.prompt,
            seed=0,
            max_length=meta["max_length"],
            demos=meta.get("demonstrations", ""),
            method_options=options,
            for_inference=True,
        )
    try:
        model.load_export(files.state)
    except RuntimeError as exc:
        raise SoftpromptError(f"artifact {path}: weights do not fit the method ({str(exc).splitlines()[0]})") from None
    model.method.prepare_for_inference()
    return model, meta
