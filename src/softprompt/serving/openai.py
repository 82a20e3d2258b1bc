"""OpenAI-compatible routes: ``POST /v1/completions`` (``model`` = a generate task's name) and
``GET /v1/models``, so OpenAI's clients and tools talk to a softprompt server unchanged.

Settings a request leaves out take the task's own (the decoding its artifact recorded: greedy
unless it sampled); temperature 0 is greedy. ``stream: true`` answers with Server-Sent Events, a
chunk per decoding slice, then ``data: [DONE]``. Errors have OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``): an unknown model is 404.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from softprompt.serving.service import Gate, Service
from softprompt.serving.writing import WriteJob

UNSUPPORTED = ("stop", "logprobs", "echo", "suffix", "logit_bias")  # refused rather than ignored


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI fields (user, presence_penalty...) are ignored

    model: str = Field(min_length=1, description="a generate task from GET /v1/models")
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1, le=512)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class Collected:
    """What a job's listener has heard: token ids per sample, and which samples are done."""

    def __init__(self, samples: int, queue: asyncio.Queue | None = None, offset: int = 0):
        self.tokens: list[list[int]] = [[] for _ in range(samples)]
        self.queue, self.offset, self.loop = queue, offset, asyncio.get_running_loop()

    def __call__(self, sample: int, ids: list[int], done: bool) -> None:  # runs in the worker thread
        self.tokens[sample].extend(ids)
        if self.queue is not None:  # (choice index, the sample's tokens so far, finished)
            item = (self.offset + sample, list(self.tokens[sample]), done)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def add_completion_routes(app: FastAPI, service: Service, gate: Gate) -> None:
    """``/v1/models`` and ``/v1/completions`` (see the module docstring)."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = list(service.tasks.generators)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "softprompt"} for n in names],
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest, http: Request) -> JSONResponse | StreamingResponse:
        http.state.task = request.model
        given = [name for name in UNSUPPORTED if getattr(request, name, None) not in (None, False, [], {})]
        if given:
            return openai_error(400, f"'{given[0]}' is not supported by this server", given[0], "unsupported_parameter")
        if request.model not in service.tasks.generators:
            return openai_error(
                404,
                f"The model '{request.model}' does not exist; GET /v1/models lists them",
                "model",
                "model_not_found",
            )
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts or not all(prompts):
            return openai_error(400, "prompt: give a non-empty text (or a list of them)", "prompt")
        try:
            gate.within_limits(prompts, (request.max_tokens or 0) * request.n * len(prompts))
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail), "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = request.model
        if request.stream:
            return StreamingResponse(_stream(gate, request, prompts, head), media_type="text/event-stream")
        collected = [Collected(request.n) for _ in prompts]
        try:
            await asyncio.gather(
                *(gate.submit("generate", _job(request, p, c)) for p, c in zip(prompts, collected, strict=True))
            )
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail))
        return JSONResponse({**head, **_answer(service, request, prompts, collected)})


def _job(request: CompletionRequest, prompt: str, listener) -> WriteJob:
    return WriteJob(
        request.model,
        prompt,
        request.max_tokens,
        request.temperature,
        request.top_p,
        request.n,
        request.seed or 0,
        listener,
    )


def _finish_reason(ids: list[int], request: CompletionRequest, service: Service) -> str:
    limit = request.max_tokens or service.tasks.generators[request.model].defaults.max_new_tokens
    return "length" if len(ids) >= limit else "stop"


def _answer(service: Service, request: CompletionRequest, prompts: list[str], collected: list[Collected]) -> dict:
    tokenizer, writer = service.backbone.tokenizer, service.tasks.generators[request.model]
    choices, written = [], 0
    for p, heard in enumerate(collected):
        for j, ids in enumerate(heard.tokens):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            choices.append(
                {
                    "text": text,
                    "index": p * request.n + j,
                    "logprobs": None,
                    "finish_reason": _finish_reason(ids, request, service),
                }
            )
            written += len(ids)
    read = sum(
        len(tokenizer(writer.render(p))["input_ids"]) + (0 if writer.soft is None else len(writer.soft))
        for p in prompts
    )
    return {
        "choices": choices,
        "usage": {"prompt_tokens": read, "completion_tokens": written, "total_tokens": read + written},
    }


async def _stream(gate: Gate, request: CompletionRequest, prompts: list[str], head: dict) -> AsyncIterator[str]:
    """Server-Sent Events: each sample's new text as it is decoded, its finish reason, then [DONE]."""
    tokenizer = gate.service.backbone.tokenizer
    queue: asyncio.Queue = asyncio.Queue()
    heard = [Collected(request.n, queue, p * request.n) for p in range(len(prompts))]
    work = [
        asyncio.ensure_future(gate.submit("generate", _job(request, p, c))) for p, c in zip(prompts, heard, strict=True)
    ]
    shown: dict[int, str] = {}
    open_samples = len(prompts) * request.n
    try:
        while open_samples:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, *work}, return_when=asyncio.FIRST_COMPLETED)
            failed = [w for w in work if w.done() and w.exception() is not None]
            if failed:
                getter.cancel()
                error = failed[0].exception()
                message = error.detail if isinstance(error, HTTPException) else str(error)
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                break
            if getter not in done:
                getter.cancel()
                if all(w.done() for w in work) and queue.empty():
                    break  # every job answered and every event read
                continue
            index, ids, finished = getter.result()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            delta, shown[index] = text[len(shown.get(index, "")) :], text
            reason = _finish_reason(ids, request, gate.service) if finished else None
            open_samples -= finished
            choice = {"text": delta, "index": index, "logprobs": None, "finish_reason": reason}
            yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for w in work:
            w.cancel()
