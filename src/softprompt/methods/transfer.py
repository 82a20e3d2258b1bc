"""Soft prompts as reusable objects: read one out of an artifact, start a new prompt from it
(SPoT, Vu et al. 2022: ``prompt.init=from:ARTIFACT``), and rank source prompts for a target.

Only prompts that are token embeddings transfer: the ``prompt_embeddings`` that prompt_tuning,
ptuning (its encoder folded away at save) and progressive_prompts write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.artifact import read_artifact
from softprompt.backbones import Backbone
from softprompt.errors import SoftpromptError

PROMPT_KEY = "prompt_embeddings"
FROM_PREFIX = "from:"


@dataclass
class SoftPrompt:
    """The soft-token embeddings of an artifact and the backbone they belong to."""

    path: str
    embeddings: torch.Tensor  # [tokens, hidden]
    backbone: str
    fingerprint: str
    method: str


def read_soft_prompt(path: str | Path) -> SoftPrompt:
    """The soft prompt stored in an artifact directory.

    Raises:
        SoftpromptError: not an artifact, or its method stores no token embeddings.
    """
    files = read_artifact(path)
    meta = files.meta
    if PROMPT_KEY not in files.state:
        raise SoftpromptError(
            f"artifact {path} (method {meta.get('method')}) holds no soft prompt; transfer and "
            "similarity need one trained with prompt_tuning, ptuning or progressive_prompts"
        )
    recorded = meta["backbone"]
    return SoftPrompt(
        str(path), files.state[PROMPT_KEY].float(), recorded["name"], recorded["fingerprint"], meta["method"]
    )


def check_same_backbone(prompt: SoftPrompt, backbone_name: str, fingerprint: str, what: str) -> None:
    """Refuse a prompt trained on another backbone (its embeddings live in another space)."""
    if prompt.fingerprint != fingerprint:
        raise SoftpromptError(
            f"{what}: {prompt.path} was trained on backbone '{prompt.backbone}' (fingerprint "
            f"{prompt.fingerprint}), not on '{backbone_name}' ({fingerprint}); a soft prompt only "
            "transfers between runs on the same backbone"
        )


def transferred_prompt(source: str, backbone: Backbone, length: int) -> torch.Tensor:
    """The ``[length, hidden]`` start of a prompt initialised ``from:`` a trained one.

    Rule for lengths: a longer source gives its first ``length`` tokens (a prompt's leading
    tokens are those every row reads first); a shorter one is refused, since inventing the
    missing tokens would no longer be a transfer.
    """
    prompt = read_soft_prompt(source)
    check_same_backbone(prompt, backbone.name, backbone.fingerprint, f"prompt.init=from:{source}")
    have = prompt.embeddings.shape[0]
    if have < length:
        raise SoftpromptError(
            f"prompt.init=from:{source}: the source prompt has {have} soft tokens, this run needs "
            f"{length}; set prompt.length={have} (or a {{soft:{have}}} slot), or train a longer source"
        )
    return prompt.embeddings[:length].clone()


def prompt_similarity(target: torch.Tensor, source: torch.Tensor) -> dict[str, float]:
    """SPoT's task-embedding similarities of two prompts: cosine of their mean tokens, and the
    mean over the target's tokens of the best cosine with any source token."""
    mean = torch.nn.functional.cosine_similarity(target.mean(0), source.mean(0), dim=0)
    pairwise = token_cosines(target, source)
    return {"mean_cosine": round(float(mean), 4), "token_max_cosine": round(float(pairwise.max(1).values.mean()), 4)}


def token_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` cosine similarity of every token of ``a`` with every token of ``b``."""
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T


def rank_sources(target: str, sources: list[str]) -> list[dict[str, object]]:
    """Source prompts ordered by similarity to the target's (best first), all on its backbone."""
    goal = read_soft_prompt(target)
    rows = []
    for source in sources:
        prompt = read_soft_prompt(source)
        check_same_backbone(prompt, goal.backbone, goal.fingerprint, "similarity")
        rows.append(
            {
                "source": source,
                "tokens": prompt.embeddings.shape[0],
                **prompt_similarity(goal.embeddings, prompt.embeddings),
            }
        )
    return sorted(rows, key=lambda row: row["mean_cosine"], reverse=True)
