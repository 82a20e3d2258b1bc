"""A soft prompt trained as a language-model prefix: the detox prompt, the expert and the anti-expert.

Rows are ``(token ids, unlikely)``. Likely rows get the usual next-token loss; unlikely rows get
the unlikelihood loss ``-log(1 - p(token))`` (Welleck et al., 2020), weighted by
``unlikelihood``, which pushes their tokens down. The prompt stands before the text exactly as
at generation time (``[soft][context ids]``, see :func:`~softprompt.generation.sampling.context_ids`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from softprompt.artifact import read_artifact
from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.errors import SoftpromptError
from softprompt.generation.sampling import context_ids
from softprompt.methods.base import Method
from softprompt.tasks.base import TaskModel, mean_token_loss
from softprompt.tasks.registry import GENERATE, TaskSpec, register_task


@register_task("lm", "a soft prompt that continues plain text (detox prompts, experts)")
class LanguageModeling(TaskSpec):
    """Soft prompts trained by the language-model loss; ``detox train`` writes them."""

    metric = metric_label = "neg_loss"
    made_by = "softprompt detox train"
    used_with = "`softprompt generate`, `softprompt detox eval` or `softprompt serve`"
    served_as = GENERATE

    def bare_prompt(self, path: Path, backbone: Backbone) -> torch.Tensor:
        return load_lm_prompt(path, backbone)


LM_TASK = LanguageModeling.name
Row = tuple[list[int], bool]  # (token ids, unlikely)


def encode_texts(backbone: Backbone, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of training texts, as the sampler encodes a context, cut to ``max_length``."""
    return [context_ids(backbone, text)[:max_length] for text in texts]


class PromptedLM(TaskModel):
    """Frozen causal LM + a leading soft prompt, scored by its language-model loss."""

    metric = "neg_loss"  # higher is better, like every dev metric of the training loop

    def __init__(self, backbone: Backbone, method: Method, max_length: int = 64, unlikelihood: float = 0.0):
        super().__init__(backbone, method)
        backbone.require_token_prediction("a detox prompt")
        self.max_length = max_length
        self.unlikelihood = unlikelihood

    def enable_gradient_checkpointing(self) -> None:
        raise SoftpromptError("train.gradient_checkpointing is not supported for detox prompts yet; leave it off")

    def row_length(self, row: Row) -> int:
        return len(row[0])

    def row_weight(self, row: Row) -> int:
        """The loss averages over every token of the rows: a row weighs its length."""
        return len(row[0])

    def describe(self) -> dict[str, Any]:
        return {"soft_prefix": True, "num_soft": self.method.num_soft_tokens, "max_length": self.max_length}

    def token_losses(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``[B, L]`` loss (NLL or weighted unlikelihood) and the mask of real tokens."""
        soft = self.method.soft_embeddings()
        count = len(soft)
        pad_id = self.backbone.tokenizer.pad_token_id or 0
        padded = core.pad([ids for ids, _ in rows], pad_id, left=False, device=self.backbone.device)
        ids, valid = padded.input_ids, padded.attention_mask.bool()
        width = ids.shape[1]
        embeds = torch.cat([soft.unsqueeze(0).expand(len(rows), -1, -1), self.embed(ids, padded.soft_index)], 1)
        mask = torch.cat([padded.attention_mask.new_ones(len(rows), count), padded.attention_mask], dim=1)
        # Position count - 1 + t (the last soft token's output) predicts text token t.
        logits, _ = core.next_token_logits(self.backbone, width + 1, inputs_embeds=embeds, attention_mask=mask)
        logprobs = core.token_logprobs(logits[:, :-1], ids)
        unlikely = torch.tensor([u for _, u in rows], device=ids.device).unsqueeze(1)
        # -log(1 - p), computed stably from log p.
        push_down = -torch.log1p(-logprobs.exp().clamp(max=1 - 1e-6)) * self.unlikelihood
        return torch.where(unlikely, push_down, -logprobs), valid

    def loss(self, rows: list[Row]) -> torch.Tensor:
        losses, valid = self.token_losses(rows)
        return (losses * valid).sum() / valid.sum().clamp(min=1)

    def dev_metrics(self, rows: list[Row], batch_size: int = 32) -> dict[str, float]:
        """Mean next-token loss per token of the likely ``rows`` (and its negation, the metric)."""
        return mean_token_loss(self.token_losses, [row for row in rows if not row[1]], batch_size)


def load_lm_prompt(directory: str | Path, backbone: Backbone) -> torch.Tensor:
    """The ``[n, hidden]`` soft prompt of a ``detox train`` artifact, checked against ``backbone``."""
    files = read_artifact(directory)
    meta = files.meta
    if meta.get("task") != LM_TASK:
        raise SoftpromptError(
            f"{directory} is a {meta.get('task')} artifact, not a detox prompt (softprompt detox train)"
        )
    recorded = meta["backbone"]
    if recorded["fingerprint"] != backbone.fingerprint:
        raise SoftpromptError(
            f"detox prompt {directory} was trained on backbone '{recorded['name']}', not on '{backbone.name}'; "
            f"retrain it with backbone={backbone.name}"
        )
    return files.state["prompt_embeddings"].to(device=backbone.device, dtype=backbone.placement.dtype)
