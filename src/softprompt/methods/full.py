"""Full fine-tuning: the backbone's own weights train (``full.layers=top:K``: only the top K
transformer blocks, the rest frozen). The artifact holds every trained weight: a model copy."""

from __future__ import annotations

from softprompt.config.method_options import FullOptions
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.layers import transformer_blocks
from softprompt.methods.registry import register


@register(
    "full",
    "all weights train (full.layers=top:K: only the top K blocks)",
    options=FullOptions,
    default_lr=3e-5,
    changes_layers=True,
    list_position=90,
)
class Full(Method):
    """The backbone's parameters, trained in place."""

    def __init__(self, context: MethodContext):
        super().__init__()
        options = context.options or FullOptions()
        backbone = context.backbone
        if backbone.quantized:
            raise SoftpromptError(
                f"method={self.name} trains the backbone's own weights, which a quantized backbone "
                "holds in 4 or 8 bits; use quantize=none, or lora / prompt_tuning on the quantized one"
            )
        backbone.claim(self.name)
        top = options.top()
        if top is None:
            named = list(backbone.model.named_parameters())
        else:
            blocks = transformer_blocks(backbone)
            if top > len(blocks):
                raise SoftpromptError(f"full.layers=top:{top}: {backbone.name} has only {len(blocks)} blocks")
            chosen = {id(p) for block in list(blocks)[-top:] for p in block.parameters()}
            named = [(n, p) for n, p in backbone.model.named_parameters() if id(p) in chosen]
        for name, param in named:
            self.add_resident(name, param)
