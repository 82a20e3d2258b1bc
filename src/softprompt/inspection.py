"""Reading a trained prompt: each soft token's nearest vocabulary tokens and its norm."""

from __future__ import annotations

from typing import Any

import torch

from softprompt.model import TaskModel


def nearest_tokens(model: TaskModel, top: int = 5) -> list[dict[str, Any]]:
    """For each soft token: its norm and the ``top`` vocabulary tokens by cosine similarity."""
    soft = model.method.soft_embeddings()
    if soft is None:
        return []
    tokenizer = model.backbone.tokenizer
    vocab = model.model.get_input_embeddings().weight.detach()
    soft = soft.detach()
    cosine = torch.nn.functional.normalize(soft, dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
    values, ids = cosine.topk(min(top, vocab.shape[0]), dim=-1)
    rows = []
    for index in range(soft.shape[0]):
        neighbours = [
            {"token": tokenizer.decode([int(t)]), "cosine": round(float(v), 4)}
            for v, t in zip(values[index], ids[index], strict=True)
        ]
        rows.append({"index": index, "norm": round(float(soft[index].norm()), 4), "nearest": neighbours})
    return rows
