"""P-tuning (Liu et al. 2021): soft tokens produced by a small prompt encoder (a bidirectional
LSTM then an MLP, or an MLP alone) over trainable input embeddings.

The encoder's output is added to its input (the last layer zero-initialised), so training starts
exactly where ``prompt_tuning`` with the same ``prompt.init`` starts and the encoder learns a
coupled update of all tokens. At save the encoder is folded into plain embeddings: the artifact
is a ``prompt_tuning`` artifact (peft-loadable when the tokens form a prefix).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.config.method_options import PtuningOptions
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.prompt_tuning import initial_prompt, prompt_tuning_peft_config
from softprompt.methods.registry import register


class PromptEncoder(nn.Module):
    """``[N, H] -> [N, H]``: input + MLP(LSTM(input)), zero at start."""

    def __init__(self, size: int, hidden: int, kind: str):
        super().__init__()
        self.lstm = nn.LSTM(size, hidden // 2, bidirectional=True, batch_first=True) if kind == "lstm" else None
        width = hidden if self.lstm is not None else size
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, size))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        if self.lstm is not None:
            hidden = self.lstm(inputs.unsqueeze(0))[0][0]
        return inputs + self.mlp(hidden)


@register(
    "ptuning",
    "soft tokens from an LSTM/MLP prompt encoder (Liu et al. 2021), folded at save",
    uses_soft_tokens=True,
    options=PtuningOptions,
    default_lr=1e-2,
    list_position=30,
)
class Ptuning(Method):
    """Soft tokens = encoder(trainable embeddings)."""

    def __init__(self, context: MethodContext):
        super().__init__()
        options = context.options or PtuningOptions()
        self.num_soft_tokens = context.num_soft_tokens
        self.prompt_inputs = nn.Parameter(initial_prompt(context, context.num_soft_tokens, context.prompt.init))
        self.encoder: PromptEncoder | None = PromptEncoder(
            context.backbone.hidden_size, options.hidden, options.encoder
        )

    def soft_embeddings(self) -> torch.Tensor:
        if self.encoder is None:  # folded
            return self.prompt_inputs
        return self.encoder(self.prompt_inputs)

    def export_state(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.soft_embeddings().detach().clone()}

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"prompt_embeddings"}:
            raise RuntimeError(f"expected prompt_embeddings, got {sorted(state)[:3]}")
        self.encoder = None
        with torch.no_grad():
            self.prompt_inputs.copy_(state["prompt_embeddings"])

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        # The folded artifact is prompt tuning's.
        return prompt_tuning_peft_config(self.num_soft_tokens, backbone, prefix_layout)
