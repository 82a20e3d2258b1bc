"""What every method provides, so the training loop, saving and counting are written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from softprompt.backbones import Backbone

# Artifact keys of parameters that live inside the backbone (LoRA matrices, trained biases...):
# peft's naming, so that LoRA / IA3 artifacts load in ``peft.PeftModel.from_pretrained``.
RESIDENT_PREFIX = "base_model.model."


@dataclass
class MethodContext:
    """What a method may look at when it attaches to a backbone."""

    backbone: Backbone
    num_soft_tokens: int  # soft slots in the template (0 when it has none)
    label_words: list[str]  # verbalizer words, for label-based initialisation
    prompt: Any  # the run's PromptConfig (length, init): shared by the prompt-based methods
    options: Any  # the method's own config section (a dataclass), or None
    seed: int
    for_inference: bool = False  # building to load a saved artifact (its state replaces the init)


class Method(nn.Module):
    """Trainable parameters attached to a frozen backbone.

    A method owns two kinds of parameters: its own (``nn.Parameter`` attributes and submodules,
    e.g. soft prompts, adapter blocks) and *resident* ones that live inside the backbone (LoRA
    matrices injected by peft, trained biases, the blocks of ``full``), registered with
    :meth:`add_resident`. The training loop sees only :meth:`trainable_parameters`; checkpoints
    hold :meth:`training_state`; artifacts hold :meth:`export_state`, which may be smaller (an
    MLP reparameterisation folded away).
    """

    name: str = "base"
    num_soft_tokens: int = 0
    # The registry's flag (set by ``@register``): the method changes the backbone's own layers, so
    # every token's hidden state depends on it (as with prefix tuning's prefixes, which
    # ``prefix_length()`` tells): a text-only forward pass cannot be cached and shared across prompts.
    changes_layers: bool = False

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.notes: list[str] = []  # said to the user when the method is built
        # Not registered as submodules: the backbone owns them and must not appear twice.
        self._resident: dict[str, nn.Parameter] = {}

    # ---- parameters ------------------------------------------------------------------------
    def add_resident(self, name: str, param: nn.Parameter) -> None:
        """Train a parameter that lives in the backbone (``name`` as in ``model.named_parameters()``)."""
        param.requires_grad_(True)
        self._resident[name] = param

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything the optimizer updates."""
        own = [p for p in self.parameters() if p.requires_grad]
        return own + list(self._resident.values())

    def num_trainable(self) -> int:
        """Parameters trained (a reparameterisation included; :meth:`export_state` may hold fewer)."""
        return sum(p.numel() for p in self.trainable_parameters())

    # ---- state -------------------------------------------------------------------------------
    def training_state(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume training."""
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state.update({RESIDENT_PREFIX + _peft_name(k): p.detach().clone() for k, p in self._resident.items()})
        return state

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`training_state` (strict: missing or extra keys raise RuntimeError)."""
        resident = {RESIDENT_PREFIX + _peft_name(k): p for k, p in self._resident.items()}
        own = {k: v for k, v in state.items() if k not in resident}
        missing = sorted(set(resident) - set(state))
        if missing:
            raise RuntimeError(f"missing keys {missing[:3]}")
        self.load_state_dict(own)
        with torch.no_grad():
            for key, param in resident.items():
                param.copy_(state[key])

    def export_state(self) -> dict[str, torch.Tensor]:
        """What an artifact stores (by default the training state)."""
        return self.training_state()

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        """Load an artifact's state for inference."""
        self.load_training_state(state)

    # ---- what the classifier asks of a method ------------------------------------------------
    def soft_embeddings(self) -> torch.Tensor | None:
        """The ``[num_soft_tokens, hidden]`` soft-token embeddings, or None."""
        return None

    def prefix_cache(self, batch_size: int) -> DynamicCache | None:
        """Key/value prefixes for every attention layer (prefix tuning), or None."""
        return None

    def prefix_length(self) -> int:
        """Positions :meth:`prefix_cache` adds in front of every row."""
        return 0

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squared trainable parameters (the optional ``train.l2`` term)."""
        params = self.trainable_parameters()
        if not params:
            return torch.zeros(())
        return sum(p.pow(2).sum() for p in params)

    def peft_config(self, backbone: Backbone, prefix_layout: bool) -> dict[str, Any] | None:
        """A peft ``adapter_config.json`` when the saved state loads in peft, else None."""
        return None

    def prepare_for_inference(self) -> None:
        """Called once after an artifact is loaded for eval/predict (e.g. merge LoRA weights)."""


def _peft_name(name: str) -> str:
    """peft saves ``...q_proj.lora_A.default.weight`` as ``...q_proj.lora_A.weight``."""
    return name.replace(".default.", ".").removesuffix(".default")
