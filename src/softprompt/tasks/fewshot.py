"""Few-shot demonstrations: which labelled training rows go before each input, and in what order.

``fewshot.select``:

- ``balanced`` (the default): k rows drawn with the run's seed, round-robin over the labels so
  that each label appears about equally (a task without labels, such as generation, draws at
  random); the same rows before every input.
- ``random``: k rows drawn with the run's seed; the same before every input.
- ``similar``: for each input, the k training rows nearest to it in a sentence-embedding space
  (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?": KATE). The pool is embedded
  once, the inputs of a split once; a pool row identical to the input is never its own
  demonstration.

``fewshot.order``: ``shuffled`` (seeded) or, for ``similar``, ``nearest_last`` (the nearest row
right before the input: KATE's best order) or ``nearest_first``; ``auto`` is ``nearest_last``
for ``similar`` and ``shuffled`` otherwise.

Fixed demonstrations are recorded as text in the artifact; ``similar`` records its pool and
settings, so that a loaded artifact chooses as the run did (with the same embedder: a Hub id
must name the same weights; inputs embedded one by one rather than in a batch may differ in the
last float bits, which can swap two neighbours that are all but tied). The whole pool goes into
``task.json``: cap it with ``fewshot.pool`` for a small artifact.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from softprompt.backbones.embedder import embed
from softprompt.config import FewshotConfig
from softprompt.errors import SoftpromptError

SEPARATOR = "\n\n"  # after every demonstration: a blank line before the next one or the input
CACHED_INPUTS = 50_000  # input embeddings kept (a server sees new inputs forever)


@dataclass(frozen=True)
class Demo:
    """One demonstration: the rendered block and what its likeness to an input is measured on."""

    query: str  # the row's template fields, joined: what is embedded
    block: str  # the template rendered with the answer (no separator)
    label: str | None = None  # for balanced draws; None where the task has no labels


def query_text(fields: dict[str, str], names: Sequence[str]) -> str:
    """The text an input (or a demonstration) is compared by: its template fields, in order."""
    return "\n".join(fields.get(name, "") for name in names)


def fixed_demonstrations(pool: list[Demo], k: int, select: str, seed: int, labels: Sequence[str] = ()) -> str:
    """The k demonstrations put before every input (``random`` or ``balanced``), as text."""
    if k == 0 or not pool:
        return ""
    rng = random.Random(seed)
    if select == "random" or not labels:
        chosen = rng.sample(pool, min(k, len(pool)))  # already in random order
    else:
        by_label = {label: [demo for demo in pool if demo.label == label] for label in labels}
        for demos in by_label.values():
            rng.shuffle(demos)
        chosen = []
        while len(chosen) < k and any(by_label.values()):
            for label in labels:
                if by_label[label] and len(chosen) < k:
                    chosen.append(by_label[label].pop())
        rng.shuffle(chosen)
    return "".join(demo.block + SEPARATOR for demo in chosen)


class SimilarDemonstrations:
    """Per input, the k pool rows nearest to it (cosine of sentence embeddings), ordered."""

    def __init__(self, pool: list[Demo], k: int, order: str, seed: int, fields: list[str], embedder: str) -> None:
        self.pool, self.k, self.order, self.seed = pool, k, order, seed
        self.fields, self.embedder = fields, embedder
        self._pool_vectors: np.ndarray | None = None
        self._inputs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # a server chooses from several threads

    def prepare(self, inputs: Sequence[dict[str, str]]) -> None:
        """Embed the inputs of a split in one call (else each is embedded when first seen)."""
        with self._lock:
            self._embed_inputs([query_text(f, self.fields) for f in inputs])

    def _embed_inputs(self, queries: list[str]) -> None:
        missing = list(dict.fromkeys(q for q in queries if q not in self._inputs))
        if len(self._inputs) + len(missing) > CACHED_INPUTS:
            self._inputs.clear()
        if missing:
            self._inputs.update(zip(missing, embed(missing, self.embedder), strict=True))

    def for_input(self, fields: dict[str, str]) -> str:
        """The demonstrations put before this input, as text."""
        query = query_text(fields, self.fields)
        with self._lock:
            if self._pool_vectors is None:
                self._pool_vectors = embed([demo.query for demo in self.pool], self.embedder)
            vector = self._inputs.get(query)
            if vector is None:
                self._embed_inputs([query])
                vector = self._inputs[query]
            likeness = self._pool_vectors @ vector
        ranked = [i for i in np.argsort(-likeness, kind="stable") if self.pool[i].query != query][: self.k]
        if self.order == "nearest_last":
            ranked.reverse()
        elif self.order == "shuffled":
            random.Random(f"{self.seed}:{query}").shuffle(ranked)
        return "".join(self.pool[i].block + SEPARATOR for i in ranked)

    def record(self) -> dict[str, Any]:
        """What an artifact keeps to choose the same demonstrations after loading."""
        settings = {"select": "similar", "k": self.k, "order": self.order, "seed": self.seed}
        return {**settings, "fields": self.fields, "embedder": self.embedder, "pool": [asdict(d) for d in self.pool]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SimilarDemonstrations:
        pool = [Demo(**demo) for demo in record["pool"]]
        return cls(pool, record["k"], record["order"], record["seed"], record["fields"], record["embedder"])


def choose_demonstrations(
    pool: list[Demo], fewshot: FewshotConfig, seed: int, fields: list[str], labels: Sequence[str] = ()
) -> tuple[str, SimilarDemonstrations | None]:
    """The run's demonstrations: fixed text, or a per-input chooser for ``select=similar``.

    Raises:
        SoftpromptError: ``fewshot.k`` is more than the training rows there are to draw from.
    """
    if fewshot.k == 0:
        return "", None
    capped = fewshot.select == "similar" and fewshot.pool is not None and fewshot.pool < len(pool)
    if capped:
        pool = random.Random(seed).sample(pool, fewshot.pool)
    if fewshot.k > len(pool):  # else the prompt, missing demonstrations, would be blamed on max_length
        kept = f" that fewshot.pool={fewshot.pool} keeps" if capped else ""
        raise SoftpromptError(
            f"fewshot.k={fewshot.k} is more than the {len(pool)} training examples{kept}; "
            f"give fewshot.k of at most {len(pool)}"
        )
    if fewshot.select != "similar":
        return fixed_demonstrations(pool, fewshot.k, fewshot.select, seed, labels), None
    order = "nearest_last" if fewshot.order == "auto" else fewshot.order
    return "", SimilarDemonstrations(pool, fewshot.k, order, seed, list(fields), fewshot.embedder)


def load_demonstrations(record: dict[str, Any] | None) -> SimilarDemonstrations | None:
    """The chooser an artifact's ``fewshot`` record describes, if it chooses per input."""
    if not record or record.get("select") != "similar":
        return None
    return SimilarDemonstrations.from_record(record)
