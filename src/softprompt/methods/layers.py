"""Finding the parts of a transformer that methods attach to, across architectures.

Llama-style decoders (SmolLM2, Gemma) and BERT-style encoders (MiniLM) name their modules
differently; methods ask here instead of spelling module names themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import SoftpromptError

# Output projection of the attention sub-layer / of the feed-forward sub-layer, per family.
ATTENTION_OUT = ("self_attn.o_proj", "attention.output.dense", "attn.c_proj", "self_attn.out_proj")
FEED_FORWARD_OUT = ("mlp.down_proj", "output.dense", "mlp.c_proj", "fc2")


def transformer_blocks(backbone: Backbone) -> nn.ModuleList:
    """The stack of transformer blocks (``model.layers`` or ``encoder.layer``)."""
    count = backbone.model.config.num_hidden_layers
    for _, module in backbone.model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise SoftpromptError(f"backbone {backbone.name}: cannot find its {count} transformer blocks")


def _submodule(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Linear:
    for name in names:
        try:
            module = block.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            return module
    raise SoftpromptError(f"cannot find the {what} projection of a {type(block).__name__} (tried {', '.join(names)})")


def sublayer_outputs(block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The attention and feed-forward output projections of one block (where adapters go)."""
    return _submodule(block, ATTENTION_OUT, "attention output"), _submodule(
        block, FEED_FORWARD_OUT, "feed-forward output"
    )


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of the key/value tensors of every attention layer."""

    layers: int
    kv_heads: int
    head_dim: int


def attention_shape(backbone: Backbone) -> AttentionShape:
    """Layers, key/value heads and head size, from the model config."""
    cfg = backbone.model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return AttentionShape(cfg.num_hidden_layers, kv_heads, head_dim)
