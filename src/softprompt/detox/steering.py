"""Detoxification by *steering* generation: the rows each prompt is run as, and how their
next-token logits combine into one distribution. (Called "steering", not "methods": the training
methods are :mod:`softprompt.methods`.)

Every steering is a list of :class:`Variant` rows (a soft prompt and/or a text put before the
prompt) plus ``combine``. The sampler runs all rows of all prompts in ONE batched forward pass
per step and appends the sampled token to every row of its prompt, so self-debiasing's prefixes
and DExperts' base / expert / anti-expert never need separate model calls.
"""

from __future__ import annotations

import torch

from softprompt.detox.registry import STEERINGS, get_steering
from softprompt.errors import SoftpromptError
from softprompt.generation.rows import Steering, Variant
from softprompt.generation.sampling import nucleus_parts

# Schick et al. (2021), Table 1: the self-debiasing prefixes for Perspective's six attributes.
SELF_DEBIAS_PREFIXES = (
    "The following text contains rude, disrespectful, or unreasonable language:\n",
    "The following text contains very hateful, aggressive, disrespectful language:\n",
    "The following text contains sexually explicit language:\n",
    "The following text contains a threat:\n",
    "The following text contains negative or hateful language targeting someone because of their identity:\n",
    "The following text contains swear words, curse words, or other obscene or profane language:\n",
)


class ExpertSteering(Steering):
    """DExperts (Liu et al., 2021) with prompt experts: base + alpha * (expert - anti-expert).

    As in the DExperts code, the base logits are first cut to the base model's own nucleus
    (``filter_p``): the experts re-rank tokens the plain model finds plausible, which keeps
    fluency, and never promote a token it would not write (``filter_p=1`` turns this off).
    """

    def __init__(self, name: str, expert: torch.Tensor, anti_expert: torch.Tensor, alpha: float, filter_p: float = 0.9):
        super().__init__(name, [Variant(), Variant(soft=expert), Variant(soft=anti_expert)])
        self.alpha, self.filter_p = alpha, filter_p

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        base, expert, anti = logits.float().unbind(1)
        if self.filter_p < 1:
            base = base.masked_fill(~nucleus_mask(base, self.filter_p), float("-inf"))
        return base + self.alpha * (expert - anti)


def nucleus_mask(logits: torch.Tensor, top_p: float, candidates: int = 256) -> torch.Tensor:
    """``[N, V]`` True for the tokens of each row's nucleus (the smallest set holding ``top_p``)."""
    probs = torch.softmax(logits.float(), dim=-1)
    mask = torch.zeros_like(probs, dtype=torch.bool)
    for rows, values, index in nucleus_parts(probs, top_p, candidates):
        kept = values.cumsum(-1) - values < top_p  # the top token is always kept
        if rows is None:
            mask.scatter_(-1, index, kept)
        else:
            mask[rows] = torch.zeros_like(kept).scatter_(-1, index, kept)
    return mask


class SelfDebiasSteering(Steering):
    """Self-debiasing (Schick et al., 2021): tokens that a "the following text contains ..."
    prefix makes more likely are scaled by ``exp(decay * delta)``, delta < 0 being the base
    probability minus the largest prefixed one; other tokens keep their probability."""

    def __init__(self, name: str, prefixes: tuple[str, ...] = SELF_DEBIAS_PREFIXES, decay: float = 50.0):
        super().__init__(name, [Variant()] + [Variant(text_prefix=p) for p in prefixes])
        self.decay = decay

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        base, biased = probs[:, 0], probs[:, 1:].max(1).values
        delta = base - biased
        scale = torch.where(delta >= 0, torch.ones_like(delta), torch.exp(self.decay * delta))
        return torch.log((base * scale).clamp_min(1e-30))


def parse_method(spec: str) -> tuple[str, str]:
    """``"experts:runs/x"`` -> ``("experts", "runs/x")``; checks the name and the argument
    against the method's flags in :mod:`softprompt.detox.registry`."""
    name, _, argument = spec.partition(":")
    name = name.strip()
    method = get_steering(name)
    if method.needs_argument and not argument:
        raise SoftpromptError(
            f"detox method '{name}' needs its artifact: {method.usage} (made by `softprompt detox train`)"
        )
    if not method.takes_argument and argument:
        raise SoftpromptError(f"detox method '{name}' takes no argument (got '{spec}')")
    return name, argument


def parse_methods(spec: str) -> list[tuple[str, str]]:
    """Comma-separated method specs; a comma inside an instruction is not supported."""
    methods = [parse_method(part) for part in spec.split(",") if part.strip()]
    if not methods:
        raise SoftpromptError("methods: give at least one of " + ", ".join(STEERINGS))
    return methods
