"""``POST /v1/chat/completions`` (``model`` = a generate task's name): the messages are rendered
with the backbone tokenizer's own chat template (the task's template is not used), and the
task's soft prompt is put before them. A backbone without a chat template is a 400."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from softprompt.serving.openai.common import SamplingFields, completed, openai_error, refusal, run_whole, stream
from softprompt.serving.openai.completions import prompt_tokens
from softprompt.serving.requests import Text
from softprompt.serving.service import Gate, Service


class ChatMessage(BaseModel):
    role: str = Field(pattern="^(system|user|assistant|developer)$", description="system, user, assistant or developer")
    content: Text = Field(min_length=1)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


def add_chat(app: FastAPI, service: Service, gate: Gate) -> None:
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest, http: Request) -> JSONResponse | StreamingResponse:
        http.state.task = request.model
        refused = refusal(request, service)
        if refused is not None:
            return refused
        tokenizer = service.backbone.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            message = f"backbone {service.backbone.name} has no chat template; use /v1/completions"
            return openai_error(400, message, "messages", "no_chat_template")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        read = prompt_tokens(service, service.tasks.writers[request.model].soft, prompt)  # before any wait
        try:
            gate.within_limits([m["content"] for m in messages], (request.max_tokens or 0) * request.n)
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail), "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        head["model"] = request.model
        if request.stream:
            started: set[int] = set()

            def chunk(index: int, text: str, reason: str | None) -> dict[str, Any]:
                delta = {"content": text} if index in started else {"role": "assistant", "content": text}
                started.add(index)
                choice = {"index": index, "delta": delta, "finish_reason": reason}
                return {**head, "object": "chat.completion.chunk", "choices": [choice]}

            events = stream(gate, request, [prompt], chunk, rendered=True)
            return StreamingResponse(events, media_type="text/event-stream")
        collected = await run_whole(gate, request, [prompt], http, rendered=True)
        if isinstance(collected, JSONResponse):
            return collected
        answers = completed(service, request, collected)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason, _) in enumerate(answers)
        ]

        written = sum(tokens for _, _, tokens in answers)
        usage = {"prompt_tokens": read, "completion_tokens": written, "total_tokens": read + written}
        return JSONResponse({**head, "choices": choices, "usage": usage})
