"""IA3 (Liu et al. 2022) via peft: learned vectors rescaling keys, values and the feed-forward
activations, initialised to ones (the backbone itself at start)."""

from __future__ import annotations

from peft import IA3Config

from softprompt.config.method_options import Ia3Options
from softprompt.methods.base import MethodContext
from softprompt.methods.peft_tuners import PeftTuner, target_list
from softprompt.methods.registry import register


@register(
    "ia3",
    "learned rescaling vectors of keys, values and MLP activations (Liu et al. 2022), via peft",
    options=Ia3Options,
    changes_layers=True,
    per_row=True,
    default_lr=3e-3,
    identity_at_start=True,
    list_position=60,
)
class Ia3(PeftTuner):
    """IA3 vectors injected by peft."""

    marker = "ia3_"

    def __init__(self, context: MethodContext):
        options = context.options or Ia3Options()
        config = IA3Config(
            target_modules=target_list(options.target_modules),
            feedforward_modules=target_list(options.feedforward_modules),
        )
        super().__init__(context, config)
