"""Progressive prompts (Razdaibiedina et al., ICLR 2023): each new task trains a new soft prompt
placed after the frozen prompts of the tasks learned before it.

The frozen prompts are a buffer, never a parameter, so nothing an earlier task reads can change;
with the prompts in front of a causal LM, an earlier task's input (its own prompts + text) is
the same after every later stage, and so are its outputs. The artifact stores the whole stack
as ``prompt_embeddings`` (prompt_tuning's layout), so it loads, transfers and inspects like any
soft prompt.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.config.method_options import ProgressiveOptions
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.prompt_tuning import initial_prompt, prompt_tuning_peft_config
from softprompt.methods.registry import register
from softprompt.methods.transfer import PROMPT_KEY, check_same_backbone, read_soft_prompt


@register(
    "progressive_prompts",
    "a new soft prompt after the frozen prompts of earlier tasks (Razdaibiedina et al. 2023)",
    uses_soft_tokens=True,
    options=ProgressiveOptions,
    default_lr=1e-2,
    sequential=True,
    list_position=40,
)
class ProgressivePrompts(Method):
    """Frozen earlier prompts + one trainable prompt, filling the template's soft slots in order."""

    def __init__(self, context: MethodContext):
        super().__init__()
        self.num_soft_tokens = context.num_soft_tokens
        options = context.options or ProgressiveOptions()
        hidden = context.backbone.hidden_size
        frozen = torch.zeros(0, hidden)
        # A saved stack is loaded whole by load_export: the earlier artifact is needed only to train.
        if options.previous and not context.for_inference:
            prompt = read_soft_prompt(options.previous)
            check_same_backbone(
                prompt, context.backbone.name, context.backbone.fingerprint, "progressive_prompts.previous"
            )
            frozen = prompt.embeddings
        if frozen.shape[0] >= self.num_soft_tokens:
            raise SoftpromptError(
                f"progressive_prompts.previous holds {frozen.shape[0]} soft tokens; the template needs more "
                f"(it has {self.num_soft_tokens}): give the new task's prompt room, e.g. "
                f"prompt.length={frozen.shape[0] + 10}"
            )
        self.register_buffer("frozen_prompts", frozen.clone())
        self.new_prompt = nn.Parameter(
            initial_prompt(context, self.num_soft_tokens - frozen.shape[0], context.prompt.init)
        )

    def soft_embeddings(self) -> torch.Tensor:
        return torch.cat([self.frozen_prompts.to(self.new_prompt), self.new_prompt])

    def export_state(self) -> dict[str, torch.Tensor]:
        return {PROMPT_KEY: self.soft_embeddings().detach().clone()}

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {PROMPT_KEY}:
            raise RuntimeError(f"expected {PROMPT_KEY}, got {sorted(state)[:3]}")
        stack = state[PROMPT_KEY]
        if stack.shape[0] != self.num_soft_tokens:
            raise RuntimeError(f"{PROMPT_KEY} has {stack.shape[0]} tokens, the template {self.num_soft_tokens}")
        count = self.frozen_prompts.shape[0]
        with torch.no_grad():
            self.frozen_prompts.copy_(stack[:count])
            self.new_prompt.copy_(stack[count:])

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict | None:
        return prompt_tuning_peft_config(self.num_soft_tokens, backbone, prefix_layout)
