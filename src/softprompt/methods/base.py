"""What every method provides, so the training loop, saving and counting are written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone


@dataclass
class MethodContext:
    """What a method may look at when it attaches to a backbone."""

    backbone: Backbone
    num_soft_tokens: int  # soft slots in the template (0 when it has none)
    label_words: list[str]  # verbalizer words, for label-based initialisation
    options: Any  # the method's config section (e.g. PromptConfig)
    seed: int


class Method(nn.Module):
    """Trainable parameters attached to a frozen backbone.

    Subclasses hold their parameters as ordinary ``nn.Parameter`` attributes; ``state_dict()`` of
    this module is exactly what an artifact stores. A method that feeds soft tokens to the
    template's ``{soft}`` slots overrides ``soft_embeddings``.
    """

    name: str = "base"
    num_soft_tokens: int = 0
    modifies_backbone: bool = False  # True when the method changes the backbone's layers (LoRA, adapters...)

    def soft_embeddings(self) -> torch.Tensor | None:
        """The ``[num_soft_tokens, hidden]`` soft-token embeddings, or None."""
        return None

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squared trainable parameters (the optional ``train.l2`` term)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return torch.zeros(())
        return sum(p.pow(2).sum() for p in params)

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        """A peft ``adapter_config.json`` when the saved state loads in peft, else None."""
        return None
