"""Verbalizers: each label maps to one or more words that the LM should say after the template.

A word may be several tokens; it is scored by the log-probability of its whole token sequence
(``tasks.classification`` does the scoring), and a label with several words scores the
log-sum-exp of its words (the probability that the model says any of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from softprompt.errors import SoftpromptError


@dataclass(frozen=True)
class Candidate:
    """One verbalizer word as tokens, and the label it stands for."""

    label_index: int
    word: str
    ids: tuple[int, ...]


class Verbalizer:
    """Label -> words mapping, e.g. ``{"positive": "great", "negative": ["bad", "awful"]}``."""

    def __init__(self, mapping: dict[str, Any]):
        if not mapping:
            raise SoftpromptError(
                "verbalizer is empty; map each label to a word, e.g. {positive: great, negative: terrible}"
            )
        if len(mapping) == 1:  # one label wins every input with probability 1: nothing to learn or measure
            raise SoftpromptError(
                f"a verbalizer needs at least two labels; this one has only '{next(iter(mapping))}': map each "
                "label of the data to a word, e.g. verbalizer={positive: great, negative: terrible}"
            )
        self.labels: list[str] = [str(label) for label in mapping]
        self.words: list[list[str]] = []
        for label, words in mapping.items():
            if isinstance(words, (str, int, float)):
                words = [words]
            elif words is None or isinstance(words, (list, tuple, set)):
                words = list(words or [])
            else:  # e.g. a YAML date, or a mapping
                raise SoftpromptError(
                    f"verbalizer label '{label}': expected a word or a list of words, got a {type(words).__name__}"
                )
            words = [str(w) for w in words if str(w).strip()]
            if not words:
                raise SoftpromptError(f"verbalizer label '{label}' has no word")
            self.words.append(words)

    def to_dict(self) -> dict[str, list[str]]:
        return dict(zip(self.labels, self.words, strict=True))

    def index(self, label: str, where: str) -> int:
        """The index of ``label``, or an error naming where the unknown label was found."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise SoftpromptError(
                f"{where}: label '{label}' is not in the verbalizer (labels: "
                f"{', '.join(self.labels)}); add it to `verbalizer`"
            ) from None

    def candidates(self, tokenizer: PreTrainedTokenizerBase, space_before: bool) -> list[Candidate]:
        """Tokenize every word. With ``space_before``, a word starting with a letter or digit gets a
        leading space, as it would follow ``Sentiment:`` in running text."""
        out = []
        for index, words in enumerate(self.words):
            for word in words:
                text = f" {word}" if space_before and word[:1].isascii() and word[:1].isalnum() else word
                ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                if not ids:
                    raise SoftpromptError(f"verbalizer word {word!r} tokenizes to nothing")
                out.append(Candidate(index, word, ids))
        self._check_distinct(out)
        return out

    def _check_distinct(self, candidates: list[Candidate]) -> None:
        """Two labels saying the same tokens score the same on every input: training cannot
        separate them (it would predict 0.5/0.5 forever), so refuse them by name."""
        seen: dict[tuple[int, ...], Candidate] = {}
        for candidate in candidates:
            other = seen.setdefault(candidate.ids, candidate)
            if other.label_index != candidate.label_index:
                first, second = self.labels[other.label_index], self.labels[candidate.label_index]
                same = (
                    f"the word {other.word!r}"
                    if other.word == candidate.word
                    else f"{other.word!r} and {candidate.word!r}"
                )
                raise SoftpromptError(
                    f"verbalizer labels '{first}' and '{second}' cannot be told apart: both say {same} "
                    f"(the same tokens); give each label its own word"
                )
