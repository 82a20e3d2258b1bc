"""Classification as data: a template, a verbalizer, a metric; here only the batching.

Causal LMs: rows are left-padded so that every row's label position is the last column. When the
template starts with a soft block, that block is the same in every row, so it is cut from the
rows and computed once per batch by the model (``Batch.prefix_soft``); the result is exact. The
model may then pack the rows end to end (:mod:`softprompt.core.packing`), also exact.
Encoders: rows are right-padded and the label is read at ``{mask}`` (or [CLS]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.core.forward import pad
from softprompt.data.records import Example
from softprompt.prompts import Candidate, EncodedInput, Template, Verbalizer
from softprompt.tasks.fewshot import Demo, SimilarDemonstrations, query_text


@dataclass
class Batch:
    """Padded tensors for one batch."""

    input_ids: torch.Tensor  # [B, L]; soft positions hold the pad id
    attention_mask: torch.Tensor  # [B, L]
    soft_index: torch.Tensor  # [B, L]; index into the soft embeddings, -1 for real tokens
    mask_positions: torch.Tensor | None = None  # [B] encoder label positions
    labels: torch.Tensor | None = None  # [B]
    prefix_soft: int = 0  # leading soft tokens shared by all rows, cut from input_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class ClassificationTask:
    """Turns examples into batches for one template + verbalizer on one tokenizer."""

    template: Template
    verbalizer: Verbalizer
    tokenizer: PreTrainedTokenizerBase
    causal: bool
    max_length: int = 256
    demonstrations: str = ""  # fixed few-shot text put before every input
    chooser: SimilarDemonstrations | None = None  # or demonstrations chosen per input
    share_prefix: bool = True  # compute the leading soft block once per batch (exact, faster)
    pack: bool = True  # pack short rows end to end instead of padding them (exact, faster)
    candidates: list[Candidate] = field(init=False)

    def __post_init__(self) -> None:
        space_before = not self.template.ends_with_space()
        self.candidates = self.verbalizer.candidates(self.tokenizer, space_before) if self.causal else []

    @property
    def labels(self) -> list[str]:
        return self.verbalizer.labels

    def encode(self, example: Example) -> EncodedInput:
        demos = self.chooser.for_input(example.fields) if self.chooser else self.demonstrations
        return self.template.encode(example.fields, self.tokenizer, self.causal, self.max_length, demos)

    def encode_all(self, examples: list[Example]) -> list[EncodedInput]:
        """Every example encoded (the inputs embedded in one call when demonstrations are chosen per input)."""
        if self.chooser:
            self.chooser.prepare([ex.fields for ex in examples])
        return [self.encode(ex) for ex in examples]

    def label_ids(self, examples: list[Example], where: str) -> list[int]:
        """Label indices, with an error naming ``where`` for a label the verbalizer lacks."""
        return [
            self.verbalizer.index(ex.label, where if ex.line is None else f"{where} line {ex.line}") for ex in examples
        ]

    def collate(
        self, encoded: list[EncodedInput], labels: list[int] | None = None, share_prefix: bool | None = None
    ) -> Batch:
        """Pad encoded rows into a :class:`Batch` (``share_prefix`` overrides the task's own)."""
        pad_id = self.tokenizer.pad_token_id or 0
        share = self.share_prefix if share_prefix is None else share_prefix
        cut = self.template.leading_soft if (self.causal and share) else 0
        padded = pad([e.ids[cut:] for e in encoded], pad_id, left=self.causal, soft=[e.soft[cut:] for e in encoded])
        mask_positions = None
        if not self.causal:
            mask_positions = torch.tensor([e.mask_position for e in encoded], dtype=torch.long)
        label_tensor = torch.tensor(labels, dtype=torch.long) if labels is not None else None
        return Batch(
            padded.input_ids, padded.attention_mask, padded.soft_index, mask_positions, label_tensor, prefix_soft=cut
        )


def demonstration_pool(template: Template, verbalizer: Verbalizer, examples: list[Example]) -> list[Demo]:
    """Labelled examples as few-shot demonstrations: the template without soft tokens, then the
    label's first word."""
    plain = template.without_soft()
    space = "" if plain.ends_with_space() else " "
    return [
        Demo(
            query_text(ex.fields, template.fields),
            f"{plain.render(ex.fields)}{space}{verbalizer.words[verbalizer.labels.index(ex.label)][0]}",
            ex.label,
        )
        for ex in examples
        if ex.label in verbalizer.labels
    ]
