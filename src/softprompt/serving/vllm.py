"""A bridge to vLLM for users who outgrow ``softprompt serve``: vLLM takes input embeddings in
place of token ids (``--enable-prompt-embeds``; ``prompt_embeds`` in ``/v1/completions``, a
base64 ``torch.save`` of a ``[tokens, hidden]`` tensor), so a soft prompt needs no support there.

:func:`input_embeddings` gives, for each text, the exact embeddings our own forward pass feeds the
backbone: the artifact's template rendered, the special tokens our tokenization adds, and the soft
tokens in their slots. Positions start at 0 in both, so the next-token logits are the same
(tested against our forward on the CPU). This has not been run against a live vLLM here.

Only soft-token methods can be expressed this way: prefix tuning changes every layer's keys and
values, and LoRA-type methods change the weights (vLLM serves those as LoRA adapters).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from softprompt.atomic import atomic_write
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.tasks.base import TaskModel
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.generation.model import PromptedGenerator


def _check(model: TaskModel) -> None:
    if model.method.prefix_length() or model.method.changes_every_hidden_state:
        raise SoftpromptError(
            f"method {model.method.name} changes the backbone's layers or keys and values, which input "
            "embeddings cannot carry; only soft-token artifacts (prompt_tuning, ptuning...) export as prompt embeddings"
        )
    if not model.backbone.predicts_tokens:
        raise SoftpromptError("prompt embeddings are for causal LM backbones (vLLM generates with them)")


@torch.inference_mode()
def input_embeddings(model: TaskModel, texts: Sequence[str]) -> list[torch.Tensor]:
    """``[tokens, hidden]`` input embeddings of each text, as our forward builds them (in the
    backbone's dtype, on the CPU)."""
    _check(model)
    out = []
    for text in texts:
        if isinstance(model, PromptedClassifier):
            encoded = model.task.encode(Example({"text": text}))
        elif isinstance(model, PromptedGenerator):
            encoded = model.encode_prompt({"text": text})
        else:
            raise SoftpromptError(f"a {type(model).__name__} has no text inputs to export")
        device = model.backbone.device
        ids = torch.tensor([encoded.ids], device=device)
        soft = torch.tensor([encoded.soft], device=device)
        out.append(model.embed(ids, soft)[0].cpu())
    return out


def vllm_completion_request(model: TaskModel, text: str, served_name: str, **settings: Any) -> dict[str, Any]:
    """The body of a vLLM ``POST /v1/completions`` for ``text`` under this artifact's prompt:
    ``{"model": served_name, "prompt_embeds": <base64 torch.save>, **settings}``."""
    buffer = io.BytesIO()
    torch.save(input_embeddings(model, [text])[0], buffer)
    return {"model": served_name, "prompt_embeds": base64.b64encode(buffer.getvalue()).decode("ascii"), **settings}


def export_prompt_embeds(model: TaskModel, meta: dict[str, Any], out: str | Path) -> Path:
    """Write the artifact's soft tokens (``[n, hidden]``, float32) to a safetensors file, with
    the template and backbone in its metadata, for building embeddings outside softprompt."""
    _check(model)
    soft = model.method.soft_embeddings()
    if soft is None:
        raise SoftpromptError(f"method {model.method.name} has no soft tokens to export")
    description = model.describe()
    metadata = {
        "format": "softprompt prompt-embeds 1",
        "backbone": meta["backbone"]["name"],
        "template": str(description.get("template", "")),
        "hidden_size": str(model.backbone.hidden_size),
    }
    path = Path(out)
    tensors = {"soft_prompt": soft.detach().float().cpu().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path
