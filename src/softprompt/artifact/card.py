"""The model card (``README.md``) every artifact carries, as peft writes one for its adapters.

YAML front matter the Hugging Face Hub reads (``base_model``, ``library_name``, ``pipeline_tag``,
``tags``, ``datasets``, ``metrics`` and the scores in the Hub's ``model-index`` form), then a body
for people: what the prompt does, its template and verbalizer, how it was trained, its scores
beside the baselines, and how to load it. Everything comes from ``task.json``, so the card is
rewritten whenever the record is (each new best, and the final scores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.atomic import atomic_write_text
from softprompt.hub import DATASET_PREFIX, parse_hub_dataset

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

CARD_FILE = "README.md"
# The Hub's pipeline tag of each task an artifact can record.
PIPELINES = {
    "classification": "text-classification",
    "multitask": "text-classification",
    "ner": "token-classification",
    "generation": "text-generation",
    "lm": "text-generation",
}
NOT_SCORES = ("resources",)  # metrics entries that measure the run, not the model
SPLIT_NAMES = {"test": "test", "dev": "dev (best step)"}


def model_card(meta: dict[str, Any], peft_loadable: bool, name: str = "") -> str:
    """The card's text for an artifact whose record is ``meta``.

    Args:
        meta: the artifact's ``task.json``.
        peft_loadable: peft can load the weights (``adapter_config.json`` is a peft layout).
        name: what the artifact is called (its directory's name).
    """
    front = _card_data(meta, peft_loadable, name).to_yaml()
    body = "\n\n".join(part for part in _body(meta, peft_loadable, name) if part)
    return "---\n" + front + "\n---\n\n" + body + "\n"


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain numbers of one split's metrics (per-label breakdowns and counts left out)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n"
    }


def _results(meta: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Split (or baseline) name -> its scores, for every scored split the record holds."""
    metrics = meta.get("metrics") or {}
    scored = {key: value for key, value in metrics.items() if isinstance(value, dict) and key not in NOT_SCORES}
    return {key: _scores(value) for key, value in scored.items() if _scores(value)}


def _dataset(meta: dict[str, Any]) -> str:
    """The training data a record names: a built-in dataset, a file, or a Hub dataset (``hf:``)."""
    data = meta.get("data") or {}
    if not isinstance(data, dict):  # detox prompts record their one data file
        return str(data)
    return str(data.get("dataset") or data.get("train") or "")


def _card_data(meta: dict[str, Any], peft_loadable: bool, name: str) -> ModelCardData:
    """The metadata the Hub reads, built with its own library (``ModelCardData``, ``EvalResult``):
    the test scores in ``model-index`` with the split, how many examples they were computed on,
    and, for a sample (``data.max_eval``), of how many: a score on 16 rows is not the split's."""
    from huggingface_hub import EvalResult, ModelCardData  # late: the CLI starts without it

    task, method = meta.get("task", "classification"), meta.get("method", "")
    dataset = _dataset(meta)
    hub_dataset = parse_hub_dataset(dataset)[0] if dataset.startswith(DATASET_PREFIX) else ""
    # A file is named, not located: its path on the training machine means nothing elsewhere.
    shown = hub_dataset or (Path(dataset).name if dataset else "")
    test = _results(meta).get("test") or {}
    examples, whole = _test_size(meta)
    sampled = whole is not None and examples is not None and examples < whole
    described = f" ({examples:,} of {whole:,} test examples, a seeded sample)" if sampled else ""
    args = {"examples": examples} if examples is not None else {}
    if sampled:
        args["sample_of"] = whole
    results = [
        EvalResult(
            task_type=PIPELINES.get(task, "text-generation"),
            dataset_type=shown or "custom",
            dataset_name=(shown or "test split") + described,
            dataset_split="test",
            dataset_args=args or None,
            metric_type=key,
            metric_value=round(value, 4),
            metric_name=f"test {key}" + (" (sample)" if sampled else ""),
        )
        for key, value in test.items()
    ]
    tags = ["softprompt", method.replace("_", "-"), task] + (["peft"] if peft_loadable else [])
    return ModelCardData(
        base_model=(meta.get("backbone") or {}).get("hub_id") or None,
        library_name="peft" if peft_loadable else "softprompt",
        pipeline_tag=PIPELINES.get(task),
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,  # only a Hub dataset id means something to the Hub
        metrics=list(test) or None,
        model_name=(name or "softprompt-artifact") if results else None,
        eval_results=results or None,
    )


def _test_size(meta: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(examples scored, examples in the whole test split)``: the second is None unless the
    run scored a sample of it (``data.max_eval``)."""
    test = (meta.get("metrics") or {}).get("test") or {}
    examples = test.get("n") if isinstance(test.get("n"), int) else None
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    sample = (data.get("samples") or {}).get("test") or {}
    return examples, sample.get("of")


def _body(meta: dict[str, Any], peft_loadable: bool, name: str) -> list[str]:
    task, method = meta.get("task", "classification"), meta.get("method", "")
    backbone = meta.get("backbone") or {}
    title = f"# {name or 'softprompt artifact'}"
    trained = meta.get("trainable_parameters")
    counted = f" ({trained:,} trained parameters)" if isinstance(trained, int) else ""
    intro = f"A `{method}` artifact{counted} for the `{task}` task on the frozen backbone `{backbone.get('name', '?')}`"
    if backbone.get("hub_id") and backbone.get("hub_id") != backbone.get("name"):
        intro += (
            f" (softprompt's bundled copy of [{backbone['hub_id']}](https://huggingface.co/{backbone['hub_id']}): "
            "its GGUF weights, de-quantized; on the original Hub weights the scores may differ slightly)"
        )
    intro += ", made with [softprompt](https://pypi.org/project/softprompt/)."
    return [
        title,
        intro,
        _prompt_section(meta),
        _training_section(meta),
        _lineage_section(meta),
        _results_section(meta),
        _use_section(meta, peft_loadable, name),
    ]


def _prompt_section(meta: dict[str, Any]) -> str:
    lines = []
    if meta.get("template"):
        lines.append(f"- template: `{json.dumps(meta['template'])[1:-1]}`")
    if meta.get("verbalizer"):
        words = "; ".join(f"{label} -> {', '.join(map(repr, ws))}" for label, ws in meta["verbalizer"].items())
        lines.append(f"- verbalizer (label -> words the model is scored on): {words}")
    if meta.get("labels") and not meta.get("verbalizer"):
        lines.append(f"- labels: {', '.join(map(str, meta['labels']))}")
    if isinstance(meta.get("calibration"), dict):
        lines.append("- contextual calibration: predictions are divided by the prompt's own bias (task.json)")
    if meta.get("demonstrations"):
        lines.append("- few-shot demonstrations are put before every input (recorded in task.json)")
    fewshot = meta.get("fewshot")
    if isinstance(fewshot, dict) and fewshot.get("select") == "similar":
        pool = len(fewshot.get("pool") or [])
        lines.append(
            f"- few-shot demonstrations chosen per input: the {fewshot.get('k')} nearest of {pool} training rows "
            f"under the sentence embedding `{fewshot.get('embedder')}` (pool recorded in task.json)"
        )
    return "## The prompt\n\n" + "\n".join(lines) if lines else ""


def _training_section(meta: dict[str, Any]) -> str:
    config = meta.get("config") or {}
    train = config.get("train") or {}
    dataset = _dataset(meta)
    lines = [f"- method: `{meta.get('method', '')}`, seed {config.get('seed', '?')}"]
    if meta.get("step") is not None:
        lines.append(f"- weights of step {meta['step']} (the best on dev) of at most {train.get('max_steps', '?')}")
    if train:
        lr, batch, length = train.get("lr"), train.get("batch_size"), train.get("max_length")
        lines.append(f"- learning rate {lr}, batch size {batch}, max length {length}")
    if dataset:
        lines.append(f"- data: `{dataset}`")
    return "## Training\n\n" + "\n".join(lines)


def _lineage_section(meta: dict[str, Any]) -> str:
    """Where a retrained version came from (``softprompt retrain``): its parent, its feedback, its gate."""
    lineage = meta.get("lineage")
    if not isinstance(lineage, dict):
        return ""
    parent, gate = lineage.get("parent") or {}, lineage.get("gate") or {}
    feedback = lineage.get("feedback") or {}
    train, held = feedback.get("train") or {}, feedback.get("held_out") or {}
    lines = [f"- retrained from the version with weights SHA-256 `{str(parent.get('weights_sha256', '?'))[:16]}…`"]
    lines.append(
        f"- on {train.get('count', '?')} feedback rows to task `{lineage.get('task', '?')}` "
        f"({_day(train.get('first_time'))} to {_day(train.get('last_time'))}); the newest "
        f"{held.get('count', '?')} held out to test it"
    )
    guard = lineage.get("guard") or {}
    lines.append(f"- guard against forgetting: {guard.get('kind', '?')}")
    if gate:
        figures = "; ".join(
            f"{name.replace('_', '-')} {gate['metric']} {part['candidate']:.4g} vs the parent's {part['parent']:.4g}"
            f" (n={part['n']})"
            for name, part in ((key, gate.get(key)) for key in ("held_out", "dev"))
            if isinstance(part, dict)
        )
        lines.append(f"- gate {'passed' if gate.get('passed') else 'failed'}: {figures}")
    return "## Lineage\n\n" + "\n".join(lines)


def _day(seconds: Any) -> str:
    """A store time (seconds since the epoch) as its UTC day."""
    if not isinstance(seconds, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _results_section(meta: dict[str, Any]) -> str:
    results = _results(meta)
    if not results:
        return ""
    keys = list(dict.fromkeys(key for scores in results.values() for key in scores))
    rows = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    examples, whole = _test_size(meta)
    for split, scores in results.items():
        label = SPLIT_NAMES.get(split, split.replace("_", " "))
        if split == "test" and examples is not None:
            label += f" ({examples:,} of {whole:,}, a sample)" if whole and examples < whole else f" ({examples:,})"
        rows.append(f"| {label} | " + " | ".join(f"{scores[k]:.4g}" if k in scores else "" for k in keys) + " |")
    return "## Results\n\n" + "\n".join(rows)


def _use_section(meta: dict[str, Any], peft_loadable: bool, name: str) -> str:
    where = name or "ARTIFACT_DIR"
    command = "softprompt generate" if meta.get("task") == "lm" else "softprompt predict"
    made_with = (meta.get("versions") or {}).get("softprompt")
    text = (
        "## Use it\n\nsoftprompt is not on PyPI: install it from a clone of its repository, with "
        "`pip install .` in the clone or `pip install dist/softprompt-*.whl` after `python -m build` there"
        + (f" (this model was made with softprompt {made_with})" if made_with else "")
        + f'.\n\n```bash\n{command} {where} "your text"\n```\n\n'
        f'```python\nimport softprompt\n\nmodel = softprompt.load("{where}")\nprint(model.predict(["your text"]))\n```'
    )
    base = (meta.get("backbone") or {}).get("hub_id")
    if peft_loadable and base:
        text += (
            "\n\nWith peft (the learned weights only: the template and verbalizer above are softprompt's, "
            "so render them yourself):\n\n"
            "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            f'model = PeftModel.from_pretrained(base, "{where}")\n```'
        )
    return text


def write_model_card(directory: Path, meta: dict[str, Any], peft_loadable: bool) -> None:
    """Write ``README.md`` into the artifact directory (atomically)."""
    atomic_write_text(Path(directory) / CARD_FILE, model_card(meta, peft_loadable, Path(directory).resolve().name))
