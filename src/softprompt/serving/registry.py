"""The tasks a server offers: every artifact directory under the prompts directory, loaded on
the one backbone. A directory that cannot be served (corrupt, another backbone, a method that
changes the backbone's layers) is reported and skipped; the others are served."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifact import TASK_FILE, read_artifact
from softprompt.backbones import Backbone
from softprompt.core.prompt_caches import PromptCaches
from softprompt.errors import SoftpromptError
from softprompt.methods import METHODS, get_method
from softprompt.serving.writing import Writer
from softprompt.tasks.classification.mixed import MixedPromptClassifier, mixable
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.generation.model import PromptedGenerator
from softprompt.tasks.lm import LM_TASK, load_lm_prompt
from softprompt.tasks.loading import load_model


@dataclass
class ServedPrompts:
    """What is served: classifiers (mixed in one batch) and generation prompts, by task name."""

    classifiers: dict[str, PromptedClassifier] = field(default_factory=dict)
    generators: dict[str, Writer] = field(default_factory=dict)  # detox LM prompts and generation tasks
    skipped: dict[str, str] = field(default_factory=dict)  # directory name -> why
    mixed: MixedPromptClassifier | None = None

    def describe(self) -> list[dict[str, Any]]:
        rows = [
            {
                "name": name,
                "kind": "classify",
                "labels": model.task.labels,
                "template": model.task.template.source,
                "method": model.method.name,
            }
            for name, model in self.classifiers.items()
        ]
        rows += [{"name": name, "kind": "generate", **writer.describe()} for name, writer in self.generators.items()]
        return rows


def load_tasks(directory: str | Path, backbone: Backbone, prompt_cache_mb: float | None = None) -> ServedPrompts:
    """Load every artifact directory under ``directory`` (its name is the task name). The
    classifiers' prompt caches are kept up to ``prompt_cache_mb`` megabytes (None: all of them).

    Raises:
        SoftpromptError: ``directory`` does not exist (a bad task inside it is only skipped).
    """
    root = Path(directory)
    if not root.is_dir():
        raise SoftpromptError(f"prompts directory {root} does not exist (give a folder of trained artifacts)")
    tasks = ServedPrompts()
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (path / TASK_FILE).exists():
            continue
        try:
            _load_one(path, backbone, tasks)
        except SoftpromptError as exc:
            tasks.skipped[path.name] = str(exc)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:  # a damaged file of any kind
            tasks.skipped[path.name] = f"cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    if tasks.classifiers:
        budget = None if prompt_cache_mb is None else int(prompt_cache_mb * 2**20)
        tasks.mixed = MixedPromptClassifier(tasks.classifiers, PromptCaches(backbone, budget))
    return tasks


def _load_one(path: Path, backbone: Backbone, tasks: ServedPrompts) -> None:
    meta = read_artifact(path).meta
    if meta.get("task") == LM_TASK:
        tasks.generators[path.name] = Writer(load_lm_prompt(path, backbone))
        return
    spec = get_method(meta.get("method", "?"))
    if not spec.shares_backbone:
        # Checked before loading: attaching such a method would change the shared backbone.
        shared = ", ".join(name for name, s in METHODS.items() if s.shares_backbone and s.trains)
        raise SoftpromptError(
            f"{path}: method {spec.name} changes the backbone's layers; only soft-prompt artifacts "
            f"({shared}) or zero-shot ones share the backbone"
        )
    model, _ = load_model(path, backbone)
    if isinstance(model, PromptedGenerator):
        tasks.generators[path.name] = writer_of(model, path)
        return
    if not isinstance(model, PromptedClassifier):
        raise SoftpromptError(f"{path}: only classification and generation artifacts are served")
    reason = mixable(model)
    if reason:
        raise SoftpromptError(f"{path}: {reason}")
    model.eval()
    tasks.classifiers[path.name] = model


def writer_of(model: PromptedGenerator, path: Path) -> Writer:
    """A served writer for a generation artifact whose soft tokens (if any) lead its template."""
    template = model.template
    if model.method.prefix_length() or template.leading_soft != template.num_soft:
        raise SoftpromptError(
            f"{path}: a served writer's soft tokens must lead its template (no prefix tuning, no soft "
            "tokens inside the text); use `softprompt generate` for this artifact"
        )
    soft = model.method.soft_embeddings()
    if soft is not None:
        soft = soft.detach().to(dtype=model.backbone.placement.dtype)
    return Writer(soft, template, model.demonstrations, model.decoding)
