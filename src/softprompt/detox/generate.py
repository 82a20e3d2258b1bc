"""``softprompt generate``: sample continuations of prompts, optionally under a detox method."""

from __future__ import annotations

from softprompt.backbones import load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.detox.config import GenerateConfig
from softprompt.detox.loading import build_steering
from softprompt.detox.steering import parse_method
from softprompt.errors import SoftpromptError
from softprompt.generation.running import prompt_seeds, sample_continuations


def generate(texts: list[str], config: GenerateConfig) -> list[list[str]]:
    """``config.samples`` continuations of each text."""
    if not texts or any(not t.strip() for t in texts):
        raise SoftpromptError("give non-empty prompts as arguments or one per line on stdin")
    name, argument = parse_method(config.detox)
    apply_threads(config.threads)
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    backbone.require_token_prediction("detox generate")
    steering = build_steering(name, argument, backbone, config.instruction, config.alpha, config.decay, config.filter_p)
    seeds = prompt_seeds(config.seed, range(len(texts)))
    sampled = sample_continuations(
        backbone, steering, texts, config.samples, config.max_new_tokens, config.top_p, seeds, config.temperature
    )
    return [[backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows] for rows in sampled.tokens]
