"""Token classification: a frozen encoder, a method, and a linear tag head (trainable in every
method, and counted in its trainable parameters)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.batching import length_sorted_batches
from softprompt.data.conll import Sentence
from softprompt.methods.base import Method
from softprompt.tasks.base import TaskModel
from softprompt.tasks.ner.batches import IGNORE, TagBatch, TaggingTask, Window
from softprompt.tasks.ner.metrics import evaluate_tagger


class TokenTagger(TaskModel):
    """``forward(batch) -> [B, L, num_tags]`` tag logits at every position."""

    metric = "f1"

    def __init__(self, backbone: Backbone, method: Method, task: TaggingTask, seed: int = 0):
        super().__init__(backbone, method, len(task.tags), seed)
        self.task = task

    # ---- what the training loop asks of a task model -------------------------------------------
    def encode_split(self, sentences: list[Sentence], where: str | None = None) -> list[list[Window]]:
        """Windows per sentence, with tag labels when ``where`` (for error messages) is given."""
        return [self.task.encode(sentence, index, where) for index, sentence in enumerate(sentences)]

    def training_rows(self, sentences: list[Sentence], encoded: list[list[Window]], where: str) -> list[Window]:
        return [window for per_sentence in encoded for window in per_sentence]

    def row_length(self, row: Window) -> int:
        """Tokens of a training row (for ``train.group_by_length``)."""
        return len(row.ids)

    def row_weight(self, row: Window) -> int:
        """The loss averages over tagged words: a window weighs its word count."""
        return sum(label != IGNORE for label in row.labels or [])

    def loss(self, rows: list[Window]) -> torch.Tensor:
        """Mean cross-entropy over the words (first sub-tokens) of the windows in ``rows``."""
        batch = core.to_device(self.task.collate(rows), self.backbone.device)
        with core.checkpointed(self.backbone) if self.checkpointing else contextlib.nullcontext():
            logits = self(batch)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE)

    def evaluate_examples(
        self,
        sentences: list[Sentence],
        batch_size: int = 32,
        encoded: list | None = None,
        where: str = "data",
        progress: str | None = None,
    ) -> dict[str, Any]:
        """Entity-level metrics on tagged ``sentences`` (see :func:`evaluate_tagger`)."""
        return evaluate_tagger(self, sentences, batch_size, encoded, where, progress)

    def describe(self) -> dict[str, Any]:
        """The task's part of the artifact's record."""
        return {"tags": self.task.tags, "num_soft": self.task.num_soft, "soft_prefix": False}

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, batch: TagBatch) -> torch.Tensor:
        batch = core.to_device(batch, self.backbone.device)
        return self.head(self.encoder_hidden(batch.input_ids, batch.soft_index, batch.attention_mask).float())

    @torch.inference_mode()
    def predict(
        self, sentences: list[Sentence], batch_size: int = 32, encoded: list[list[Window]] | None = None, bar=None
    ) -> list[list[str]]:
        """Predicted IOB2 tags for every word of every sentence."""
        encoded = encoded if encoded is not None else self.encode_split(sentences)
        windows = [window for per_sentence in encoded for window in per_sentence]
        predicted: list[list[int]] = [[] for _ in windows]
        for index in length_sorted_batches([len(w.ids) for w in windows], batch_size):
            chunk = [windows[i] for i in index]
            best = self(self.task.collate(chunk)).argmax(-1)
            for row, i in enumerate(index):
                predicted[i] = best[row, windows[i].word_starts].tolist()
            if bar is not None:
                bar.update(len(index))
        return self.task.decode(windows, predicted, [len(s.words) for s in sentences])
