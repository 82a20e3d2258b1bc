"""Many tasks in one batch: each row carries its own task's soft prompt, template and verbalizer,
on one frozen causal backbone in memory.

A prompt that leads its template does not depend on the row's text, so each *distinct* prompt of
the batch runs through the model once (the distinct prompts side by side, left-padded to the
longest) and its key/value cache is gathered for the rows that use it. The rest of every row
continues from its prompt's cache. The label is scored at the last position, projecting only onto
the verbalizer words' first tokens of the tasks in the batch. Results equal each task's own
:class:`~softprompt.tasks.classification.model.PromptedClassifier` (tested to a tight tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from softprompt.core import forward as core
from softprompt.core.batching import length_sorted_batches
from softprompt.core.prompt_caches import PromptCaches
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.methods.row_adapters import RowAdapters
from softprompt.prompts import EncodedInput
from softprompt.tasks.classification.model import PromptedClassifier


def mixable(model: PromptedClassifier, prefixes: bool = False) -> str | None:
    """Why ``model`` cannot share a batch with other tasks, or None when it can. ``prefixes``:
    prefix tuning's prefixes mix too (frozen, kept in a store of prompt caches: serving)."""
    if not model.task.causal:
        return "mixed batches need a causal LM backbone"
    if model.method.changes_layers or (model.method.prefix_length() and not prefixes):
        return (
            f"method {model.method.name} changes the backbone's layers; soft-prompt methods mix in one batch, "
            "and LoRA and IA3 loaded apart (load_model(..., apart=True))"
        )
    return None


class MixedPromptClassifier(nn.Module):
    """Classify rows of different tasks together: ``forward(tasks, encoded)`` gives each row its
    own task's label log-probabilities.

    Args:
        models: task name -> a classifier; all on the same backbone object, all :func:`mixable`.
        prompt_caches: a store for the prompts' key/value caches, for an owner whose prompts do
            not change (it calls ``prompt_caches.forget(name)`` when it replaces a task).
    """

    def __init__(self, models: dict[str, PromptedClassifier], prompt_caches: PromptCaches | None = None):
        super().__init__()
        if not models:
            raise SoftpromptError("no tasks to serve")
        # Frozen prompts' caches kept across batches, keyed by task name (serving); None: every
        # batch runs its prompts (training, and evaluation while training).
        self.prompt_caches = prompt_caches
        first = next(iter(models.values()))
        self.backbone = first.backbone
        self.row_adapters = RowAdapters(self.backbone.model)  # LoRA and IA3 tasks' weights, per row
        self.pad_id = first.task.tokenizer.pad_token_id or 0
        self.tasks: dict[str, PromptedClassifier] = {}
        for name, model in models.items():
            self.put(name, model)

    def put(self, name: str, model: PromptedClassifier) -> None:
        """Add task ``name`` (or replace it: its kept prompt cache is dropped)."""
        if model.backbone is not self.backbone:
            raise SoftpromptError(f"task '{name}' is on another backbone object; load all tasks on one backbone")
        reason = mixable(model, prefixes=self.prompt_caches is not None)
        if reason:
            raise SoftpromptError(f"task '{name}': {reason}")
        self.tasks[name] = model
        if self.prompt_caches is not None:
            self.prompt_caches.forget(name)

    def remove(self, name: str) -> None:
        del self.tasks[name]
        if self.prompt_caches is not None:
            self.prompt_caches.forget(name)

    @torch.inference_mode()
    def warm(self, names: Sequence[str]) -> int:
        """Compute the kept prompt caches of tasks ``names`` ahead of their requests, within the
        store's budget (nothing without a store). Returns how many were computed."""
        leading = {name: self._lead(name) for name in names if name in self.tasks}
        if self.prompt_caches is None:
            return 0
        # Tasks without a leading prompt get an empty entry (free), so they are not misses later.
        return self.prompt_caches.warm(list(leading), lambda name: self._soft(name, leading[name]))

    def encode(self, task: str, example: Example) -> EncodedInput:
        return self.tasks[task].task.encode(example)

    def forward(self, tasks: Sequence[str], encoded: Sequence[EncodedInput]) -> list[torch.Tensor]:
        """Per row, the ``[num_labels]`` log-probabilities of its task's labels."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
        # Multi-token verbalizer words continue each row from its cache with every candidate; those
        # rows go through their own task's model, one group per task, and everything else mixes.
        single = [i for i, name in enumerate(tasks) if not self.tasks[name].multi]
        for name in dict.fromkeys(tasks[i] for i in range(len(tasks)) if self.tasks[tasks[i]].multi):
            index = [i for i, task in enumerate(tasks) if task == name]
            model = self.tasks[name]
            with self.row_adapters.selected([model.row_adapter] * len(index)):
                scores = model(model.task.collate([encoded[i] for i in index]))
            for i, row in zip(index, scores, strict=True):
                out[i] = row
        if single:
            scores = self._mixed([tasks[i] for i in single], [encoded[i] for i in single])
            for i, row in zip(single, scores, strict=True):
                out[i] = row
        return out

    def _mixed(self, tasks: Sequence[str], encoded: Sequence[EncodedInput]) -> list[torch.Tensor]:
        """One forward pass for rows of single-token-verbalizer tasks."""
        device = self.backbone.device
        distinct = list(dict.fromkeys(tasks))
        column = {name: i for i, name in enumerate(distinct)}
        rows = torch.tensor([column[name] for name in tasks], device=device)
        lead = [self._lead(name) for name in distinct]
        cache, prefix_mask = self._prompt_caches(distinct, lead, rows)
        skip = [self._lead_tokens(name) for name in distinct]
        embeds, mask = self._row_inputs(tasks, encoded, skip, [column[name] for name in tasks])
        lead_of_row = torch.tensor([lead[column[name]] for name in tasks], device=device).unsqueeze(1)
        full_mask = torch.cat([prefix_mask, mask], dim=1) if prefix_mask is not None else mask
        with self.row_adapters.selected([self.tasks[name].row_adapter for name in tasks]):
            hidden = core.hidden_states(
                self.backbone,
                inputs_embeds=embeds,
                attention_mask=full_mask,
                position_ids=core.positions(mask, lead_of_row),
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state[:, -1]
        return self._label_scores(tasks, hidden)

    def _lead(self, name: str) -> int:
        """The columns of a task's prompt cache: its prefixes (prefix tuning), else the leading soft
        tokens of its template (the part computed once)."""
        return self.tasks[name].method.prefix_length() or self._lead_tokens(name)

    def _lead_tokens(self, name: str) -> int:
        """Leading soft tokens of a task's template: its rows' tokens that the prompt cache stands for."""
        model = self.tasks[name]
        return model.task.template.leading_soft if model.method.soft_embeddings() is not None else 0

    def _prompt_caches(self, distinct: list[str], lead: list[int], rows: torch.Tensor):
        """Each distinct leading prompt's key/value cache, gathered for the rows that use it: from
        the owner's store of frozen prompts when there is one (serving), else run for this batch,
        once per distinct prompt (training: gradients flow back through them)."""
        if max(lead) == 0:
            return None, None
        if self.prompt_caches is None:
            layers, mask = core.prompt_cache(
                self.backbone, [self._soft(n, c) for n, c in zip(distinct, lead, strict=True)]
            )
        else:
            if torch.is_grad_enabled():
                raise RuntimeError("a store of prompt caches serves frozen prompts; train without one")
            count = dict(zip(distinct, lead, strict=True))
            layers, mask = self.prompt_caches.batch(distinct, lambda name: self._soft(name, count[name]))
        return core.gather_cache(self.backbone, layers, rows), mask[rows]

    def _soft(self, name: str, count: int) -> torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]]:
        """Task ``name``'s leading prompt: its first ``count`` soft tokens, or its prefixes' keys and
        values (prefix tuning; a store keeps them as they are)."""
        method = self.tasks[name].method
        if method.prefix_length():
            dtype = self.backbone.placement.dtype
            return [(layer.keys.to(dtype), layer.values.to(dtype)) for layer in method.prefix_cache(1).layers]
        soft = method.soft_embeddings()
        return soft[:count].float() if count else torch.zeros(0, self.backbone.hidden_size, device=self.backbone.device)

    def _row_inputs(self, tasks, encoded, skip, columns) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded embeddings of every row after its leading prompt (``skip``: its tokens, per
        distinct task), soft tokens in place: the tasks' soft tokens side by side in one table,
        each row's indices offset to its task's."""
        offset, tables = {}, []
        for name in dict.fromkeys(tasks):
            soft = self.tasks[name].method.soft_embeddings()
            offset[name] = sum(len(t) for t in tables)
            tables.append(soft if soft is not None else torch.zeros(0, self.backbone.hidden_size))
        parts = [(e.ids[skip[c] :], e.soft[skip[c] :]) for e, c in zip(encoded, columns, strict=True)]
        soft_rows = [
            [s + offset[name] if s >= 0 else s for s in soft] for (_, soft), name in zip(parts, tasks, strict=True)
        ]
        padded = core.pad(
            [ids for ids, _ in parts], self.pad_id, left=True, device=self.backbone.device, soft=soft_rows
        )
        table = torch.cat([t.float().to(self.backbone.device) for t in tables])
        return core.embed(self.backbone, padded.input_ids, padded.soft_index, table), padded.attention_mask

    def _label_scores(self, tasks: Sequence[str], hidden: torch.Tensor) -> list[torch.Tensor]:
        """Project each row onto its own task's words' first tokens (one matmul for the union)."""
        union = sorted({t for name in set(tasks) for t in self.tasks[name].first_ids.tolist()})
        where = {token: i for i, token in enumerate(union)}
        logits = core.project(self.backbone, hidden, torch.tensor(union, device=hidden.device))
        out = []
        for row, name in enumerate(tasks):
            model = self.tasks[name]
            scores = logits[row, [where[t] for t in model.first_ids.tolist()]]
            labels = torch.stack([scores[group].logsumexp(-1) for group in model.label_groups])
            out.append(model.calibrated(torch.log_softmax(labels, dim=-1)))
        return out


@torch.inference_mode()
def classify_mixed(
    mixed: MixedPromptClassifier, requests: Sequence[tuple[str, Example]], batch_size: int = 32
) -> list[torch.Tensor]:
    """Label probabilities for ``(task, example)`` pairs in any order, in batches that mix tasks
    (sorted by length: less padding; results come back in input order)."""
    encoded = [mixed.encode(task, example) for task, example in requests]
    out: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    for index in length_sorted_batches([len(e.ids) for e in encoded], batch_size):
        scores = mixed([requests[i][0] for i in index], [encoded[i] for i in index])
        for i, row in zip(index, scores, strict=True):
            out[i] = row.exp().float().cpu()
    return out
