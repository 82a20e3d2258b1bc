"""Text to text: a template renders the input, the model writes the output. Trained with the
language-model loss on the target (:mod:`softprompt.tasks.generation.model`), decoded with transformers'
``generate`` (:mod:`softprompt.generation.decode`), measured with exact match, BLEU, chrF and
ROUGE-L, plus the rewriting metrics of detoxification (STA, SIM, FL, J) on datasets that ask
for them (``metrics: [detox]`` in their YAML file).
"""

from __future__ import annotations

from typing import Any, ClassVar

from softprompt.backbones import Backbone, load_backbone
from softprompt.config import RunConfig
from softprompt.data.pairs import TextPair, pairs_from_records, read_pairs
from softprompt.data.splits import SPLITS, Records, Splits, assemble_splits, limit
from softprompt.errors import SoftpromptError
from softprompt.generation.decode import decode
from softprompt.methods import MethodContext, get_method, soft_token_method
from softprompt.prompts import Template
from softprompt.tasks.fewshot import Demo, SimilarDemonstrations, choose_demonstrations, load_demonstrations, query_text
from softprompt.tasks.generation.baselines import FluencyFit, offline_baselines
from softprompt.tasks.generation.model import PromptedGenerator
from softprompt.tasks.registry import GENERATE, TaskSpec, fit_soft_slots, register_task

PLAIN_TEMPLATE = "Input: {text}\nOutput:"  # when neither the run nor its dataset gives one


def _dataset_spec(config: RunConfig):
    from softprompt.datasets import get_spec  # late: reads the package's dataset files

    return get_spec(config.dataset) if config.dataset and not config.data.train else None


def resolve_template(config: RunConfig, announce: bool = False) -> Template:
    """The run's template (its own, else its dataset's), fitted to the method (``fit_soft_slots``)."""
    spec = _dataset_spec(config)
    template = Template(config.template or (spec.template if spec else None) or PLAIN_TEMPLATE)
    return fit_soft_slots(template, config, announce)


def demonstration_pool(template: Template, pairs: list[TextPair]) -> list[Demo]:
    """Training pairs as few-shot demonstrations: the template without soft tokens, then the
    first reference."""
    plain = template.without_soft()
    space = "" if plain.ends_with_space() else " "
    return [
        Demo(query_text(p.fields, template.fields), f"{plain.render(p.fields)}{space}{p.targets[0]}") for p in pairs
    ]


def build_generator(
    backbone: Backbone,
    method_name: str,
    template: Template,
    config: RunConfig,
    max_length: int,
    demos: str = "",
    method_options: Any = None,
    for_inference: bool = False,
    extra_metrics: list[str] | None = None,
    fluency: FluencyFit | None = None,
    chooser: SimilarDemonstrations | None = None,
) -> PromptedGenerator:
    """A :class:`PromptedGenerator` for this backbone, method and template; prompts initialised
    from ``labels`` start from the template's own words; ``fluency``: the held-out pairs the
    rewriting metrics' SLOR scale is fitted on."""
    words = [seg.value for seg in template.segments if seg.kind == "text"]
    context = MethodContext(
        backbone, template.num_soft, words, config.prompt, method_options, config.seed, for_inference
    )
    method = get_method(method_name).build(context)
    model = PromptedGenerator(backbone, method, template, max_length, demos)
    model.decoding = config.gen
    model.extra_metrics = list(extra_metrics or [])
    model.fluency = fluency
    model.chooser = chooser
    return model


@register_task("generation", "write an output text for each input text (BLEU, chrF, ROUGE-L; detox: STA, SIM, J)")
class Generation(TaskSpec):
    metric = "neg_loss"
    metric_label = "J (BLEU without detox metrics)"
    predict_command = "generate"
    record_fields: ClassVar[dict[str, type]] = {"template": str, "extra_metrics": list}
    served_as = GENERATE
    prompt_baselines = True
    baseline_names = ("zero_shot", "few_shot", "copy", "delete", "references")
    report_columns = (
        ("j", "J", "{:.3f}"),
        ("sta", "STA", "{:.3f}"),
        ("sim", "SIM", "{:.3f}"),
        ("fl", "FL", "{:.3f}"),
        ("j_slor", "J (FL_SLOR)", "{:.3f}"),
        ("fl_slor", "FL_SLOR", "{:.3f}"),
        ("j_chrf", "J (chrF)", "{:.3f}"),
        ("bleu", "BLEU", "{:.1f}"),
        ("chrf", "chrF", "{:.1f}"),
        ("rouge_l", "ROUGE-L", "{:.1f}"),
    )

    def headline(self, metrics: dict[str, Any]) -> float:
        return metrics["j"] if "j" in metrics else metrics["bleu"] / 100

    def zero_shot_template(self, config: RunConfig) -> Template:
        spec = _dataset_spec(config)
        if spec is not None and spec.instruction and not config.template:
            return Template(spec.instruction)
        return self.compare_template(config).without_soft()

    def offline_baselines(self, config: RunConfig, splits: Splits, wanted: list[str]) -> list[tuple[str, dict]]:
        spec = _dataset_spec(config)
        extra = list(spec.metrics) if spec else []
        backbone = load_backbone(config.backbone, config.device, config.precision) if extra else None
        scored = splits.test or splits.dev
        held_out = splits.dev if splits.test else []
        return offline_baselines(backbone, (splits.train, held_out, scored), wanted, extra)

    def load_splits(self, config: RunConfig, records: dict[str, Records] | None = None) -> Splits:
        data = config.data
        fields = {"text_field": data.text_field, "target_field": data.target_field}
        if records:  # the fields are recorded so that the model reads later records the same way
            source = {name: f"{name}_data (in memory)" for name in records} | fields
            return assemble_splits(
                config,
                lambda n: (pairs_from_records(records[n], f"{n}_data", data.text_field, data.target_field), []),
                source,
            )
        if data.train:
            source = {"train": data.train, "dev": data.dev, "test": data.test} | fields
            return assemble_splits(
                config, lambda n: (read_pairs(getattr(data, n), data.text_field, data.target_field, key=n), []), source
            )
        if not config.dataset:
            raise SoftpromptError(
                "task=generation needs data.train=FILE (columns text and target; data.target_field=...) "
                "or a built-in dataset (dataset=paradetox-rewrite data.path=paradetox.tsv)"
            )
        raw = _builtin(config.dataset, data.path)
        source = {"dataset": config.dataset, **({"path": data.path} if data.path else {})}
        return limit(Splits(raw["train"], raw["dev"], raw["test"], source), config)

    def from_records(self, records: Records, source: str, meta: dict[str, Any]) -> list[TextPair]:
        data = meta.get("data", {})
        return pairs_from_records(records, source, data.get("text_field", "text"), data.get("target_field", "target"))

    def check(self, config: RunConfig) -> None:
        super().check(config)
        resolve_template(config)

    def build(self, config: RunConfig, backbone: Backbone, splits: Splits) -> PromptedGenerator:
        template = resolve_template(config, announce=True)
        for name in SPLITS:
            items = getattr(splits, name)
            if items:
                template.check_fields(set(items[0].fields), f"the {name} data ({splits.where(name)})")
        spec = _dataset_spec(config)
        pool = demonstration_pool(template, splits.train) if config.fewshot.k else []
        demos, chooser = choose_demonstrations(pool, config.fewshot, config.seed, template.fields)
        return build_generator(
            backbone,
            config.method,
            template,
            config,
            config.train.max_length,
            demos,
            config.method_options(),
            extra_metrics=list(spec.metrics) if spec else [],
            fluency=FluencyFit(splits.train, splits.dev) if splits.test and splits.dev else None,
            chooser=chooser,
        )

    def load(self, meta: dict[str, Any], config: RunConfig, backbone: Backbone) -> PromptedGenerator:
        return build_generator(
            backbone,
            meta["method"],
            Template(meta["template"]),
            config,
            meta["max_length"],
            meta.get("demonstrations", ""),
            config.method_options(meta["method"]),
            for_inference=True,
            extra_metrics=meta.get("extra_metrics", []),
            chooser=load_demonstrations(meta.get("fewshot")),
        )

    def compare_template(self, config: RunConfig) -> Template:
        import dataclasses

        return resolve_template(dataclasses.replace(config, method=soft_token_method()))

    def read_eval_data(
        self, path: str, meta: dict[str, Any], model, fields: dict[str, str | None], key: str = "test"
    ) -> list:
        recorded = meta.get("data", {})
        text_field = fields.get("text_field") or recorded.get("text_field", "text")
        target_field = fields.get("target_field") or recorded.get("target_field", "target")
        return read_pairs(path, text_field, target_field, model.template.fields, key=key)

    def builtin_split(self, name: str, path: str | None, split: str, model: PromptedGenerator) -> list[TextPair]:
        pairs = _builtin(name, path)[split]
        model.template.check_fields(set(pairs[0].fields), f"{name} ({split})")
        return pairs

    def summary(self, metrics: dict[str, Any], best_step: int, trained: bool, method: str) -> list[str]:
        dev = metrics["dev"]
        lines = [f"best dev loss: {dev['loss']:.4f} per target token at step {best_step} (n={dev['n']})"]
        if "test" in metrics:
            lines.append("test: " + headline(metrics["test"]))
        return lines

    def report(self, metrics: dict[str, Any], where: str) -> str:
        lines = [f"{where}: {headline(metrics)}"]
        for example in metrics.get("examples", []):
            lines.append(f"  {example['input']!r} -> {example['output']!r}")
        return "\n".join(lines)

    def describe(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"template": meta["template"], "extra_metrics": meta.get("extra_metrics", [])}

    def predict(self, model: PromptedGenerator, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        extra = [f for f in model.template.fields if f != "text"]
        if extra:
            raise SoftpromptError(f"this prompt needs fields {extra}; use `softprompt eval --data FILE`")
        prompts = [model.encode_prompt({"text": t}) for t in texts]
        outputs = decode(model.backbone, model.method, prompts, model.decoding, batch_size)
        return [{"text": t, "output": out} for t, out in zip(texts, outputs, strict=True)]


def headline(metrics: dict[str, Any]) -> str:
    """One line of a generation task's metrics."""
    parts = [f"BLEU {metrics['bleu']:.1f}", f"chrF {metrics['chrf']:.1f}", f"ROUGE-L {metrics['rouge_l']:.1f}"]
    parts.append(f"exact match {100 * metrics['exact_match']:.1f}%")
    if "j" in metrics:
        parts = [
            f"J {metrics['j']:.3f}",
            f"STA {metrics['sta']:.3f}",
            f"SIM {metrics['sim']:.3f}",
            f"FL {metrics['fl']:.3f}",
            *parts,
        ]
    return ", ".join(parts) + f" (n={metrics['n']})"


def _builtin(name: str, path: str | None) -> dict[str, list[TextPair]]:
    from softprompt.datasets import get_spec, load_builtin  # late: reads package data

    spec = get_spec(name)
    if spec.task != "generation":
        raise SoftpromptError(f"dataset '{name}' is a {spec.task} dataset; task=generation needs a text-to-text one")
    return load_builtin(name, path)
