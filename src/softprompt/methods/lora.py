"""LoRA (Hu et al. 2021) via peft: low-rank updates ``B @ A`` on chosen linear layers, ``B``
zero-initialised so training starts from the backbone itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig

from softprompt.errors import SoftpromptError
from softprompt.methods.base import MethodContext
from softprompt.methods.layers import top_blocks, transformer_blocks
from softprompt.methods.peft_tuners import PeftTuner, target_list
from softprompt.methods.registry import register


@dataclass
class LoraOptions:
    """``lora.*``"""

    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: float = field(default=16, metadata={"help": "scaling: the update is multiplied by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (training only)"})
    target_modules: str | None = field(
        default=None, metadata={"help": "comma-separated module names, 'all-linear', or peft's default for the model"}
    )
    layers: str = field(
        default="all", metadata={"help": "all | top:K (only the top K blocks: backpropagation stops below them)"}
    )
    merge: bool = field(default=False, metadata={"help": "merge the update into the weights when loaded for eval"})

    def __post_init__(self) -> None:
        top_blocks(self.layers, "lora.layers")


@register(
    "lora",
    "low-rank weight updates on attention/MLP layers (Hu et al. 2021), via peft",
    options=LoraOptions,
    changes_layers=True,
    identity_at_start=True,
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
