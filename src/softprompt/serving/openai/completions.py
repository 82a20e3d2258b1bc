"""``POST /v1/completions`` (``model`` = a generate task's name): the text is rendered with the
task's template and its soft prompt put before it."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from softprompt.serving.openai.common import SamplingFields, completed, openai_error, refusal, run_whole, stream
from softprompt.serving.requests import Text
from softprompt.serving.service import Gate, Service


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text]


def add_completions(app: FastAPI, service: Service, gate: Gate) -> None:
    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest, http: Request) -> JSONResponse | StreamingResponse:
        http.state.task = request.model
        refused = refusal(request, service)
        if refused is not None:
            return refused
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts or not all(prompts):
            return openai_error(400, "prompt: give a non-empty text (or a list of them)", "prompt")
        try:
            gate.within_limits(prompts, (request.max_tokens or 0) * request.n * len(prompts))
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail), "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = request.model

        def chunk(index: int, text: str, reason: str | None) -> dict[str, Any]:
            return {**head, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]}

        if request.stream:
            return StreamingResponse(stream(gate, request, prompts, chunk), media_type="text/event-stream")
        collected = await run_whole(gate, request, prompts, http)
        if isinstance(collected, JSONResponse):
            return collected
        choices, written = [], 0
        for index, (text, reason, tokens) in enumerate(completed(service, request, collected)):
            choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": reason})
            written += tokens
        read = sum(
            prompt_tokens(service, request.model, service.tasks.writers[request.model].render(p)) for p in prompts
        )
        usage = {"prompt_tokens": read, "completion_tokens": written, "total_tokens": read + written}
        return JSONResponse({**head, "choices": choices, "usage": usage})


def prompt_tokens(service: Service, task: str, rendered: str) -> int:
    """Tokens the model reads for a rendered prompt: its text's and the task's soft tokens."""
    soft = service.tasks.writers[task].soft
    return len(service.backbone.tokenizer(rendered)["input_ids"]) + (0 if soft is None else len(soft))
