"""Loading a frozen backbone onto its device and in its dtype. Its files come from
:mod:`softprompt.backbone_sources` (a bundled name, a local path or a Hub id)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from softprompt.backbone_sources import Kind, resolve
from softprompt.errors import SoftpromptError
from softprompt.placement import Placement, resolve_placement, run_in

logger = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A loaded, frozen backbone."""

    name: str
    kind: Kind
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str  # identifies the weights; artifacts record it and refuse other backbones
    placement: Placement = field(default_factory=lambda: Placement(torch.device("cpu"), torch.float32))
    num_parameters: int = 0  # of the pretrained model, counted at load (before any method adds some)
    modified_by: str | None = None  # the method that changed its layers (LoRA, adapters...), if any

    def __post_init__(self) -> None:
        if not self.num_parameters:
            self.num_parameters = sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def claim(self, method: str) -> None:
        """Record that ``method`` changes this backbone's layers; one such method per loaded backbone."""
        if self.modified_by is not None:
            raise SoftpromptError(
                f"backbone {self.name} already carries method {self.modified_by}; load a fresh backbone for {method}"
            )
        self.modified_by = method


def fingerprint(model: PreTrainedModel) -> str:
    """Hash of the architecture and the input-embedding weights (cheap, and differs between models)."""
    cfg = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(cfg, key, None)};".encode())
    digest.update(model.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_backbone(name_or_path: str, device: str = "auto", precision: str = "auto") -> Backbone:
    """Load a frozen backbone by name (``softprompt ls backbones``) or local path.

    Args:
        name_or_path: a bundled name, a local Hugging Face directory or a ``.gguf`` file.
        device: ``auto | cpu | cuda | cuda:N | mps``.
        precision: ``auto | fp32 | bf16 | fp16``: the dtype the frozen weights are held and
            computed in (trainable parameters stay float32).

    Raises:
        SoftpromptError: unknown name (with a suggestion), missing weight package (with the pip
            command), a path that is not a model, or a device/precision this machine lacks.
    """
    placement = resolve_placement(device, precision)
    name, kind, directory = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        loader = AutoModel if kind == "encoder" else AutoModelForCausalLM
        model = loader.from_pretrained(
            directory, local_files_only=True, dtype=torch.float32, attn_implementation=placement.attention()
        )
    except OSError as exc:
        raise SoftpromptError(f"could not load backbone from {directory}: {str(exc).splitlines()[0]}") from None
    if kind == "encoder" and getattr(model, "pooler", None) is not None:
        model.pooler = None  # our heads read token states; an unused pooler would only cost time
    model.eval()  # frozen: no dropout, deterministic forward passes
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # The fingerprint is taken from the float32 weights, so an artifact loads in any precision.
    weights_id = fingerprint(model)
    place(model, placement)
    return Backbone(name=name, kind=kind, model=model, tokenizer=tokenizer, fingerprint=weights_id, placement=placement)


def place(model: PreTrainedModel, placement: Placement) -> None:
    """Move ``model`` to the placement's device and dtype; its forward passes (the whole model's
    and the bare decoder's or encoder's, which our scoring calls directly) run under autocast."""
    model.to(device=placement.device, dtype=placement.dtype)
    if placement.mixed:
        model.forward = run_in(placement, model.forward)
        body = model.get_decoder() if hasattr(model, "get_decoder") and model.get_decoder() is not model else None
        if body is not None:
            body.forward = run_in(placement, body.forward)
