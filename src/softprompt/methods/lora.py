"""LoRA (Hu et al. 2021) via peft: low-rank updates ``B @ A`` on chosen linear layers, ``B``
zero-initialised so training starts from the backbone itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig

from softprompt.methods import register
from softprompt.methods.base import MethodContext
from softprompt.methods.peft_tuners import PeftTuner, target_list


@dataclass
class LoraOptions:
    """``lora.*``"""

    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: float = field(default=16, metadata={"help": "scaling: the update is multiplied by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (training only)"})
    target_modules: str | None = field(
        default=None, metadata={"help": "comma-separated module names, 'all-linear', or peft's default for the model"}
    )
    merge: bool = field(default=False, metadata={"help": "merge the update into the weights when loaded for eval"})


@register(
    "lora",
    "low-rank weight updates on attention/MLP layers (Hu et al. 2021), via peft",
    options=LoraOptions,
    identity_at_start=True,
)
class Lora(PeftTuner):
    """LoRA matrices injected by peft."""

    name = "lora"
    marker = "lora_"

    def __init__(self, context: MethodContext):
        options = context.options or LoraOptions()
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=target_list(options.target_modules),
        )
        super().__init__(context, config)
        self._merge = options.merge

    def prepare_for_inference(self) -> None:
        if self._merge:
            for layer in self._layers:
                layer.merge()
