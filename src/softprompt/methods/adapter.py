"""Bottleneck adapters (Houlsby et al. 2019) after the attention and feed-forward sub-layers of
every block: ``h + up(act(down(h)))`` on the sub-layer's output, before its residual connection.
``up`` is zero-initialised, so training starts from the backbone itself. peft has no such method.

The adapters are attached with forward hooks on the sub-layers' output projections: the backbone's
modules are not replaced, and the adapters are ordinary submodules of this method.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.config.method_options import AdapterOptions
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.layers import sublayer_outputs, transformer_blocks
from softprompt.methods.registry import register


class Bottleneck(nn.Module):
    """``x -> x + up(gelu(down(x)))``, the identity at start."""

    def __init__(self, size: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.up = nn.Linear(bottleneck, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.gelu(self.down(hidden)))


@register(
    "adapter",
    "bottleneck adapters after attention and MLP blocks (Houlsby et al. 2019)",
    options=AdapterOptions,
    changes_layers=True,
    identity_at_start=True,
    list_position=70,
)
class Adapter(Method):
    """Two adapters per transformer block."""

    def __init__(self, context: MethodContext):
        super().__init__()
        options = context.options or AdapterOptions()
        backbone = context.backbone
        backbone.claim(self.name)
        targets = [linear for block in transformer_blocks(backbone) for linear in sublayer_outputs(block)]
        self.adapters = nn.ModuleList(Bottleneck(t.out_features, options.bottleneck) for t in targets)
        for target, adapter in zip(targets, self.adapters, strict=True):
            target.register_forward_hook(lambda _module, _inputs, output, adapter=adapter: adapter(output))
