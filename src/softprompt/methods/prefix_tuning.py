"""Prefix tuning (Li & Liang 2021; the "deep prompts" of P-tuning v2): trainable key/value
prefixes in every attention layer, the backbone frozen.

Every row attends to ``prompt.length`` extra positions in every layer. The prefixes start from
the keys and values the backbone itself computes for the ``prompt.init`` tokens (a stable start,
as Li & Liang recommend over random init). With ``prefix_tuning.reparam=true`` the trained
quantity is a small MLP over per-position embeddings whose output is added to that start (its
last layer zero-initialised); the MLP is folded away at save, so artifacts hold only the
prefixes, in peft's ``PREFIX_TUNING`` layout (``prompt_embeddings``: per position, every layer's
key then value, ``[length, layers x 2 x kv_heads x head_dim]``), so ``PeftModel.from_pretrained``
opens them. Artifacts written before hold ``prefix_keys``/``prefix_values`` and still load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from softprompt.backbones import Backbone
from softprompt.config.method_options import PrefixTuningOptions
from softprompt.core import forward as core
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.layers import AttentionShape, attention_shape
from softprompt.methods.prompt_tuning import initial_token_ids
from softprompt.methods.registry import register


def initial_prefix(context: MethodContext, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[layers, kv_heads, length, head_dim]`` the backbone computes for the
    ``prompt.init`` tokens."""
    backbone = context.backbone
    ids = initial_token_ids(context, length, context.prompt.init).unsqueeze(0).to(backbone.device)
    cache = DynamicCache(config=backbone.model.config)
    with torch.no_grad():
        core.hidden_states(backbone, input_ids=ids, past_key_values=cache, use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return keys.float().clone(), values.float().clone()


class PrefixMLP(nn.Module):
    """``embeddings -> tanh MLP -> (key, value) deltas`` for every layer (zero at start)."""

    def __init__(self, start: torch.Tensor, hidden: int, shape: AttentionShape):
        super().__init__()
        self.shape = shape
        self.embeddings = nn.Parameter(start)
        out = 2 * shape.layers * shape.kv_heads * shape.head_dim
        self.mlp = nn.Sequential(nn.Linear(start.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, out))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shape
        length = self.embeddings.shape[0]
        delta = self.mlp(self.embeddings).view(length, 2, s.layers, s.kv_heads, s.head_dim)
        delta = delta.permute(1, 2, 3, 0, 4)  # [2, layers, kv_heads, length, head_dim]
        return delta[0], delta[1]


@register(
    "prefix_tuning",
    "trainable key/value prefixes in every layer (Li & Liang 2021, P-tuning v2)",
    options=PrefixTuningOptions,
    default_lr=5e-3,
    list_position=20,
)
class PrefixTuning(Method):
    """Per-layer key/value prefixes of ``prompt.length`` positions."""

    def __init__(self, context: MethodContext):
        super().__init__()
        options = context.options or PrefixTuningOptions()
        length = context.prompt.length
        keys, values = initial_prefix(context, length)
        self.prefix_keys = nn.Parameter(keys)
        self.prefix_values = nn.Parameter(values)
        self.reparam: PrefixMLP | None = None
        self._config = context.backbone.model.config
        if options.reparam:
            self.prefix_keys.requires_grad_(False)  # the start; the MLP learns the change
            self.prefix_values.requires_grad_(False)
            embed = context.backbone.model.get_input_embeddings()
            with torch.no_grad():
                start = embed(initial_token_ids(context, length, context.prompt.init)).clone()
            self.reparam = PrefixMLP(start, options.hidden, attention_shape(context.backbone))

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current keys and values ``[layers, kv_heads, length, head_dim]``."""
        if self.reparam is None:
            return self.prefix_keys, self.prefix_values
        delta_keys, delta_values = self.reparam()
        return self.prefix_keys + delta_keys, self.prefix_values + delta_values

    def prefix_length(self) -> int:
        return self.prefix_keys.shape[2]

    def prefix_cache(self, batch_size: int) -> DynamicCache:
        keys, values = self.prefixes()
        cache = DynamicCache(config=self._config)
        for layer in range(keys.shape[0]):
            shape = (batch_size, *keys.shape[1:])
            cache.update(keys[layer].unsqueeze(0).expand(shape), values[layer].unsqueeze(0).expand(shape), layer)
        return cache

    def export_state(self) -> dict[str, torch.Tensor]:
        keys, values = self.prefixes()
        return {PEFT_KEY: to_peft_layout(keys.detach(), values.detach())}

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        self.reparam = None  # folded: the artifact holds the prefixes themselves
        if PEFT_KEY in state:
            keys, values = from_peft_layout(state[PEFT_KEY], self.prefix_keys.shape)
            state = {"prefix_keys": keys, "prefix_values": values}
        self.load_state_dict(state)

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        """peft's PREFIX_TUNING config (the prefixes go before everything, in peft as here), for a
        backbone whose own head answers (not a classification head peft would not have)."""
        if not backbone.predicts_tokens:
            return None
        shape, cfg = attention_shape(backbone), backbone.model.config
        return {
            "peft_type": "PREFIX_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": self.prefix_length(),
            # as peft itself writes them for grouped-query attention: the key/value heads' sizes
            "token_dim": shape.kv_heads * shape.head_dim,
            "num_attention_heads": shape.kv_heads,
            "num_layers": cfg.num_hidden_layers,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": shape.kv_heads * shape.head_dim,
            "prefix_projection": False,
            "base_model_name_or_path": backbone.base_model_id,
            "inference_mode": True,
        }


PEFT_KEY = "prompt_embeddings"  # the one tensor of peft's prefix-tuning state


def to_peft_layout(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Keys and values ``[layers, kv_heads, length, head_dim]`` as peft's prefix embedding
    ``[length, layers x 2 x kv_heads x head_dim]`` (its ``get_prompt`` views each row as
    ``[layers x 2, heads, head_dim]``: layer l's key at 2l, its value at 2l + 1)."""
    both = torch.stack([keys, values], dim=1)  # [layers, 2, kv_heads, length, head_dim]
    return both.permute(3, 0, 1, 2, 4).reshape(keys.shape[2], -1).contiguous().clone()


def from_peft_layout(embedding: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`to_peft_layout`, for prefixes of ``shape`` ``[layers, kv_heads, length, head_dim]``."""
    layers, kv_heads, length, head_dim = shape
    both = embedding.view(length, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)
    return both[:, 0].contiguous(), both[:, 1].contiguous()
