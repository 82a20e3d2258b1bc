"""Sentence embeddings (sentence-transformers), for the rewriting metrics' similarity and for
choosing few-shot demonstrations that resemble the input."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

EMBEDDER = "minilm-l6"  # the bundled all-MiniLM-L6-v2 sentence-transformers directory


@lru_cache(maxsize=2)
def sentence_embedder(name: str = EMBEDDER):
    """A sentence-transformers model by backbone name, directory or Hub id (loaded once)."""
    from sentence_transformers import SentenceTransformer  # late: heavy, and only these two uses need it

    from softprompt.backbones.sources import resolve

    return SentenceTransformer(str(resolve(name)[2]), device="cpu")


def embed(texts: Sequence[str], name: str = EMBEDDER) -> np.ndarray:
    """Unit-length embeddings ``[len(texts), dim]`` (float32)."""
    model = sentence_embedder(name)
    return model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
