"""Soft prompt tuning (Lester et al., 2021): N trainable token embeddings, the backbone frozen.

The tokens fill the template's ``{soft:N}`` slots wherever they stand. When they form a prefix
the saved state is peft's PROMPT_TUNING layout (``prompt_embeddings``), loadable by
``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.registry import register
from softprompt.methods.transfer import FROM_PREFIX, transferred_prompt

logger = logging.getLogger(__name__)

# Lester et al. sample init tokens among the 5,000 most frequent; BPE ids roughly follow frequency.
COMMON_VOCAB = 5000


def _token_ids(backbone: Backbone, text: str) -> list[int]:
    return backbone.tokenizer(text, add_special_tokens=False)["input_ids"]


def _word_ids(backbone: Backbone, words: list[str]) -> list[int]:
    text = " ".join(words).strip()
    return _token_ids(backbone, " " + text) if text else []


def initial_token_ids(context: MethodContext, length: int, init: str) -> torch.Tensor:
    """``length`` token ids to start a prompt from (``vocab``, ``labels`` or ``text:``; for
    ``random``, common vocabulary tokens). ``labels`` with no label words (a generation template
    with no words of its own, such as ``{soft:4}{text}``) starts from the vocabulary, as ``vocab``."""
    if init.startswith(FROM_PREFIX):
        raise SoftpromptError(
            "prompt.init=from:<artifact> starts token-embedding prompts (prompt_tuning, ptuning, "
            "progressive_prompts); this method needs init tokens (vocab, labels or text:<words>)"
        )
    backbone = context.backbone
    vocab_size = backbone.model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(context.seed)
    special = set(backbone.tokenizer.all_special_ids)
    vocab = [i for i in range(min(COMMON_VOCAB, vocab_size)) if i not in special]
    device = backbone.device  # ids index the embedding, wherever it lives
    if init == "labels" and not _word_ids(backbone, context.label_words):
        if not context.for_inference:
            logger.info("prompt.init=labels: no label words to start from, so the prompt starts as prompt.init=vocab")
        init = "vocab"
    if init in ("vocab", "random"):
        return torch.tensor(vocab)[torch.randint(len(vocab), (length,), generator=generator)].to(device)
    word_ids = _word_ids(backbone, context.label_words if init == "labels" else [init.removeprefix("text:")])
    if not word_ids:
        raise SoftpromptError(
            f"prompt.init={init}: no tokens to initialise from; give words after text: or set prompt.init=vocab"
        )
    # Word tokens first (repeated if the prompt is longer), as in Lester et al.'s class-label init.
    return torch.tensor([word_ids[i % len(word_ids)] for i in range(length)], device=device)


def initial_prompt(context: MethodContext, length: int, init: str) -> torch.Tensor:
    """The ``[length, hidden]`` starting embeddings for ``prompt.init``."""
    embed = context.backbone.model.get_input_embeddings()
    if context.for_inference:  # the artifact's state replaces it (and a from: source may be gone)
        return torch.zeros(length, embed.weight.shape[1])
    if init.startswith(FROM_PREFIX):
        return transferred_prompt(init.removeprefix(FROM_PREFIX), context.backbone, length)
    if init == "random":
        generator = torch.Generator().manual_seed(context.seed)
        weight = embed.weight[: min(COMMON_VOCAB, embed.weight.shape[0])]
        return torch.randn(length, weight.shape[1], generator=generator) * weight.float().std().item()
    with torch.no_grad():
        return embed(initial_token_ids(context, length, init)).detach().float().clone()


@register(
    "prompt_tuning",
    "N soft tokens in the template's {soft} slots (Lester et al. 2021)",
    uses_soft_tokens=True,
    default_lr=1e-2,
    list_position=10,
)
class PromptTuning(Method):
    """Trainable soft-token embeddings."""

    def __init__(self, context: MethodContext):
        super().__init__()
        self.num_soft_tokens = context.num_soft_tokens
        start = initial_prompt(context, context.num_soft_tokens, context.prompt.init)
        self.prompt_embeddings = nn.Parameter(start)

    def soft_embeddings(self) -> torch.Tensor:
        return self.prompt_embeddings

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        return prompt_tuning_peft_config(self.num_soft_tokens, backbone, prefix_layout)


def prompt_tuning_peft_config(num_soft_tokens: int, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
    """peft's PROMPT_TUNING config for ``prompt_embeddings`` that form the input's prefix."""
    if not prefix_layout or not backbone.predicts_tokens:
        return None
    cfg = backbone.model.config
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": num_soft_tokens,
        "token_dim": backbone.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": backbone.base_model_id,
        "inference_mode": True,
    }
