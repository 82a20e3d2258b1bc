"""The prompted classifier: a frozen backbone + a method + the label scoring.

Causal LM: the label score is the log-probability of each verbalizer word after the template.
The output projection is computed only at the label position and only for the words' first
tokens (the first token's normaliser is shared by all labels of a row, so it cancels in the
softmax over labels); words with more tokens are continued from the KV cache and scored under
the full softmax. Encoder: a linear head at the mask position (trainable in every method).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from tqdm import tqdm

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.batching import length_sorted_batches
from softprompt.core.likelihood import continue_rows
from softprompt.core.packing import PackedRows, can_pack, pack_rows
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method
from softprompt.prompts import EncodedInput
from softprompt.tasks.base import TaskModel
from softprompt.tasks.classification.batches import Batch, ClassificationTask
from softprompt.tasks.classification.metrics import classification_metrics, prediction_profile


class PromptedClassifier(TaskModel):
    """Scores each label for a batch: ``forward(batch) -> [B, num_labels]`` log-probabilities."""

    def __init__(self, backbone: Backbone, method: Method, task: ClassificationTask, seed: int = 0):
        super().__init__(backbone, method, 0 if task.causal else len(task.labels), seed)
        self.task = task
        candidates = task.candidates
        self.first_ids = torch.tensor([c.ids[0] for c in candidates], dtype=torch.long, device=backbone.device)
        self.label_groups = [
            torch.tensor([k for k, c in enumerate(candidates) if c.label_index == i], device=backbone.device)
            for i in range(len(task.labels))
        ]
        self.multi = [k for k, c in enumerate(candidates) if len(c.ids) > 1]
        # [labels] log-probabilities of the prompt's own bias, divided out of every prediction
        # (contextual calibration, .calibration); None: predictions as the model gives them.
        self.calibration: torch.Tensor | None = None

    def calibrated(self, log_probs: torch.Tensor) -> torch.Tensor:
        """``[..., labels]`` log-probabilities with the calibration's bias divided out (renormalised)."""
        if self.calibration is None:
            return log_probs
        return torch.log_softmax(log_probs - self.calibration.to(log_probs.device), dim=-1)

    # ---- what the training loop asks of a task model -------------------------------------------
    def encode_split(self, examples: list[Example], where: str | None = None) -> list[EncodedInput]:
        return self.task.encode_all(examples)

    def training_rows(self, examples: list[Example], encoded: list[EncodedInput], where: str) -> list:
        return list(zip(encoded, self.task.label_ids(examples, where), strict=True))

    def row_length(self, row) -> int:
        """Tokens of a training row (for ``train.group_by_length``)."""
        return len(row[0].ids)

    def row_class(self, row) -> int | None:
        """Gold label of a training row: length-grouped batches keep the class mix by it."""
        return int(row[1])

    def evaluate_examples(
        self,
        examples: list[Example],
        batch_size: int = 32,
        encoded: list[EncodedInput] | None = None,
        where: str = "data",
        progress: str | None = None,
    ) -> dict[str, Any]:
        """Accuracy, macro-F1 and F1 per label on labelled ``examples``, and what the model
        predicted there (``predicted``: the reference a server measures drift against)."""
        gold = self.task.label_ids(examples, where)
        probabilities = label_probabilities(self, examples, batch_size, encoded, progress)
        metrics = classification_metrics(probabilities.argmax(-1).tolist(), gold, self.task.labels)
        return {**metrics, "predicted": prediction_profile(probabilities.tolist(), self.task.labels)}

    def loss(self, rows: list) -> torch.Tensor:
        """Mean negative log-likelihood of the gold labels of ``rows`` (from :meth:`training_rows`)."""
        encoded, labels = [encoded for encoded, _ in rows], [label for _, label in rows]
        share = False if self.inline_soft_prompt else None  # None: the task's own choice
        batch = core.to_device(self.task.collate(encoded, labels, share_prefix=share), self.backbone.device)
        with core.checkpointed(self.backbone) if self.checkpointing else contextlib.nullcontext():
            return torch.nn.functional.nll_loss(self(batch), batch.labels)

    def enable_gradient_checkpointing(self) -> None:
        super().enable_gradient_checkpointing()
        if self.multi:
            self.checkpointing = False
            raise SoftpromptError(
                "train.gradient_checkpointing needs one-token verbalizer words (longer words are scored "
                "from a key/value cache, which checkpointed layers drop); choose one-token words"
            )

    def describe(self) -> dict[str, Any]:
        """The task's part of the artifact's record."""
        template = self.task.template
        return {
            "template": template.source,
            "verbalizer": self.task.verbalizer.to_dict(),
            "labels": self.task.labels,
            "demonstrations": self.task.demonstrations,
            **({"fewshot": self.task.chooser.record()} if self.task.chooser else {}),
            "soft_prefix": template.leading_soft == template.num_soft > 0,
            **({"calibration": self.calibration_record()} if self.calibration is not None else {}),
        }

    def calibration_record(self) -> dict[str, Any]:
        """What an artifact records of the calibration: the method and the bias per label."""
        return {"method": "contextual", "log_bias": dict(zip(self.task.labels, self.calibration.tolist(), strict=True))}

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        batch = core.to_device(batch, self.backbone.device)
        scores = self._causal_scores(batch) if self.task.causal else self._encoder_scores(batch)
        return self.calibrated(torch.log_softmax(scores, dim=-1))

    def _encoder_scores(self, batch: Batch) -> torch.Tensor:
        hidden = self.encoder_hidden(batch.input_ids, batch.soft_index, batch.attention_mask)
        rows = torch.arange(len(batch), device=hidden.device)
        return self.head(hidden[rows, batch.mask_positions].float())

    def _causal_scores(self, batch: Batch) -> torch.Tensor:
        """``[B, candidates]`` log-scores of each verbalizer word after the template, in three steps:
        what every row sees first (:func:`~softprompt.core.forward.leading_context`), then the rows themselves, packed
        into fewer, longer rows where that pays off or padded otherwise."""
        embeds = self.embed(batch.input_ids, batch.soft_index)
        frozen = self._frozen_columns(batch)
        leading = self.method.prefix_length() + batch.prefix_soft
        packed = self.packing(batch, leading, frozen)
        rows = packed.rows if packed is not None else len(batch)
        context = core.leading_context(self.backbone, self.method, rows, batch.prefix_soft)
        if packed is not None:
            hidden = core.hidden_states(
                self.backbone,
                inputs_embeds=embeds.flatten(0, 1)[packed.source].view(packed.rows, -1, embeds.shape[-1]),
                attention_mask=core.additive_mask(packed.mask, self.backbone),
                position_ids=packed.positions,
                past_key_values=context.cache,
                use_cache=context.cache is not None,
            ).last_hidden_state
            return self._by_label(self.project(hidden.flatten(0, 1)[packed.last], self.first_ids))
        return self._by_label(self._padded_scores(batch, embeds, context, frozen))

    def _padded_scores(
        self, batch: Batch, embeds: torch.Tensor, context: core.LeadingContext, frozen: int
    ) -> torch.Tensor:
        """Word scores of left-padded rows continuing ``context``. The first ``frozen`` columns
        (nothing there depends on a trained parameter) run without a graph, their cache reused."""
        mask, positions = context.mask(batch.attention_mask), context.positions(batch.attention_mask)
        cache = context.cache
        if frozen:  # _frozen_columns is 0 whenever there is a leading context
            with torch.no_grad():
                cache = core.hidden_states(
                    self.backbone,
                    inputs_embeds=embeds[:, :frozen],
                    attention_mask=mask[:, :frozen],
                    position_ids=positions[:, :frozen],
                    use_cache=True,
                ).past_key_values
        out = core.hidden_states(
            self.backbone,
            inputs_embeds=embeds[:, frozen:],
            attention_mask=mask,
            position_ids=positions[:, frozen:],
            past_key_values=cache,
            use_cache=bool(self.multi) or cache is not None,
        )
        scores = self.project(out.last_hidden_state[:, -1], self.first_ids)
        if self.multi:
            scores = scores + self._continuation_logprobs(out.past_key_values, mask, positions[:, -1])
        return scores

    def _by_label(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B, candidates]`` word scores -> ``[B, labels]`` (log-sum-exp over each label's words)."""
        return torch.stack([scores[:, group].logsumexp(-1) for group in self.label_groups], dim=-1)

    def packing(self, batch: Batch, shared: int, frozen: int) -> PackedRows | None:
        """How to pack the batch's rows (None: run it padded). Multi-token words continue each row
        from its own cache, and a frozen leading part is cached per row, so those stay padded."""
        if not self.task.pack or self.multi or frozen or not can_pack(self.model, shared, batch.input_ids.shape[1]):
            return None
        return pack_rows(batch.attention_mask, shared)

    def _frozen_columns(self, batch: Batch) -> int:
        """Leading columns that need no gradient (0 when the split would not pay off)."""
        if (
            not torch.is_grad_enabled()
            or self.checkpointing
            or batch.prefix_soft
            or self.method.prefix_length()
            or self.method.changes_layers
            or self.method.soft_embeddings() is None
        ):
            return 0
        soft_columns = (batch.soft_index >= 0).any(0).nonzero()
        return int(soft_columns[0]) if len(soft_columns) else 0

    def project(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 LM-head logits for ``hidden``, restricted to ``token_ids`` when given."""
        return core.project(self.backbone, hidden, token_ids)

    def _continuation_logprobs(self, cache, mask: torch.Tensor, last_position: torch.Tensor) -> torch.Tensor:
        """Log-probability of the 2nd..nth tokens of multi-token words, continued from the cache."""
        candidates = [self.task.candidates[k] for k in self.multi]
        size, count = mask.shape[0], len(candidates)
        # row b * count + m continues row b with word m: its tokens after the first
        continued = continue_rows(
            self.backbone, cache, mask, last_position, [c.ids[:-1] for _ in range(size) for c in candidates], count
        )
        steps = continued.tokens.shape[1]
        targets = core.pad([c.ids[1:] for c in candidates], 0, left=False, device=mask.device, width=steps)
        picked = core.token_logprobs(continued.logits, targets.input_ids.repeat(size, 1))
        per_word = (picked * continued.valid).sum(-1).view(size, count)
        extra = per_word.new_zeros(size, len(self.task.candidates))
        extra[:, self.multi] = per_word
        return extra


@torch.inference_mode()
def label_probabilities(
    model: PromptedClassifier,
    examples: list[Example],
    batch_size: int = 32,
    encoded: list[EncodedInput] | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """``[N, num_labels]`` probabilities over the labels.

    Rows are batched in order of length (less padding; results are put back in input order).
    """
    encoded = encoded if encoded is not None else model.task.encode_all(examples)
    out = torch.empty(len(encoded), len(model.task.labels))
    batches = list(length_sorted_batches([len(e.ids) for e in encoded], batch_size))
    for index in tqdm(batches, desc=progress, leave=False, disable=progress is None, unit="batch"):
        batch = model.task.collate([encoded[i] for i in index])
        out[index] = model(batch).exp().float().cpu()
    return out
