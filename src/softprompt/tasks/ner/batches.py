"""Token classification (NER) as batches: words → sub-tokens → windows → tensors, and back.

A sentence's words are tokenized together; each word's label goes on its first sub-token (the
others are ignored by the loss and by prediction). A row is ``[CLS] soft… sub-tokens [SEP]``:
soft tokens, when the method has them, follow ``[CLS]``. A sentence with more sub-tokens than fit
in the model's window is split at word boundaries into several windows, each its own row, and the
predictions are joined back, so no word goes untagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.core.forward import pad
from softprompt.data.conll import OUTSIDE, Sentence, entity_spans
from softprompt.errors import SoftpromptError
from softprompt.prompts.template import NO_SOFT

IGNORE = -100  # label of positions the loss skips (special, soft, non-first sub-tokens, padding)

# Words roughly as CoNLL splits them: runs of letters/digits with inner hyphens, apostrophes or
# dots ("Jean-Pierre", "don't", "3.5"), or single punctuation characters.
WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")


@dataclass
class Window:
    """One row: a run of a sentence's words, tokenized."""

    sentence: int  # index of the sentence in its split
    first_word: int  # index of the window's first word in the sentence
    ids: list[int]
    soft: list[int]  # index into the soft embeddings, NO_SOFT for real tokens
    word_starts: list[int]  # position of each word's first sub-token in ``ids``
    labels: list[int] | None  # tag index per position (IGNORE elsewhere), None when untagged


@dataclass
class TagBatch:
    """Padded tensors for a batch of windows."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    soft_index: torch.Tensor  # [B, L]
    labels: torch.Tensor | None  # [B, L], IGNORE where there is nothing to predict

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` character spans of the words of raw text, split as in CoNLL."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


@dataclass
class TaggingTask:
    """Turns tagged sentences into batches of windows for one tokenizer and tag set."""

    tokenizer: PreTrainedTokenizerBase
    tags: list[str]
    num_soft: int = 0
    max_length: int = 256

    def __post_init__(self) -> None:
        specials = int(self.tokenizer.cls_token_id is not None) + int(self.tokenizer.sep_token_id is not None)
        self.budget = self.max_length - specials - self.num_soft  # sub-tokens of words per window
        if self.budget < 1:
            raise SoftpromptError(
                f"train.max_length={self.max_length} leaves no room for words after {self.num_soft} soft tokens; "
                "raise train.max_length or lower prompt.length"
            )
        self.index = {tag: i for i, tag in enumerate(self.tags)}

    def tag_ids(self, sentence: Sentence, where: str) -> list[int]:
        """Tag indices, with an error naming ``where`` and the line for a tag the model lacks."""
        for offset, tag in enumerate(sentence.tags):
            if tag not in self.index:
                raise SoftpromptError(
                    f"{where} line {sentence.line + offset}: tag '{tag}' was not in the training data "
                    f"(known: {', '.join(self.tags)})"
                )
        return [self.index[tag] for tag in sentence.tags]

    def word_pieces(self, words: list[str]) -> tuple[list[list[int]], int]:
        """Sub-token ids per word, and how many words are (partly) unknown to the tokenizer.

        A word the tokenizer drops entirely (zero-width or control characters) gets the unknown
        token, so that every word still has a position to be tagged at.
        """
        encoded = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        pieces: list[list[int]] = [[] for _ in words]
        for position, word in enumerate(encoded.word_ids()):
            if word is not None:
                pieces[word].append(encoded["input_ids"][position])
        unk = self.tokenizer.unk_token_id
        fallback = unk if unk is not None else (self.tokenizer.pad_token_id or 0)
        unknown = 0
        for index, ids in enumerate(pieces):
            if not ids:
                pieces[index] = [fallback]
            if unk is not None and unk in pieces[index]:
                unknown += 1
        return pieces, unknown

    def encode(self, sentence: Sentence, index: int, where: str | None = None) -> list[Window]:
        """The windows of one sentence (labels when ``where`` is given and the sentence is tagged)."""
        pieces, _ = self.word_pieces(sentence.words)
        tag_ids = self.tag_ids(sentence, where) if where is not None and sentence.tags else None
        windows, start = [], 0
        while start < len(pieces):
            end, used = start, 0
            # Whole words while they fit; a single word longer than the window keeps its first
            # sub-tokens (only the first one is tagged).
            while end < len(pieces) and (used + len(pieces[end]) <= self.budget or end == start):
                used += min(len(pieces[end]), self.budget)
                end += 1
            windows.append(self._window(index, start, pieces[start:end], tag_ids[start:end] if tag_ids else None))
            start = end
        return windows

    def _window(self, sentence: int, first_word: int, pieces: list[list[int]], tags: list[int] | None) -> Window:
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pad = self.tokenizer.pad_token_id or 0
        ids = ([cls] if cls is not None else []) + [pad] * self.num_soft
        soft = [NO_SOFT] * len(ids)
        soft[len(ids) - self.num_soft :] = range(self.num_soft)
        starts = []
        for word in pieces:
            starts.append(len(ids))
            ids += word[: self.budget]
        if sep is not None:
            ids.append(sep)
        soft += [NO_SOFT] * (len(ids) - len(soft))
        labels = None
        if tags is not None:
            labels = [IGNORE] * len(ids)
            for position, tag in zip(starts, tags, strict=True):
                labels[position] = tag
        return Window(sentence, first_word, ids, soft, starts, labels)

    def collate(self, windows: list[Window]) -> TagBatch:
        """Right-pad windows into a :class:`TagBatch`."""
        padded = pad(
            [w.ids for w in windows], self.tokenizer.pad_token_id or 0, left=False, soft=[w.soft for w in windows]
        )
        labels = None
        if all(w.labels is not None for w in windows):
            labels = pad([w.labels for w in windows], IGNORE, left=False).input_ids
        return TagBatch(padded.input_ids, padded.attention_mask, padded.soft_index, labels)

    def decode(self, windows: list[Window], predicted: list[list[int]], lengths: list[int]) -> list[list[str]]:
        """Per-sentence word tags from per-window predicted tag indices (one per word start)."""
        out = [[OUTSIDE] * n for n in lengths]
        for window, row in zip(windows, predicted, strict=True):
            for offset, tag in enumerate(row):
                out[window.sentence][window.first_word + offset] = self.tags[tag]
        return out


def entities(text: str, spans: list[tuple[str, int, int]], tags: list[str]) -> list[dict]:
    """Entities of raw ``text`` from its word spans and their predicted IOB2 tags."""
    found = []
    for kind, first, last in entity_spans(tags):
        start, end = spans[first][1], spans[last - 1][2]
        found.append({"text": text[start:end], "type": kind, "start": start, "end": end})
    return found
