"""Reading trained prompts: each soft token's nearest vocabulary tokens and norm, and how two
prompts compare token by token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from softprompt.atomic import atomic_write
from softprompt.methods.transfer import check_same_backbone, prompt_similarity, read_soft_prompt, token_cosines
from softprompt.plotting import plt
from softprompt.tasks.base import TaskModel


def nearest_tokens(model: TaskModel, top: int = 5) -> list[dict[str, Any]]:
    """For each soft token: its norm and the ``top`` vocabulary tokens by cosine similarity."""
    soft = model.method.soft_embeddings()
    if soft is None:
        return []
    tokenizer = model.backbone.tokenizer
    vocab = model.model.get_input_embeddings().weight.detach().float()
    soft = soft.detach().float().to(vocab.device)
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


def compare_prompts(first: str, second: str, png: Path) -> dict[str, Any]:
    """Token-by-token cosine similarity of two artifacts' soft prompts (same backbone), drawn as a
    heat map to ``png``; returns a summary (the diagonal's mean when the lengths match)."""
    a, b = read_soft_prompt(first), read_soft_prompt(second)
    check_same_backbone(b, a.backbone, a.fingerprint, "inspect --compare")
    matrix = token_cosines(a.embeddings, b.embeddings)
    fig, axis = plt.subplots(figsize=(0.35 * matrix.shape[1] + 3, 0.35 * matrix.shape[0] + 2))
    image = axis.imshow(matrix.numpy(), cmap="coolwarm", vmin=-1, vmax=1)
    axis.set_xlabel(f"{second} (soft token)")
    axis.set_ylabel(f"{first} (soft token)")
    axis.set_title("cosine similarity of soft tokens")
    fig.colorbar(image, ax=axis)
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    summary: dict[str, Any] = {"a": first, "b": second, "shape": list(matrix.shape), "png": str(png)}
    summary.update(prompt_similarity(a.embeddings, b.embeddings))
    if matrix.shape[0] == matrix.shape[1]:
        summary["same_position_mean_cosine"] = round(float(matrix.diagonal().mean()), 4)
    return summary
