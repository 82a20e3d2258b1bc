"""``softprompt generate``: sample continuations of prompts, optionally under a detox method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.backbones import load_backbone
from softprompt.config import ComputeSettings, option, require
from softprompt.detox.loading import build_steering
from softprompt.detox.steering import DEFAULT_INSTRUCTION, parse_method
from softprompt.errors import SoftpromptError
from softprompt.generation.sampling import sample_continuations


@dataclass
class GenerateConfig(ComputeSettings):
    """Settings of ``softprompt generate``."""

    backbone: str = option("causal backbone", "smollm2-135m")
    detox: str = option("none | instruction | self_debias | soft_prompt:<dir> | experts:<dir>", "none")
    samples: int = option("continuations per prompt", 1)
    max_new_tokens: int = option("tokens per continuation", 30)
    top_p: float = option("nucleus sampling mass", 0.9)
    temperature: float = option("sampling temperature", 1.0)
    instruction: str = option("the instruction method's prefix", DEFAULT_INSTRUCTION)
    alpha: float = option("experts: base + alpha * (expert - anti-expert)", 2.0)
    decay: float = option("self_debias: decay constant lambda", 50.0)
    filter_p: float = option("experts: re-rank only the plain model's nucleus of this mass (1 = all tokens)", 0.9)
    seed: int = option("sampling seed", 0)

    def __post_init__(self) -> None:
        require(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.temperature > 0, "temperature", "must be > 0")


def generate(texts: list[str], config: GenerateConfig) -> list[list[str]]:
    """``config.samples`` continuations of each text."""
    if not texts or any(not t.strip() for t in texts):
        raise SoftpromptError("give non-empty prompts as arguments or one per line on stdin")
    name, argument = parse_method(config.detox)
    config.use_threads()
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    backbone.require_token_prediction("detox generate")
    steering = build_steering(name, argument, backbone, config.instruction, config.alpha, config.decay, config.filter_p)
    generator = torch.Generator().manual_seed(config.seed)
    sampled = sample_continuations(
        backbone, steering, texts, config.samples, config.max_new_tokens, config.top_p, generator, config.temperature
    )
    return [[backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows] for rows in sampled.tokens]
