"""Write docs/configuration.md from the config dataclasses' field help, so the reference cannot
drift from the code. ``--check`` exits 1 when the file is out of date (the test suite runs it).

    python scripts/config_reference.py          # rewrite docs/configuration.md
    python scripts/config_reference.py --check  # compare only
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _type_name(annotation: typing.Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    return f"`{value!r}`".replace("|", "\\|")


def section(cls: type, prefix: str = "") -> list[str]:
    """Table rows for ``cls``; nested dataclass sections follow as their own rows."""
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        if field.name == "options":
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            nested.append((hints[field.name], f"{prefix}{field.name}."))
            continue
        help_text = field.metadata.get("help", "").replace("|", "\\|").replace("\n", " ")
        kind = _type_name(hints[field.name]).replace("|", "or")
        rows.append(f"| `{prefix}{field.name}` | {kind} | {_default(field)} | {help_text} |")
    for sub, sub_prefix in nested:
        rows += section(sub, sub_prefix)
    return rows


def table(title: str, intro: str, cls: type, prefix: str = "") -> str:
    head = f"## {title}\n\n{intro}\n\n| key | type | default | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(section(cls, prefix)) + "\n"


def render() -> str:
    """The whole reference as Markdown."""
    from softprompt.config import RunConfig
    from softprompt.continual.config import ContinualConfig
    from softprompt.detox.config import DetoxEvalConfig, DetoxTrainConfig, GenerateConfig, ValidateConfig
    from softprompt.lifecycle.plan import RetrainSettings
    from softprompt.methods import METHODS
    from softprompt.multitask import MultitaskConfig

    parts = [
        "# Configuration reference\n\n"
        "Generated from the config dataclasses by `python scripts/config_reference.py`; do not edit by hand.\n"
        "Every key can be set in a recipe YAML file or on the command line as `key=value` "
        "(sections with dots: `train.lr=3e-3`), and in Python as keyword arguments "
        '(`softprompt.train(train={"lr": 3e-3})`).\n',
        table("softprompt train / compare", "The run config (`softprompt.RunConfig`).", RunConfig),
    ]
    for spec in METHODS.values():
        if spec.options is not None:
            intro = f"Method `{spec.name}`: {spec.description}."
            parts.append(table(f"{spec.name}.*", intro, spec.options, f"{spec.name}."))
    parts += [
        table("softprompt multitask", "Several tasks' prompts trained together.", MultitaskConfig),
        table("softprompt continual", "A sequence of tasks learned one after another.", ContinualConfig),
        table(
            "softprompt retrain",
            "`retrain.*`: the guard against forgetting, the held-out share and the gate "
            "([keep-learning.md](keep-learning.md)); any run setting above may follow too.",
            RetrainSettings,
            "retrain.",
        ),
        table("softprompt detox train", "Detoxifying prompts.", DetoxTrainConfig),
        table("softprompt detox eval", "Toxicity of continuations, per steering.", DetoxEvalConfig),
        table("softprompt detox validate-scorer", "Scorers against stored Perspective scores.", ValidateConfig),
        table("softprompt generate", "Continue prompts, optionally detoxified.", GenerateConfig),
    ]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
