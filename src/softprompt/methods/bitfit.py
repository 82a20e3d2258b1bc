"""BitFit (Ben Zaken et al. 2021): only bias terms train.

Backbones with biases (BERT, MiniLM) train all of theirs. Bias-free backbones (Llama, SmolLM2,
Gemma) get zero-initialised biases added to the linear layers of their blocks (applied by
forward hooks; the output starts unchanged), and the method says so in its notes.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.layers import transformer_blocks
from softprompt.methods.registry import register


@register(
    "bitfit",
    "only bias terms train (Ben Zaken et al. 2021); adds zero biases to bias-free models",
    default_lr=3e-3,
    changes_layers=True,
    identity_at_start=True,
    list_position=80,
)
class BitFit(Method):
    """Existing biases as resident parameters, or added ones as own parameters."""

    def __init__(self, context: MethodContext):
        super().__init__()
        backbone = context.backbone
        if backbone.quantized:
            raise SoftpromptError(
                f"method={self.name} trains the backbone's own weights, which a quantized backbone "
                "holds in 4 or 8 bits; use quantize=none, or lora / prompt_tuning on the quantized one"
            )
        backbone.claim(self.name)
        blocks = transformer_blocks(backbone)
        biases = [(n, p) for n, p in backbone.model.named_parameters() if n.endswith(".bias")]
        self.added_biases = nn.ParameterList()
        if biases:
            for name, param in biases:
                self.add_resident(name, param)
            return
        linears = [m for m in blocks.modules() if isinstance(m, nn.Linear)]
        for linear in linears:
            bias = nn.Parameter(torch.zeros(linear.out_features))
            self.added_biases.append(bias)
            linear.register_forward_hook(lambda _module, _inputs, output, bias=bias: output + bias)
        count = sum(b.numel() for b in self.added_biases)
        self.notes.append(
            f"{backbone.name} has no bias terms: added zero-initialised biases to its {len(linears)} "
            f"linear layers ({count:,} parameters)"
        )
