"""How a sequence of tasks is learned: what each stage trains, and what each task is scored with
after a stage.

- :class:`ProgressiveLearner`: a new prompt per task after the frozen prompts of earlier tasks.
- :class:`SharedLearner`: one set of method parameters (LoRA, full...) that every task trains in
  turn, naively, with experience replay, or with EWC.

Tasks are told apart by their own template and verbalizer, so tasks whose label names clash
("positive" in two tasks) never share a label.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from softprompt.artifact import read_artifact
from softprompt.atomic import atomic_write
from softprompt.backbones import Backbone
from softprompt.config import RunConfig
from softprompt.config.method_options import ProgressiveOptions
from softprompt.continual.config import ContinualConfig
from softprompt.errors import SoftpromptError
from softprompt.methods import MethodContext, get_method
from softprompt.methods.none import NoMethod
from softprompt.methods.prompt_tuning import PromptTuning
from softprompt.methods.transfer import PROMPT_KEY, read_soft_prompt
from softprompt.prompts import Template
from softprompt.tasks.base import TaskModel
from softprompt.tasks.classification import build_classifier, validate_examples
from softprompt.tasks.classification.batches import ClassificationTask
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.tasklist import PreparedTask

EWC_FILE = "ewc.safetensors"


class Learner:
    """What the continual loop asks of a way of learning tasks in sequence."""

    def __init__(self, backbone: Backbone, tasks: list[PreparedTask], config: ContinualConfig):
        self.backbone = backbone
        self.tasks = tasks
        self.config = config

    def stage_config(self, k: int) -> RunConfig:
        """The run config recorded in stage ``k``'s artifact (loads with ``softprompt eval``)."""
        return self.tasks[k].run

    def stage_model(self, k: int) -> tuple[Any, list]:
        """The model stage ``k`` trains and its training rows."""
        raise NotImplementedError

    def scored_model(self, model: Any) -> PromptedClassifier:
        """The classifier that scores a stage's dev set and is saved as its artifact."""
        return model

    def finish_stage(self, k: int) -> None:
        """After stage ``k`` trained (its best weights loaded)."""

    def restore(self, k: int) -> None:
        """Stage ``k`` finished in an earlier run: bring the state after it back."""

    def classifier(self, j: int, stages_done: int) -> PromptedClassifier:
        """Task ``j`` as the model stands after ``stages_done`` stages (0: untrained)."""
        raise NotImplementedError

    def _build(self, j: int, method: str, template: Template, options: Any = None, **kw: Any) -> PromptedClassifier:
        task, config = self.tasks[j], self.config
        model = build_classifier(
            self.backbone,
            method,
            template,
            task.verbalizer,
            config.prompt,
            config.seed,
            config.train.max_length,
            method_options=options,
            **kw,
        )
        validate_examples(model.task, task.splits)
        return model


class ProgressiveLearner(Learner):
    """Stage k trains prompt k behind the frozen prompts 1..k-1; task j is scored with prompts
    1..j (after later stages too: they are frozen, so its outputs cannot change)."""

    def _length(self, stages: int) -> int:
        return stages * self.config.prompt.length

    def stage_config(self, k: int) -> RunConfig:
        run = self.tasks[k].run
        previous = str(self.tasks[k - 1].out) if k else None
        return dataclasses.replace(
            run,
            prompt=dataclasses.replace(run.prompt, length=self._length(k + 1)),
            options={**run.options, run.method: ProgressiveOptions(previous)},
        )

    def stage_model(self, k: int) -> tuple[Any, list]:
        config = self.stage_config(k)
        template = self.tasks[k].template.with_prefix(self._length(k + 1))
        model = self._build(k, config.method, template, config.options[config.method])
        return model, _rows(model, self.tasks[k])

    def classifier(self, j: int, stages_done: int) -> PromptedClassifier:
        tokens = self._length(min(j + 1, stages_done))
        if tokens == 0:
            return self._build(j, NoMethod.name, self.tasks[j].template)
        stack = read_soft_prompt(self.tasks[stages_done - 1].out).embeddings
        model = self._build(j, PromptTuning.name, self.tasks[j].template.with_prefix(tokens), for_inference=True)
        model.load_export({PROMPT_KEY: stack[:tokens]})
        return model


class SharedLearner(Learner):
    """One method instance whose parameters every task trains in turn (``strategy`` naive,
    replay or ewc); each task scores through its own template and verbalizer."""

    def __init__(self, backbone: Backbone, tasks: list[PreparedTask], config: ContinualConfig):
        super().__init__(backbone, tasks, config)
        spec = get_method(config.method)
        if not spec.trains:
            raise SoftpromptError(f"method={config.method} does not train; choose progressive_prompts, lora, full...")
        soft = config.prompt.length if spec.uses_soft_tokens else 0
        words = [w for task in tasks for ws in task.verbalizer.words for w in ws]
        options = tasks[0].run.method_options()
        self.method = spec.build(MethodContext(backbone, soft, words, config.prompt, options, config.seed))
        self.models = []
        for task in tasks:
            template = task.template.with_prefix(soft) if soft else task.template
            classification = ClassificationTask(
                template, task.verbalizer, backbone.tokenizer, causal=True, max_length=config.train.max_length
            )
            model = PromptedClassifier(backbone, self.method, classification, seed=config.seed)
            validate_examples(model.task, task.splits)
            self.models.append(model)
        self.rows = [_rows(model, task) for model, task in zip(self.models, tasks, strict=True)]
        self.ewc_terms: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # (Fisher, anchor) per stage

    def stage_model(self, k: int) -> tuple[Any, list]:
        rows: list[StageRow] = [(TaskRow(k, row),) for row in self.rows[k]]
        if self.config.strategy == "replay" and k:
            buffer = self._buffer(k)
            # Every row of the new task is paired with a buffered one, so each batch holds as many
            # replayed examples as new ones; the pairing is seeded, so resumed runs repeat it.
            order = random.Random(self.config.seed * 7919 + k).sample(range(len(rows)), len(rows))
            rows = [(*row, buffer[order[i] % len(buffer)]) for i, row in enumerate(rows)]
        penalty = self._ewc_penalty if self.config.strategy == "ewc" and self.ewc_terms else None
        return StageModel(self.models[k], self.models, penalty), rows

    def _buffer(self, k: int) -> list[TaskRow]:
        """A fixed-size buffer: ``replay.size`` examples shared equally by tasks 0..k-1."""
        quota = max(1, self.config.replay.size // k)
        buffer = []
        for j in range(k):
            keep = random.Random(self.config.seed * 1009 + j).sample(
                range(len(self.rows[j])), min(quota, len(self.rows[j]))
            )
            buffer += [TaskRow(j, self.rows[j][i]) for i in sorted(keep)]
        return buffer

    def _ewc_penalty(self) -> torch.Tensor:
        params = self.method.trainable_parameters()
        total = torch.zeros(())
        for fisher, anchor in self.ewc_terms:
            total = total + sum((f * (p - a).pow(2)).sum() for f, p, a in zip(fisher, params, anchor, strict=True))
        return self.config.ewc.weight / 2 * total

    def finish_stage(self, k: int) -> None:
        if self.config.strategy != "ewc" or k == len(self.tasks) - 1:
            return
        rows = self.rows[k]
        sample = random.Random(self.config.seed * 31 + k).sample(
            range(len(rows)), min(self.config.ewc.samples, len(rows))
        )
        fisher = diagonal_fisher(self.models[k], [rows[i] for i in sample], self.method.trainable_parameters())
        anchor = [p.detach().clone() for p in self.method.trainable_parameters()]
        tensors = {f"fisher.{i}": f for i, f in enumerate(fisher)} | {f"anchor.{i}": a for i, a in enumerate(anchor)}
        atomic_write(self.tasks[k].out / EWC_FILE, lambda path: save_file(tensors, str(path)))
        self.ewc_terms.append((fisher, anchor))

    def restore(self, k: int) -> None:
        self.models[k].load_export(read_artifact(self.tasks[k].out).state)
        if self.config.strategy == "ewc" and k < len(self.tasks) - 1:
            saved = load_file(str(self.tasks[k].out / EWC_FILE))
            count = len(self.method.trainable_parameters())
            self.ewc_terms.append(
                ([saved[f"fisher.{i}"] for i in range(count)], [saved[f"anchor.{i}"] for i in range(count)])
            )

    def classifier(self, j: int, stages_done: int) -> PromptedClassifier:
        return self.models[j]

    def scored_model(self, model: Any) -> PromptedClassifier:
        return model.current if isinstance(model, StageModel) else model


class TaskRow(NamedTuple):
    """One example in a continual stage's training row: the index of its task and that task's
    own classifier row (the rows of every task are scored with that task's classifier)."""

    task: int
    row: Any


# A stage's training row: the new task's example, then (replay) the buffered example paired with it.
StageRow = tuple[TaskRow, ...]


class StageModel(TaskModel):
    """What one stage of a shared method trains: the shared method's parameters (so its state,
    export and L2 are every task model's, inherited), scored by a loss over :data:`StageRow`
    rows, each example with its own task's classifier, plus the EWC penalty."""

    def __init__(self, current: PromptedClassifier, models: list[PromptedClassifier], penalty: Callable | None):
        # Causal classifiers have no head: the shared method holds everything that trains.
        super().__init__(current.backbone, current.method)
        self.current = current
        self.models = models
        self.penalty = penalty
        self.metric = current.metric

    def loss(self, rows: list[StageRow]) -> torch.Tensor:
        """Mean loss over every example of ``rows``, each scored with its own task."""
        groups: dict[int, list] = defaultdict(list)
        for stage_row in rows:
            for item in stage_row:
                groups[item.task].append(item.row)
        count = sum(len(group) for group in groups.values())
        loss = sum(len(group) / count * self.models[task].loss(group) for task, group in sorted(groups.items()))
        return loss + self.penalty() if self.penalty else loss

    def row_length(self, row: StageRow) -> int:
        first = row[0]
        return self.models[first.task].row_length(first.row)

    def row_class(self, row: StageRow) -> int | None:
        """None: a row mixes tasks, whose labels are not one set of classes."""
        return None


def diagonal_fisher(model: PromptedClassifier, rows: list, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The empirical Fisher's diagonal: the mean over ``rows`` of each example's squared gradient
    of its gold label's log-likelihood (one example at a time: squared batch gradients differ)."""
    sums = [torch.zeros_like(p) for p in params]
    for row in rows:
        grads = torch.autograd.grad(model.loss([row]), params, allow_unused=True)
        for total, grad in zip(sums, grads, strict=True):
            if grad is not None:
                total += grad.detach().pow(2)
    return [total / len(rows) for total in sums]


def _rows(model: PromptedClassifier, task: PreparedTask) -> list:
    train = task.splits.train
    return model.training_rows(train, model.encode_split(train), task.where("train"))


def make_learner(backbone: Backbone, tasks: list[PreparedTask], config: ContinualConfig) -> Learner:
    """The learner of ``config.method``."""
    # Tasks are told apart by their templates and verbalizers, scored by the LM head.
    backbone.require_token_prediction("continual learning")
    if get_method(config.method).sequential:
        return ProgressiveLearner(backbone, tasks, config)
    return SharedLearner(backbone, tasks, config)
