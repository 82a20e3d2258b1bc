"""The tasks a server offers: every artifact directory under the artifacts folder, loaded on
the one backbone (LoRA and IA3 artifacts applied per batch row, the backbone left as it is). A
directory that cannot be served (corrupt, another backbone, a method that changes the backbone's
own weights) is reported and skipped; the others are served."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from softprompt.artifact import TASK_FILE, read_artifact
from softprompt.backbones import Backbone
from softprompt.core.prompt_caches import PromptCaches, PromptCacheSettings
from softprompt.errors import SoftpromptError
from softprompt.methods import METHODS, get_method
from softprompt.serving.writing import Writer, writer_cache_key
from softprompt.tasks import TASKS, get_task
from softprompt.tasks.classification.mixed import MixedPromptClassifier, mixable
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.generation.model import PromptedGenerator
from softprompt.tasks.loading import artifact_task, load_model
from softprompt.tasks.registry import CLASSIFY, GENERATE

# Words of the task routes (``POST /v1/tasks/reload``) that therefore cannot name a task.
RESERVED_TASK_NAMES = frozenset({"reload"})


__all__ = ["CLASSIFY", "GENERATE"]  # what a served task answers (GET /v1/tasks' "kind"), as its task declares


def is_internal(name: str) -> bool:
    """Whether ``name`` is a server's internal name (a candidate version: ``NAME@candidate``).
    Task names cannot hold ``@``, so no client can name one."""
    return "@" in name


def reserved_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a task, or None."""
    if name in RESERVED_TASK_NAMES:
        return f"'{name}' is reserved (POST /v1/tasks/{name} is a route of its own); name the task otherwise"
    return None


@dataclass
class ServedTasks:
    """What is served: classifiers (mixed in one batch) and generation prompts, by task name.
    Change it only through :meth:`put` and :meth:`remove` (they keep the mixed batch and its
    prompt caches in step), from the server's one worker, between batches."""

    prompt_caches: PromptCaches
    classifiers: dict[str, PromptedClassifier] = field(default_factory=dict)
    writers: dict[str, Writer] = field(default_factory=dict)  # generation tasks and detox LM prompts
    skipped: dict[str, str] = field(default_factory=dict)  # directory name -> why
    mixed: MixedPromptClassifier | None = None
    versions: dict[str, str] = field(default_factory=dict)  # task -> its artifact's weights_sha256

    def put(self, name: str, served: PromptedClassifier | Writer, version: str = "") -> None:
        """Serve ``served`` (the artifact whose weights hash is ``version``) as task ``name``,
        replacing a task of that name.

        The new entry is written over the old one, never after removing it: the event loop reads
        these dicts (``kind_of``) while the worker changes them, and a replaced task must not look
        unknown to a request arriving in between."""
        self.skipped.pop(name, None)
        if isinstance(served, Writer):
            self.writers[name] = served
            self.prompt_caches.forget(writer_cache_key(name))  # a replaced writer's prompt is another
            self._drop_classifier(name)
        else:
            if self.mixed is None:
                self.mixed = MixedPromptClassifier({name: served}, self.prompt_caches)
            else:
                self.mixed.put(name, served)
            self.classifiers[name] = served
            self.writers.pop(name, None)
        self.versions[name] = version

    def warm(self, names: list[str] | None = None) -> int:
        """Compute the prompt caches of tasks ``names`` (None: all, in name order; classifiers
        first, then generation tasks' soft prompts) within the budget, so that their first
        requests find them kept."""
        names = sorted([*self.classifiers, *self.writers]) if names is None else names
        done = self.mixed.warm([n for n in names if n in self.classifiers]) if self.mixed is not None else 0
        soft = {writer_cache_key(n): self.writers[n].soft for n in names if n in self.writers}
        soft = {key: prompt for key, prompt in soft.items() if prompt is not None}
        return done + self.prompt_caches.warm(list(soft), soft.__getitem__) if soft else done

    def remove(self, name: str) -> bool:
        """Stop serving task ``name``; False when there was none."""
        self.skipped.pop(name, None)
        self.versions.pop(name, None)
        if self.writers.pop(name, None) is not None:
            self.prompt_caches.forget(writer_cache_key(name))
            return True
        return self._drop_classifier(name)

    def _drop_classifier(self, name: str) -> bool:
        if self.classifiers.pop(name, None) is None:
            return False
        if self.classifiers:
            self.mixed.remove(name)
        else:
            self.mixed = None
        self.prompt_caches.forget(name)
        return True

    def describe(self) -> list[dict[str, Any]]:
        """Every served task, as ``GET /v1/tasks`` lists it."""
        return [self.describe_one(name) for name in self.names()]

    def names(self) -> list[str]:
        """The served tasks' names (not the candidates' internal ones)."""
        return [name for name in [*self.classifiers, *self.writers] if not is_internal(name)]

    def serves(self, name: str) -> bool:
        """Whether task ``name`` (a client's name) is served."""
        return not is_internal(name) and (name in self.classifiers or name in self.writers)

    def kind_of(self, name: str) -> str | None:
        """What task ``name`` answers: ``CLASSIFY`` or ``GENERATE`` (the routes' kinds), None when
        it is not served."""
        if name in self.writers:
            return GENERATE
        return CLASSIFY if name in self.classifiers else None

    def describe_one(self, name: str) -> dict[str, Any]:
        """Served task ``name`` as ``GET /v1/tasks`` lists it (a ``KeyError`` when not served)."""
        if name in self.writers:
            return {"name": name, "kind": GENERATE, **self.writers[name].describe()}
        model = self.classifiers[name]
        labels, template = model.task.labels, model.task.template.source
        method = model.row_adapter.method if model.row_adapter is not None else model.method.name
        return {"name": name, "kind": CLASSIFY, "labels": labels, "template": template, "method": method}


def load_tasks(
    directory: str | Path,
    backbone: Backbone,
    caches: PromptCacheSettings | None = None,
    live: dict[str, Path] | None = None,
) -> ServedTasks:
    """Load every artifact directory under ``directory`` (its name is the task name). The
    prompt caches are kept as ``caches`` says (None: every one in memory, none on disk).
    ``live`` names, per task, the folder of its live version when that is not the task's own
    folder (a promoted version; see :mod:`softprompt.lifecycle.versions`).

    Raises:
        SoftpromptError: ``directory`` does not exist, or the prompt-cache folder cannot be
            written (a bad task inside it is only skipped).
    """
    root = Path(directory)
    if not root.is_dir():
        raise SoftpromptError(f"prompts directory {root} does not exist (give a folder of trained artifacts)")
    tasks = ServedTasks((caches or PromptCacheSettings(megabytes=None)).store(backbone))
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (path / TASK_FILE).exists():
            continue
        reserved = reserved_name_problem(path.name)
        if reserved:
            tasks.skipped[path.name] = f"folder {path}: {reserved} (rename the folder)"
            continue
        folder = (live or {}).get(path.name, path)
        try:
            tasks.put(path.name, load_task(folder, backbone), artifact_version(folder))
        except SoftpromptError as exc:
            tasks.skipped[path.name] = str(exc) if folder == path else f"its live version {folder}: {exc}"
    tasks.warm()
    return tasks


def artifact_version(path: Path) -> str:
    """The version of the artifact at ``path``: its weights' SHA-256, as ``task.json`` records it
    (checked against the weights when the artifact loads)."""
    try:
        return str(json.loads((path / TASK_FILE).read_text(encoding="utf-8")).get("weights_sha256", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def load_task(path: Path, backbone: Backbone) -> PromptedClassifier | Writer:
    """What an artifact directory serves: a classifier or a writer on ``backbone``.

    Raises:
        SoftpromptError: why it cannot be served (corrupt, another backbone, a method that changes
            the backbone's layers, a task the server does not offer).
    """
    try:
        return _load(path, backbone)
    except SoftpromptError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # a damaged file of any kind
        raise SoftpromptError(f"cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _load(path: Path, backbone: Backbone) -> PromptedClassifier | Writer:
    meta = read_artifact(path).meta
    spec = get_task(artifact_task(meta))  # the task says how it is served: nothing here names one
    if spec.served_as is None:
        served = ", ".join(name for name, s in TASKS.items() if s.served_as)
        raise SoftpromptError(f"{path}: task={spec.name} artifacts are not served (the server answers {served})")
    bare = spec.bare_prompt(path, backbone)
    if bare is not None:
        return Writer(bare)
    method = get_method(meta.get("method", "?"))
    if not method.shares_backbone:
        # Checked before loading: attaching such a method would change the shared backbone.
        shared = ", ".join(name for name, s in METHODS.items() if s.shares_backbone and s.trains)
        raise SoftpromptError(
            f"{path}: method {method.name} changes the backbone's own weights or blocks, which one backbone "
            f"shared by many tasks cannot hold; artifacts of {shared} (and zero-shot ones) are served; use "
            "`softprompt predict` or `generate` for this one"
        )
    model, _ = load_model(path, backbone, apart=True)  # LoRA, IA3: applied per row, the backbone untouched
    if spec.served_as == GENERATE:
        return writer_of(model, path)
    reason = mixable(model, prefixes=True)  # a server keeps them in its store of prompt caches
    if reason:
        raise SoftpromptError(f"{path}: {reason}")
    evaluating(model, backbone)
    # What the artifact predicted on its dev split: the reference its traffic's drift is measured
    # against (lifecycle.drift); it travels with the model through candidates and promotions.
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    model.drift_reference = (metrics.get("dev") or {}).get("predicted")
    return model


def evaluating(model: nn.Module, backbone: Backbone) -> None:
    """``model.eval()`` without walking the shared backbone's hundreds of modules for each task
    (a server loads thousands at start; that walk was a quarter of the time); the backbone itself
    is put in eval mode once, if anything left it training."""
    if backbone.model.training:
        backbone.model.eval()
    pending = [model]
    while pending:
        module = pending.pop()
        module.training = False
        pending.extend(child for child in module.children() if child is not backbone.model)


def writer_of(model: PromptedGenerator, path: Path) -> Writer:
    """A served writer for a generation artifact whose soft tokens (if any) lead its template."""
    template = model.template
    if template.leading_soft != template.num_soft:
        raise SoftpromptError(
            f"{path}: a served writer's soft tokens must lead its template (no soft tokens inside the "
            "text); use `softprompt generate` for this artifact"
        )
    soft, prefix, dtype = model.method.soft_embeddings(), None, model.backbone.placement.dtype
    if soft is not None:
        soft = soft.detach().to(dtype=dtype)
    if model.method.prefix_length():  # prefix tuning: every row of the task continues its prefixes
        prefix = [
            (layer.keys.detach().to(dtype), layer.values.detach().to(dtype))
            for layer in model.method.prefix_cache(1).layers
        ]
    return Writer(soft, template, model.demonstrations, model.decoding, model.chooser, model.row_adapter, prefix)
