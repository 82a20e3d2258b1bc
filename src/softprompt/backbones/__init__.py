"""Loading a frozen backbone onto its device and in its dtype. Its files come from
:mod:`softprompt.backbones.sources` (a bundled name, a local path or a Hub id)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from softprompt.backbones.placement import Placement, hold_in_float32, release_float32, resolve_placement, run_in
from softprompt.backbones.sources import Kind, hub_id, resolve
from softprompt.errors import SoftpromptError

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
    quantized: bool = False  # frozen weights held in 4 or 8 bits (their values cannot train)
    # While decoding() holds the weights in float32: how many are inside it, and what to restore.
    _holders: int = field(default=0, repr=False, compare=False)
    _held: tuple[list[torch.Tensor], Placement] | None = field(default=None, repr=False, compare=False)
    _hold_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.num_parameters:
            self.num_parameters = sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def base_model_id(self) -> str:
        """What peft and the Hub call this backbone (``base_model_name_or_path``): the Hub id a
        bundled backbone's weights come from (``HuggingFaceTB/SmolLM2-135M-Instruct``), a Hub id
        as given, else the local path; softprompt's own short name stays in ``task.json``."""
        return hub_id(self.name) or self.name

    @property
    def predicts_tokens(self) -> bool:
        """It has an LM head and reads left to right (a causal LM): it can generate text, score
        verbalizer words zero-shot and host prompts that continue text. An encoder cannot; it
        sees the whole text at once and labels it through a trained head."""
        return self.kind == "causal"

    def require_token_prediction(self, needed_by: str) -> None:
        """Refuse, in one line, a backbone that cannot predict tokens for ``needed_by``."""
        if not self.predicts_tokens:
            raise SoftpromptError(
                f"{needed_by} needs a causal LM backbone (e.g. backbone=smollm2-135m); {self.name} is an encoder"
            )

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        """Where token-by-token decoding runs: in float32 on a CPU, whatever precision the
        backbone is held in: one token's small matmuls run faster in float32 there, while bf16
        pays off for training's large ones (benchmarks/RESULTS.md, "Decoding precision on a CPU").
        The frozen weights are cast for the duration and back (exactly), taking twice their
        memory meanwhile; the casts pay off over a split, not for one short input. It
        nests, and several threads may be inside at once (the weights are cast back when the
        last leaves); a forward pass another thread runs outside it while the weights change
        dtype is not safe. Nothing changes on a GPU, in float32, for
        quantized weights, or with several processes (their wrappers own the parameters)."""
        with self._hold_lock:
            holding = self._holders > 0 or self._should_hold()
            if holding and not self._holders:
                self._held = (hold_in_float32(self.model, self.placement.dtype), self.placement)
                self.placement = Placement(self.placement.device, torch.float32)
            self._holders += holding
        try:
            yield
        finally:
            if holding:
                with self._hold_lock:
                    self._holders -= 1
                    if not self._holders:
                        tensors, self.placement = self._held
                        self._held = None
                        release_float32(self.model, tensors, self.placement.dtype)

    def _should_hold(self) -> bool:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return self.device.type == "cpu" and self.placement.mixed and not self.quantized and not distributed

    def claim(self, method: str) -> None:
        """Record that ``method`` changes this backbone's layers; one such method per loaded backbone."""
        if self.modified_by is not None:
            raise SoftpromptError(
                f"backbone {self.name} already carries method {self.modified_by}; load a fresh backbone for {method}"
            )
        self.modified_by = method


def fingerprint(model: PreTrainedModel, directory: Path | None = None) -> str:
    """Hash of the architecture and the input-embedding weights as float32 (cheap, differs
    between models, and the same whatever dtype the model was loaded in: the weights are read
    from the checkpoint's safetensors files when they hold them)."""
    cfg = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(cfg, key, None)};".encode())
    weights = _stored_embeddings(model, directory) if directory is not None else None
    if weights is None:
        weights = model.get_input_embeddings().weight.detach()
    digest.update(weights.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _stored_embeddings(model: PreTrainedModel, directory: Path) -> torch.Tensor | None:
    """The input embeddings as stored in ``directory``'s safetensors files (None if not there)."""
    embedding = model.get_input_embeddings().weight
    names = [name for name, param in model.named_parameters() if param is embedding]
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            # A checkpoint of a task model prefixes the body's names ("bert." + "embeddings...").
            for key in handle.keys():  # noqa: SIM118 (safe_open has keys(), not __iter__)
                if any(key == name or key.endswith("." + name) or name.endswith("." + key) for name in names):
                    return handle.get_tensor(key)
    return None


def load_backbone(name_or_path: str, device: str = "auto", precision: str = "auto", quantize: str = "none") -> Backbone:
    """Load a frozen backbone by name (``softprompt ls backbones``), local path or Hub id.

    Args:
        name_or_path: a bundled name, a local Hugging Face directory, a ``.gguf`` file or a Hub id.
        device: ``auto | cpu | cuda | cuda:N | mps``.
        precision: ``auto | fp32 | bf16 | fp16``: the dtype the frozen weights are held and
            computed in (trainable parameters stay float32).
        quantize: ``none | 4bit | 8bit``: hold the frozen weights quantized (bitsandbytes, CUDA).

    Raises:
        SoftpromptError: unknown name (with a suggestion), missing weight package (with the pip
            command), a path that is not a model, or a device/precision/quantization this
            machine lacks.
    """
    placement = resolve_placement(device, precision)
    quantization = quantization_config(quantize, placement)
    name, kind, directory = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        loader = AutoModel if kind == "encoder" else AutoModelForCausalLM
        model = loader.from_pretrained(
            directory,
            local_files_only=True,
            dtype=placement.dtype,
            attn_implementation=placement.attention(),
            device_map={"": placement.device} if placement.device.type != "cpu" else None,
            quantization_config=quantization,
        )
    except (OSError, ValueError, ImportError) as exc:
        raise SoftpromptError(f"could not load backbone from {directory}: {str(exc).splitlines()[0]}") from None
    if kind == "encoder" and getattr(model, "pooler", None) is not None:
        model.pooler = None  # our heads read token states; an unused pooler would only cost time
    model.eval()  # frozen: no dropout, deterministic forward passes
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    weights_id = fingerprint(model, directory)
    place(model, placement, moved=quantization is not None)
    backbone = Backbone(name=name, kind=kind, model=model, tokenizer=tokenizer, fingerprint=weights_id)
    backbone.placement, backbone.quantized = placement, quantization is not None
    return backbone


def quantization_config(quantize: str, placement: Placement) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``quantize`` (None for ``none``).

    Raises:
        SoftpromptError: an unknown value, no CUDA device, or bitsandbytes not installed.
    """
    if quantize == "none":
        return None
    if quantize not in ("4bit", "8bit"):
        raise SoftpromptError(f"quantize '{quantize}' is not one of none, 4bit, 8bit")
    if placement.device.type != "cuda":
        raise SoftpromptError(f"quantize={quantize} needs a CUDA GPU (bitsandbytes); this run is on {placement.device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SoftpromptError(f"quantize={quantize} needs bitsandbytes: pip install 'softprompt[quantization]'")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # QLoRA's recipe: 4-bit NormalFloat weights, computed in the placement's dtype.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=placement.dtype,
    )


def place(model: PreTrainedModel, placement: Placement, moved: bool = False) -> None:
    """Move ``model`` to the placement's device and dtype (unless the loader ``moved`` it: a
    quantized model cannot be cast); its forward passes (the whole model's and the bare
    decoder's or encoder's, which our scoring calls directly) run under autocast."""
    if not moved:
        model.to(device=placement.device, dtype=placement.dtype)
    if placement.mixed:
        model.forward = run_in(placement, model.forward, model)
        body = model.get_decoder() if hasattr(model, "get_decoder") and model.get_decoder() is not model else None
        if body is not None:
            body.forward = run_in(placement, body.forward, model)
