"""Methods whose layers come from ``peft`` (LoRA, IA3): injected into the backbone in place.

peft's own naming is kept for the saved weights and ``adapter_config.json`` is peft's, so a
causal-LM artifact of these methods also loads with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

from typing import Any

from peft import PeftConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from softprompt.backbones import Backbone
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method, MethodContext


def target_list(value: str | None) -> list[str] | str | None:
    """``"q_proj,v_proj"`` -> list; ``"all-linear"`` as is; None -> peft's default for the architecture."""
    if value is None or value == "all-linear":
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


class PeftTuner(Method):
    """A method whose parameters peft injects into the backbone's layers."""

    marker = ""  # substring of the injected parameters' names ("lora_", "ia3_")

    def __init__(self, context: MethodContext, config: PeftConfig):
        super().__init__()
        backbone = context.backbone
        backbone.claim(self.name)
        self._peft = config
        try:
            inject_adapter_in_model(config, backbone.model)
        except ValueError as exc:  # e.g. target modules not found
            raise SoftpromptError(f"{self.name}: {str(exc).splitlines()[0]}") from None
        for name, param in backbone.model.named_parameters():
            if self.marker in name:
                self.add_resident(name, param)
        # A plain list: registering the layers as submodules would put the backbone in our state.
        self._layers = [m for m in backbone.model.modules() if isinstance(m, BaseTunerLayer)]
        if not self._resident:
            raise SoftpromptError(f"{self.name}: no layer of {backbone.name} matched the target modules")

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        if not backbone.predicts_tokens:
            return None  # our encoder head is not part of a peft model
        config = self._peft.to_dict()
        config.update(task_type="CAUSAL_LM", base_model_name_or_path=backbone.base_model_id, inference_mode=True)
        return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
