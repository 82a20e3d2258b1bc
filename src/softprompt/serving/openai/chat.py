"""``POST /v1/chat/completions`` (``model`` = a generate task's name): the messages are rendered
with the backbone tokenizer's own chat template (the task's template is not used), and the
task's soft prompt is put before them. A backbone without a chat template is a 400."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from softprompt.serving.capturing import keep_with_shadow
from softprompt.serving.gate import Gate
from softprompt.serving.openai.common import (
    SamplingFields,
    completed,
    openai_error,
    refusal,
    run_whole,
    shadow_answer,
    stream,
    usage,
)
from softprompt.serving.openai.completions import prompt_tokens
from softprompt.serving.openai.logprobs import MAX_CHAT_TOP_LOGPROBS, chat_logprobs, score_choices
from softprompt.serving.requests import Text
from softprompt.serving.service import Service


class ContentPart(BaseModel):
    """One part of a message's content in OpenAI's list form; only ``{"type": "text", "text": ...}``
    is answered (an image or audio part is refused with a 400 naming its type)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1, description="text (other part types are refused)")
    text: Text | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[ContentPart] = Field(min_length=1, description="a text, or a list of text parts")

    def text(self, index: int) -> str:
        """The message's text (text parts joined by new lines, as vLLM joins them).

        Raises:
            ValueError: ``(message, field)`` for a part that is not text.
        """
        if isinstance(self.content, str):
            return self.content
        texts = []
        for number, part in enumerate(self.content):
            where = f"messages[{index}].content[{number}]"
            if part.type != "text":
                kind = part.type if len(part.type) <= 40 else f"{part.type[:40]}..."
                raise ValueError(f"{where}: parts of type '{kind}' are not supported; send 'text' parts", where)
            if not part.text:
                raise ValueError(f"{where}: a text part needs a non-empty 'text'", where)
            texts.append(part.text)
        return "\n".join(texts)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens on chat; wins over max_tokens when both are given"
    )
    logprobs: bool = Field(False, description="each generated token's log-probability (answered whole, not streamed)")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_CHAT_TOP_LOGPROBS, description="with logprobs: the most likely tokens at each place (0-20)"
    )

    def unanswerable(self) -> tuple[str, str] | None:
        """``(field, why)`` when ``logprobs``/``top_logprobs`` cannot be answered, or None."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs: only with logprobs: true"
        if self.stream and self.logprobs:
            return "stream", "logprobs are answered whole: set stream to false"
        return None

    @model_validator(mode="after")
    def _completion_tokens(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


def add_chat(app: FastAPI, service: Service, gate: Gate) -> None:
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest, http: Request) -> JSONResponse | StreamingResponse:
        http.state.task = request.model
        refused = refusal(request, gate)
        if refused is not None:
            return refused
        problem = request.unanswerable()
        if problem is not None:
            return openai_error(400, problem[1], problem[0])
        tokenizer = service.backbone.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            message = f"backbone {service.backbone.name} has no chat template; use /v1/completions"
            return openai_error(400, message, "messages", "no_chat_template")
        try:
            messages = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(request.messages)]
        except ValueError as exc:
            message, where = exc.args
            return openai_error(400, message, where, "unsupported_content")
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        key = service.versions.answering(request.model)[0]  # the live version, or a canary's candidate
        read = prompt_tokens(service, service.tasks.writers[key].soft, prompt)  # before any wait
        try:
            gate.within_limits([m["content"] for m in messages], (request.max_tokens or 0) * request.n)
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail), "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        head["model"] = request.model
        started, version = time.perf_counter(), service.versions.version_of(service.tasks, key)
        shadow = shadow_answer(gate, request, [prompt], render=False)

        async def captured(texts: list[str]) -> None:
            served = (head["id"], messages, texts, version, "served")
            await keep_with_shadow(gate, "chat", request.model, served, started, shadow)

        if request.stream:
            opened: set[int] = set()  # choices whose first chunk (with the role) was sent

            def chunk(index: int, text: str, reason: str | None) -> dict[str, Any]:
                delta = {"content": text} if index in opened else {"role": "assistant", "content": text}
                opened.add(index)
                choice = {"index": index, "delta": delta, "finish_reason": reason}
                return {**head, "object": "chat.completion.chunk", "choices": [choice]}

            def usage_chunk(written: int) -> dict[str, Any]:
                return {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(read, written)}

            events = stream(
                gate, request, [prompt], chunk, rendered=True, usage_chunk=usage_chunk, on_done=captured, task=key
            )
            return StreamingResponse(events, media_type="text/event-stream")
        collected = await run_whole(gate, request, [prompt], http, rendered=True, task=key)
        if isinstance(collected, JSONResponse):
            if shadow is not None:
                shadow.cancel()
            return collected
        answers = completed(service, request, collected)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": reason}
            for i, (text, reason, _) in enumerate(answers)
        ]
        if request.logprobs:
            texts, top = [text for text, _, _ in answers], request.top_logprobs or 0
            try:
                scored = await score_choices(gate, key, [prompt], [collected[0].tokens], texts, top, False, http)
            except HTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail))
            for choice, result in zip(choices, scored, strict=True):
                choice["logprobs"] = chat_logprobs(tokenizer, result)

        written = sum(tokens for _, _, tokens in answers)
        await captured([text for text, _, _ in answers])
        return JSONResponse({**head, "choices": choices, "usage": usage(read, written)})
