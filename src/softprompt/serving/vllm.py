"""A bridge to vLLM for users who outgrow ``softprompt serve``: vLLM takes input embeddings in
place of token ids (``--enable-prompt-embeds``; ``prompt_embeds`` in ``/v1/completions``, a
base64 ``torch.save`` of a ``[tokens, hidden]`` tensor), so a soft prompt needs no support there.

:class:`Client` sends completions and chat to such a server under an artifact's prompt. Each
request carries the whole prompt's embeddings, as vLLM wants them: :func:`input_embeddings` gives,
for each text, the exact embeddings our own forward pass feeds the backbone (the artifact's
template rendered, the special tokens our tokenization adds, the soft tokens in their slots);
:func:`chat_embeddings` the task's soft prompt before the messages rendered by the backbone
tokenizer's chat template (vLLM's chat route takes no embeddings, so chat goes as a completion).
Positions start at 0 in both, so the next-token logits are the same (tested against our forward
on the CPU, and against a stand-in server that loads the payload by vLLM's own rules). This has
not been run against a live vLLM here: none runs without a GPU.

Only soft-token methods can be expressed this way: prefix tuning changes every layer's keys and
values, and LoRA-type methods change the weights (vLLM serves those as LoRA adapters).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save_file

from softprompt.atomic import atomic_write
from softprompt.core import forward as core
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.tasks.base import TaskModel
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.generation.model import PromptedGenerator


def _check(model: TaskModel) -> None:
    if model.method.prefix_length() or model.method.changes_layers:
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
    return {"model": served_name, "prompt_embeds": encode_prompt_embeds(input_embeddings(model, [text])[0]), **settings}


@torch.inference_mode()
def chat_embeddings(model: TaskModel, messages: list[dict[str, Any]]) -> torch.Tensor:
    """``[tokens, hidden]``: a generation task's soft prompt, then ``messages`` rendered by the
    backbone tokenizer's chat template (with the generation prompt), as ``softprompt serve``'s
    chat route reads them (the task's template is not used)."""
    _check(model)
    if not isinstance(model, PromptedGenerator):
        raise SoftpromptError("chat needs a generation artifact (task=generation); send classify texts as completions")
    template = model.template
    if template.leading_soft != template.num_soft:
        raise SoftpromptError(
            f"template {template.source!r} has soft tokens after its text: chat puts the soft prompt before "
            "the messages, so only a template whose soft tokens all lead can chat"
        )
    tokenizer = model.backbone.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise SoftpromptError(f"backbone {model.backbone.name} has no chat template; send completions instead")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    embeds, _ = core.embed_rows(model.backbone, [(model.method.soft_embeddings(), tokenizer(rendered)["input_ids"])])
    return embeds[0].cpu()


def encode_prompt_embeds(embeddings: torch.Tensor) -> str:
    """vLLM's ``prompt_embeds`` field: a base64 ``torch.save`` of a ``[tokens, hidden]`` tensor."""
    buffer = io.BytesIO()
    torch.save(embeddings.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Client:
    """Completions and chat from a vLLM server (``vllm serve BACKBONE --enable-prompt-embeds``)
    under an artifact's soft prompt. The embeddings are built here, so the client loads the
    artifact and its backbone (the embedding table is the backbone's); vLLM runs the rest.

    Args:
        artifact: an artifact directory or Hub id, or a model from ``softprompt.load``.
        base_url: the vLLM server (``http://host:8000``; a trailing ``/v1`` is fine).
        model: the name vLLM serves the backbone under (default: the backbone's Hub id, what
            ``vllm serve HUB_ID`` calls it).
        api_key: vLLM's ``--api-key``, if it has one.
        http: an ``httpx.Client`` to send with (default: one of its own).
    """

    def __init__(
        self,
        artifact: str | Path | Any,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
    ):
        if isinstance(artifact, (str, Path)):
            import softprompt

            artifact = softprompt.load(artifact)
        self.module: TaskModel = artifact.module
        _check(self.module)
        self.served = model or self.module.backbone.base_model_id
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(timeout=timeout, headers=headers)

    def completion_body(self, text: str, **settings: Any) -> dict[str, Any]:
        """The ``/v1/completions`` body for ``text`` rendered by the artifact's template."""
        return vllm_completion_request(self.module, text, self.served, **settings)

    def chat_body(self, messages: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
        """The ``/v1/completions`` body for a chat (:func:`chat_embeddings`)."""
        embeds = encode_prompt_embeds(chat_embeddings(self.module, messages))
        return {"model": self.served, "prompt_embeds": embeds, **settings}

    def complete(self, text: str, **settings: Any) -> dict[str, Any]:
        """vLLM's completion of ``text`` (OpenAI's completions answer; ``settings`` such as
        ``max_tokens``, ``temperature``, ``stop`` go as they are)."""
        return self._post(self.completion_body(text, **settings))

    def chat(self, messages: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
        """vLLM's answer to ``messages`` (OpenAI's completions answer: ``choices[0]["text"]`` is
        the assistant's reply)."""
        return self._post(self.chat_body(messages, **settings))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self.http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise SoftpromptError(f"cannot reach vLLM at {self.url}: {exc}") from None
        if answer.status_code != 200:
            raise SoftpromptError(f"vLLM at {self.url} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()


def export_prompt_embeds(model: TaskModel, meta: dict[str, Any], out: str | Path) -> Path:
    """Write the artifact's soft tokens (``[n, hidden]``, float32) to a safetensors file, with
    the template and backbone in its metadata, for people who build embeddings themselves. This
    is not what vLLM takes: it wants each request's whole prompt embedded (:class:`Client`)."""
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
