"""``softprompt.serving.vllm.Client`` against a stand-in for vLLM's ``/v1/completions`` (no vLLM
runs without a GPU): the stand-in loads ``prompt_embeds`` by vLLM's own rules
(``safe_load_prompt_embeds``: base64 validated, ``torch.load(weights_only=True)`` on the CPU, a
tensor, made dense, ``[tokens, hidden]`` with the model's hidden size, a floating dtype cast to the
model's) and decodes greedily from the embeddings with transformers. What it writes must be what
``softprompt serve`` writes for the same prompt and messages."""

from __future__ import annotations

import base64
import io
import re

import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from softprompt.errors import SoftpromptError
from softprompt.serving.app import GenerateRequest
from softprompt.serving.vllm import Client
from softprompt.serving.writing import WriteJob

from .helpers import generate, live_server
from .test_generation import PAIRS
from .test_serving_generation import served_dir, service  # noqa: F401 (fixtures)

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def vllm_stand_in(backbone_dir) -> FastAPI:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(backbone_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    hidden = model.config.hidden_size
    app = FastAPI()
    app.state.bodies = []

    def refuse(message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "param": "prompt_embeds"}}, 400)

    @app.post("/v1/completions")
    def complete(body: dict) -> JSONResponse:
        app.state.bodies.append(body)
        if "prompt_embeds" not in body:
            return refuse("this stand-in answers prompt_embeds only")
        payload = base64.b64decode(body["prompt_embeds"], validate=True)
        tensor = torch.load(io.BytesIO(payload), weights_only=True, map_location=torch.device("cpu"))
        if not isinstance(tensor, torch.Tensor):
            return refuse("`prompt_embeds` payload did not deserialize to a torch.Tensor.")
        tensor = tensor.to_dense()
        if tensor.dim() > 2:
            tensor = tensor.squeeze(0)
        if tensor.dim() != 2 or tensor.shape[1] != hidden:
            return refuse(f"`prompt_embeds` must be (num_tokens, {hidden}); got {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            return refuse(f"`prompt_embeds` dtype {tensor.dtype} is not a floating-point type")
        embeds = tensor.to(model.dtype)[None]
        with torch.no_grad():
            ids = model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                max_new_tokens=body.get("max_tokens", 16),
                do_sample=False,
            )[0]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        choice = {"index": 0, "text": text, "finish_reason": "length"}
        return JSONResponse({"object": "text_completion", "model": body["model"], "choices": [choice]})

    return app


@pytest.fixture(scope="module")
def stand_in(tiny_llama_dir):
    app = vllm_stand_in(tiny_llama_dir)
    with live_server(app) as url:
        yield url, app


def test_completions_through_vllm_write_what_softprompt_serve_writes(stand_in, served_dir, service):  # noqa: F811
    url, app = stand_in
    client = Client(served_dir / "polite", f"{url}/v1", model="tiny")
    written = []
    for text, _ in PAIRS[:3]:
        answer = client.complete(text, max_tokens=5, temperature=0)
        ours = generate(service, [GenerateRequest(task="polite", prompt=text, max_new_tokens=5, temperature=0)])[0][0]
        assert answer["choices"][0]["text"] == ours
        written.append(ours)
    assert any(written), "nothing written: nothing compared"
    sent = app.state.bodies[-1]
    assert sent["model"] == "tiny" and sent["max_tokens"] == 5 and "prompt" not in sent


def test_chat_through_vllm_writes_what_softprompt_serves_chat_route_writes(stand_in, served_dir, service):  # noqa: F811
    url, _ = stand_in
    client = Client(served_dir / "polite", url)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "you idiot"}]
    with pytest.raises(SoftpromptError, match="no chat template"):
        client.chat(messages)
    client.module.backbone.tokenizer.chat_template = CHAT_TEMPLATE
    service.backbone.tokenizer.chat_template = CHAT_TEMPLATE
    try:
        answer = client.chat(messages, max_tokens=4)
        rendered = service.backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ours = generate(service, [WriteJob("polite", rendered, 4, 0.0, rendered=True)])[0][0]
        assert answer["choices"][0]["text"] == ours and ours
    finally:
        service.backbone.tokenizer.chat_template = None


def test_vllm_errors_and_an_unreachable_server_are_one_line(stand_in, served_dir):  # noqa: F811
    url, _ = stand_in
    client = Client(served_dir / "polite", url)
    with pytest.raises(SoftpromptError, match=r"answered 400: .*prompt_embeds only"):
        client._post({"model": "tiny", "prompt": "plain text"})
    gone = Client(served_dir / "polite", "http://127.0.0.1:9")
    with pytest.raises(SoftpromptError, match=re.escape("cannot reach vLLM at http://127.0.0.1:9/v1/completions")):
        gone.complete("hello", max_tokens=2)
