"""Classification: a template, a verbalizer and accuracy. Built from a run config or rebuilt from
an artifact; the batching is :mod:`softprompt.tasks.classification.batches`."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from softprompt.backbones import Backbone
from softprompt.config import PromptConfig, RunConfig
from softprompt.data.records import Example, examples_from_records, read_examples
from softprompt.data.splits import DEFAULT_DATASET, SPLITS, Records, Splits, example_splits
from softprompt.errors import SoftpromptError
from softprompt.methods import MethodContext, get_method, soft_token_method, untrained_method
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.base import evaluate
from softprompt.tasks.classification.baselines import tfidf_accuracy
from softprompt.tasks.classification.batches import ClassificationTask, demonstration_pool
from softprompt.tasks.classification.calibration import calibrate, load_calibration
from softprompt.tasks.classification.model import PromptedClassifier, label_probabilities
from softprompt.tasks.fewshot import SimilarDemonstrations, choose_demonstrations, load_demonstrations
from softprompt.tasks.registry import CLASSIFY, TaskSpec, fit_soft_slots, register_task

PLAIN_TEMPLATE = "{text}\nLabel:"  # when neither the run nor its dataset gives one


def resolve_prompting(config: RunConfig, announce: bool = False) -> tuple[Template, Verbalizer]:
    """The run's template and verbalizer: its own, else its dataset's (``announce``: log how the
    template was fitted to the method)."""
    from softprompt.datasets import get_spec  # late: reads the package's dataset files

    spec = None
    if not config.data.train:
        spec = get_spec(config.dataset or DEFAULT_DATASET)
        if spec.task != Classification.name:
            raise SoftpromptError(f"dataset '{spec.name}' is for task={spec.task}; set task={spec.task}")
    template_source = config.template or (spec.template if spec else None)
    mapping = config.verbalizer or (spec.verbalizer if spec else None)
    if template_source is None:
        template_source = PLAIN_TEMPLATE
    if mapping is None:
        raise SoftpromptError("no verbalizer: set verbalizer={label: word, ...} for your data's labels")
    return fit_soft_slots(Template(template_source), config, announce), Verbalizer(mapping)


def validate_examples(task: ClassificationTask, splits: Splits) -> None:
    """Every template field present and every label known, before anything is trained or written."""
    for name in SPLITS:
        examples, where = getattr(splits, name), splits.where(name)
        if examples:
            task.template.check_fields(set(examples[0].fields), f"the {name} data ({where})")
            task.label_ids(examples, f"{where} ({name})")


def build_classifier(
    backbone: Backbone,
    method_name: str,
    template: Template,
    verbalizer: Verbalizer,
    prompt: PromptConfig,
    seed: int = 0,
    max_length: int = 256,
    demos: str = "",
    method_options: Any = None,
    for_inference: bool = False,
    chooser: SimilarDemonstrations | None = None,
) -> PromptedClassifier:
    """A :class:`PromptedClassifier` for this backbone, method and prompt.

    Args:
        backbone: the frozen model (a method that changes its layers needs a fresh one).
        method_name: a registered method (``softprompt ls methods``).
        template: the prompt, with ``{soft}`` slots for soft-token methods.
        verbalizer: label -> word(s).
        prompt: soft prompt settings (length, initialisation).
        seed: initialises the method's parameters.
        max_length: tokens of a rendered example; longer inputs are truncated.
        demos: few-shot demonstrations put before each input.
        method_options: the method's config section (its defaults when None).
        for_inference: the method's state will be loaded from an artifact (no init sources read).
        chooser: demonstrations chosen per input (``fewshot.select=similar``) instead of ``demos``.
    """
    if not backbone.predicts_tokens and not get_method(method_name).trains:
        raise SoftpromptError(
            f"backbone {backbone.name} is an encoder without an LM head: zero-/few-shot "
            "(method=none) needs a causal LM; train a method instead"
        )
    task = ClassificationTask(
        template,
        verbalizer,
        backbone.tokenizer,
        causal=backbone.predicts_tokens,
        max_length=max_length,
        demonstrations=demos,
        chooser=chooser,
    )
    words = [w for ws in verbalizer.words for w in ws]
    context = MethodContext(backbone, template.num_soft, words, prompt, method_options, seed, for_inference)
    method = get_method(method_name).build(context)
    return PromptedClassifier(backbone, method, task, seed=seed)


@register_task("classification", "label texts through a template and a verbalizer (accuracy)")
class Classification(TaskSpec):
    metric = "accuracy"
    metric_label = "accuracy"
    predict_command = "predict"
    prompt_baselines = True
    baseline_names = ("zero_shot", "few_shot", "tfidf")
    record_fields: ClassVar[dict[str, type]] = {"template": str, "verbalizer": dict}
    calibrates = True
    served_as = CLASSIFY

    def calibrate(self, model: PromptedClassifier) -> dict[str, Any]:
        calibrate(model)
        return model.calibration_record()

    def offline_baselines(self, config: RunConfig, splits: Splits, wanted: list[str]) -> list[tuple[str, dict]]:
        if "tfidf" not in wanted:
            return []
        accuracy, description = tfidf_accuracy(splits.train, splits.test or splits.dev, config.seed)
        return [(description, {"accuracy": accuracy})]

    def load_splits(self, config: RunConfig, records: dict[str, Records] | None = None) -> Splits:
        return example_splits(config, records)

    def from_records(self, records: Records, source: str, meta: dict[str, Any]) -> list[Example]:
        data = meta.get("data", {})
        text_field, label_field = data.get("text_field", "text"), data.get("label_field", "label")
        return examples_from_records(records, source, text_field, label_field).examples

    def check(self, config: RunConfig) -> None:
        super().check(config)
        resolve_prompting(config)

    def build(self, config: RunConfig, backbone: Backbone, splits: Splits) -> PromptedClassifier:
        template, verbalizer = resolve_prompting(config, announce=True)
        pool = demonstration_pool(template, verbalizer, splits.train) if config.fewshot.k else []
        demos, chooser = choose_demonstrations(pool, config.fewshot, config.seed, template.fields, verbalizer.labels)
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
            chooser=chooser,
        )
        validate_examples(model.task, splits)
        return model

    def load(self, meta: dict[str, Any], config: RunConfig, backbone: Backbone) -> PromptedClassifier:
        model = build_classifier(
            backbone,
            meta["method"],
            Template(meta["template"]),
            Verbalizer(meta["verbalizer"]),
            config.prompt,
            max_length=meta["max_length"],
            demos=meta.get("demonstrations", ""),
            method_options=config.method_options(meta["method"]),
            for_inference=True,
            chooser=load_demonstrations(meta.get("fewshot")),
        )
        load_calibration(model, meta.get("calibration"))
        return model

    def baselines(self, config: RunConfig, backbone: Backbone, splits: Splits, progress: str | None) -> dict:
        """``{"zero_shot_test": metrics}``: the template minus its soft tokens, when asked for.
        Measured before the method attaches (methods such as LoRA change the backbone's layers)."""
        cfg = config.train
        if not (cfg.zero_shot_baseline and backbone.predicts_tokens and splits.test):
            return {}
        template, verbalizer = resolve_prompting(config)
        plain = build_classifier(
            backbone,
            untrained_method(),
            template.without_soft(),
            verbalizer,
            config.prompt,
            config.seed,
            cfg.max_length,
        )
        return {"zero_shot_test": evaluate(plain, splits.test, cfg.eval_batch_size, None, "test", progress)}

    def compare_template(self, config: RunConfig) -> Template:
        # The user's template with its soft slots: methods without soft tokens get it without them.
        template, _ = resolve_prompting(dataclasses.replace(config, method=soft_token_method()))
        return template

    def read_eval_data(
        self, path: str, meta: dict[str, Any], model, fields: dict[str, str | None], key: str = "test"
    ) -> list:
        recorded = meta.get("data", {})
        text_field = fields.get("text_field") or recorded.get("text_field", "text")
        label_field = fields.get("label_field") or recorded.get("label_field", "label")
        return read_examples(path, text_field, label_field, fields=model.task.template.fields, key=key).examples

    def builtin_split(self, name: str, path: str | None, split: str, model: PromptedClassifier) -> list[Example]:
        from softprompt.datasets import load_builtin  # late: reads package data

        examples = load_builtin(name, path)[split]
        model.task.template.check_fields(set(examples[0].fields), f"{name} ({split})")
        return examples

    def summary(self, metrics: dict[str, Any], best_step: int, trained: bool, method: str) -> list[str]:
        lines = []
        if "zero_shot_test" in metrics:
            zero = metrics["zero_shot_test"]
            lines.append(
                f"zero-shot test accuracy: {100 * zero['accuracy']:.1f}% (same template without soft tokens, "
                f"n={zero['n']})"
            )
        if "test" in metrics:
            lines.append(
                f"{'tuned' if trained else 'method=' + method} test accuracy: "
                f"{100 * metrics['test']['accuracy']:.1f}% (n={metrics['test']['n']}; best dev "
                f"{100 * metrics['dev']['accuracy']:.1f}% at step {best_step})"
            )
        else:
            lines.append(f"dev accuracy: {100 * metrics['dev']['accuracy']:.1f}% (no test split)")
        return lines

    def describe(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"template": meta["template"], "verbalizer": meta["verbalizer"]}

    def predict(self, model: PromptedClassifier, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        extra = [f for f in model.task.template.fields if f != "text"]
        if extra:
            raise SoftpromptError(f"this prompt needs fields {extra}; use `softprompt eval --data FILE`")
        probabilities = label_probabilities(model, [Example({"text": t}) for t in texts], batch_size)
        labels = model.task.labels
        results = []
        for text, row in zip(texts, probabilities.tolist(), strict=True):
            best = max(range(len(labels)), key=row.__getitem__)
            scores = {label: round(p, 6) for label, p in zip(labels, row, strict=True)}
            results.append({"text": text, "label": labels[best], "scores": scores})
        return results


@register_task("multitask", "a bundle of every task's prompt, from one `softprompt multitask` run")
class MultitaskBundle(TaskSpec):
    """The run-level artifact of ``softprompt multitask`` (its checkpoint and best prompts); each
    task's prompt is also written as an ordinary classification artifact."""

    made_by = "softprompt multitask"
    used_with = "each task's own artifact in its out/tasks/<name> (`softprompt serve --artifacts out/tasks`)"
