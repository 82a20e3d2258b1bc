"""LoRA (Hu et al. 2021) via peft: low-rank updates ``B @ A`` on chosen linear layers, ``B``
zero-initialised so training starts from the backbone itself."""

from __future__ import annotations

from peft import LoraConfig

from softprompt.config.method_options import LoraOptions, top_blocks
from softprompt.errors import SoftpromptError
from softprompt.methods.base import MethodContext
from softprompt.methods.layers import transformer_blocks
from softprompt.methods.peft_tuners import PeftTuner, target_list
from softprompt.methods.registry import register


@register(
    "lora",
    "low-rank weight updates on attention/MLP layers (Hu et al. 2021), via peft",
    options=LoraOptions,
    changes_layers=True,
    per_row=True,
    identity_at_start=True,
    list_position=50,
)
class Lora(PeftTuner):
    """LoRA matrices injected by peft."""

    marker = "lora_"

    def __init__(self, context: MethodContext):
        options = context.options or LoraOptions()
        top = top_blocks(options.layers, "lora.layers")
        chosen = {}
        if top is not None:
            count = len(transformer_blocks(context.backbone))
            if top > count:
                raise SoftpromptError(f"lora.layers=top:{top}: {context.backbone.name} has only {count} blocks")
            if options.target_modules == "all-linear":
                raise SoftpromptError("lora.layers=top:K needs lora.target_modules as names (q_proj,v_proj,...)")
            chosen = {"layers_to_transform": list(range(count - top, count))}
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=target_list(options.target_modules),
            **chosen,
        )
        super().__init__(context, config)
        self._merge = options.merge

    def prepare_for_inference(self) -> None:
        if self._merge:
            for layer in self._layers:
                layer.merge()
