"""Toxicity scorers behind one interface: ``score(texts) -> probabilities`` in [0, 1].

- ``profanity``: the scikit-learn model shipped in ``alt-profanity-check`` (fast, word-based);
- ``classifier``: softprompt's own scorer, a LoRA on MiniLM trained by softprompt on ParaDetox
  toxic vs neutral sentences (``scripts/train_toxicity_scorer.py``); its weights ship in the
  package (``tasks/generation/toxicity_scorer/``) and load onto the ``minilm-l6`` backbone;
- ``hf:<dir>``: any local Hugging Face sequence-classification model.

Each scorer class is registered with :func:`register_scorer`, the one place its name is written.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from softprompt.data.records import Example
from softprompt.errors import SoftpromptError, unknown_name
from softprompt.tasks.classification.model import label_probabilities
from softprompt.tasks.loading import load_classifier

PACKAGED_CLASSIFIER = Path(__file__).parent / "toxicity_scorer"
TOXIC = 0.5  # a text scoring above this counts as toxic
TOXIC_LABEL = re.compile(r"^(toxic|toxicity|offensive|hate|abusive|label_1)$", re.IGNORECASE)


class Scorer(Protocol):
    """Anything that maps texts to toxicity probabilities."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts)]`` probabilities that each text is toxic."""
        ...


@dataclass(frozen=True)
class ScorerSpec:
    """A registered toxicity scorer."""

    name: str
    description: str
    builder: Callable[..., Scorer]  # called with the argument when it takes one, else with none
    takes_argument: bool = False  # written name:<dir>, a model directory after the colon

    @property
    def usage(self) -> str:
        """How a config writes it: ``hf:<dir>`` or the bare name."""
        return f"{self.name}:<dir>" if self.takes_argument else self.name

    def build(self, argument: str = "") -> Scorer:
        """Load the scorer (``argument``: the text after the colon)."""
        return self.builder(argument) if self.takes_argument else self.builder()


SCORERS: dict[str, ScorerSpec] = {}


def register_scorer(name: str, description: str, *, takes_argument: bool = False) -> Callable[[type], type]:
    """Class decorator registering a scorer class; the name becomes its class attribute ``name``.
    Registration order is the order errors list them."""

    def decorate(cls: type) -> type:
        cls.name = name
        SCORERS[name] = ScorerSpec(name, description, cls, takes_argument)
        return cls

    return decorate


def get_scorer(name: str) -> tuple[ScorerSpec, str]:
    """The registered scorer that ``name`` writes and its argument (``hf:DIR`` -> the ``hf`` spec
    and ``DIR``), or an error suggesting the closest name."""
    base, colon, argument = name.partition(":")
    spec = SCORERS.get(base)
    if spec is None or spec.takes_argument != bool(colon):
        raise unknown_name("scorer", name, [s.usage for s in SCORERS.values()])
    return spec, argument


@register_scorer("profanity", "alt-profanity-check's word-based model (fast)")
class ProfanityScorer:
    """alt-profanity-check's linear SVM on TF-IDF features, calibrated to probabilities."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # its pickled model predates our scikit-learn
            warnings.simplefilter("ignore")
            from profanity_check import predict_prob

        self._predict = predict_prob

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self._predict(list(texts)), dtype=float)


@register_scorer("classifier", "softprompt's LoRA on MiniLM trained on ParaDetox (ships in the package)")
class ClassifierScorer:
    """A softprompt classification artifact whose labels include ``toxic``."""

    def __init__(self, artifact: str | Path = PACKAGED_CLASSIFIER, batch_size: int = 64, name: str | None = None):
        if not Path(artifact, "task.json").is_file():
            raise SoftpromptError(
                f"toxicity classifier {artifact} is missing; train it with scripts/train_toxicity_scorer.py"
            )
        self.name = name or type(self).name
        self.model, _ = load_classifier(artifact)
        self.model.eval()
        labels = self.model.task.labels
        if "toxic" not in labels:
            raise SoftpromptError(f"classifier {artifact} has labels {labels}; a toxicity scorer needs 'toxic'")
        self.toxic = labels.index("toxic")
        self.batch_size = batch_size

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        examples = [Example({"text": t}) for t in texts]
        return label_probabilities(self.model, examples, self.batch_size)[:, self.toxic].numpy().astype(float)


@register_scorer("hf", "a local Hugging Face sequence classifier: hf:<dir>", takes_argument=True)
class HFScorer:
    """A local Hugging Face sequence classifier: the probability of its toxic label (a label
    named toxic/offensive/hate/LABEL_1, else index 1), or the sigmoid of a single logit."""

    def __init__(self, directory: str | Path, batch_size: int = 64, max_length: int = 128):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise SoftpromptError(
                f"scorer {type(self).name}:{directory}: no Hugging Face model there (config.json missing)"
            )
        self.name = f"{type(self).name}:{directory.name}"
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
        labels = {i: str(name) for i, name in self.model.config.id2label.items()}
        matches = [i for i, name in labels.items() if TOXIC_LABEL.match(name)]
        self.toxic = matches[-1] if matches else min(1, len(labels) - 1)
        self.batch_size, self.max_length = batch_size, max_length

    @torch.inference_mode()
    def score(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            inputs = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            logits = self.model(**inputs).logits.float()
            if logits.shape[-1] == 1:
                out.append(torch.sigmoid(logits[:, 0]))
            else:
                out.append(torch.softmax(logits, -1)[:, self.toxic])
        return torch.cat(out).numpy().astype(float) if out else np.zeros(0)


def parse_scorer_names(spec: str) -> list[str]:
    """Split and check ``"profanity,classifier,hf:DIR"`` without loading anything."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise SoftpromptError("scorer: give at least one of " + ", ".join(s.usage for s in SCORERS.values()))
    for name in names:
        get_scorer(name)
    return names


def load_scorer(name: str) -> Scorer:
    """Build the scorer called ``name`` (a registered name, ``hf:<dir>`` for one taking a directory)."""
    spec, argument = get_scorer(name)
    return spec.build(argument)
