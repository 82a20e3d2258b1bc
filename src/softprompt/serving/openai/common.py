"""What the OpenAI-compatible routes share: the sampling fields of a request, OpenAI's error
shape, running a request's jobs (whole, or as a stream of Server-Sent Events), stop strings and
finish reasons."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from softprompt.generation.sampling import Prompt
from softprompt.serving.errors import openai_error_body
from softprompt.serving.gate import Gate
from softprompt.serving.registry import is_internal
from softprompt.serving.requests import MAX_SEED, Text
from softprompt.serving.service import Service, shown_name
from softprompt.serving.settings import over_limit
from softprompt.serving.versions import candidate_key
from softprompt.serving.writing import WriteJob, visible_text

# Fields refused rather than ignored when given a value other than OpenAI's default.
REFUSED = {
    "logprobs": (None, False, 0),  # fields of the routes that answer them (chat, completions) are not "extra"
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}

logger = logging.getLogger("softprompt.serve")

MAX_STOPS = 4  # OpenAI's own limit on stop strings

Chunk = Callable[[int, str, str | None], dict[str, Any]]  # (choice index, new text, finish reason) -> event


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="a last chunk with the request's usage, before [DONE]")


class SamplingFields(BaseModel):
    """The fields both routes read. Other fields are accepted and ignored, as vLLM does, and the
    server's log names each such field the first time it is sent (``ignored_fields``); fields of
    OpenAI's that would change the answer (``REFUSED``) are refused instead."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="a generate task from GET /v1/models")
    max_tokens: int | None = Field(None, ge=1, description="at most serve --max-new-tokens (512 by default)")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, description="at most serve --max-samples (16 by default)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="with stream: true only")
    stop: Text | list[Text] | None = Field(None, description="up to 4 strings; the text ends before the first")

    def stops(self) -> tuple[str, ...]:
        given = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in given if s)

    def job(self, prompt: Prompt, listener: Any, rendered: bool = False, task: str | None = None) -> WriteJob:
        """The decoding job for ``prompt``, for task ``task`` (the version answering: the model's
        live version or its candidate; default ``model``)."""
        return WriteJob(
            task or self.model,
            prompt,
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.n,
            self.seed or 0,
            listener,
            stop=self.stops(),
            rendered=rendered,
        )


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(openai_error_body(status, message, param, code), status)


def refusal(request: SamplingFields, gate: Gate) -> JSONResponse | None:
    """OpenAI's error for what this server does not do, for a count over the server's limits, for
    a classification task (400) or for an unknown model (404); None if fine."""
    extra = request.model_extra or {}
    for name, defaults in REFUSED.items():
        if name in extra and extra[name] not in defaults:
            return openai_error(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if request.stream_options is not None and not request.stream:
        return openai_error(400, "stream_options: only with stream: true", "stream_options")
    if len(request.stops()) > MAX_STOPS:
        return openai_error(400, f"stop: at most {MAX_STOPS} strings (OpenAI's limit)", "stop")
    settings = gate.settings
    tokens_field = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
    for name, value, limit, flag in (
        (tokens_field, request.max_tokens, settings.max_new_tokens, "--max-new-tokens"),
        ("n", request.n, settings.max_samples, "--max-samples"),
    ):
        problem = over_limit(value, limit, flag)
        if problem is not None:
            return openai_error(400, f"{name}: {problem}", name)
    note_ignored(request, gate.ignored_logged)
    tasks = gate.service.tasks
    if request.model in tasks.classifiers:
        message = f"'{request.model}' is a classify task: use POST /v1/classify for it; GET /v1/models lists the models"
        return openai_error(400, message, "model", "wrong_task_kind")
    if request.model not in tasks.writers or is_internal(request.model):
        message = f"The model '{shown_name(request.model)}' does not exist; GET /v1/models lists them"
        return openai_error(404, message, "model", "model_not_found")
    return None


IGNORED_NAMES_LOGGED = 1_000  # distinct ignored field names logged, at most (clients choose them)


def note_ignored(request: SamplingFields, logged: set[str]) -> list[str]:
    """The fields of ``request`` this server ignores; each is logged the first time it is sent
    (``logged``: the names logged so far; names cut to 40 characters; at most
    ``IGNORED_NAMES_LOGGED`` of them)."""
    ignored = [name[:40] for name in (request.model_extra or {}) if name not in REFUSED]
    new = [name for name in ignored[:10] if name not in logged]
    if new and len(logged) < IGNORED_NAMES_LOGGED:
        logged.update(new)
        logger.warning("ignored request fields (not implemented by this server): %s", ", ".join(sorted(new)))
    return ignored


def usage(read: int, written: int) -> dict[str, int]:
    return {"prompt_tokens": read, "completion_tokens": written, "total_tokens": read + written}


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


def finish_reason(ids: list[int], text: str, request: SamplingFields, service: Service) -> str:
    """ "stop" for the end-of-sequence token or a stop string, "length" at the token limit."""
    if any(s in text for s in request.stops()):
        return "stop"
    limit = request.max_tokens or service.tasks.writers[request.model].defaults.max_new_tokens
    return "length" if len(ids) >= limit else "stop"


def completed(service: Service, request: SamplingFields, collected: list[Collected]) -> list[tuple[str, str, int]]:
    """``(text, finish reason, tokens)`` of every choice, in OpenAI's order (prompt-major)."""
    tokenizer = service.backbone.tokenizer
    out = []
    for heard in collected:
        for ids in heard.tokens:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out.append(
                (visible_text(text, request.stops(), True), finish_reason(ids, text, request, service), len(ids))
            )
    return out


async def run_whole(
    gate: Gate,
    request: SamplingFields,
    prompts: list[Prompt],
    http: Request | None,
    rendered: bool = False,
    task: str | None = None,
) -> list[Collected] | JSONResponse:
    """Every prompt's job, answered whole; OpenAI's error when one fails. A client that goes
    away takes its jobs out of the decoding batch."""
    collected = [Collected(request.n) for _ in prompts]
    try:
        jobs = (
            gate.submit("generate", request.job(p, c, rendered, task), request=http)
            for p, c in zip(prompts, collected, strict=True)
        )
        await asyncio.gather(*jobs)
    except HTTPException as exc:
        return openai_error(exc.status_code, str(exc.detail))
    return collected


async def stream(
    gate: Gate,
    request: SamplingFields,
    prompts: list[Prompt],
    chunk: Chunk,
    rendered: bool = False,
    usage_chunk: Callable[[int], dict[str, Any]] | None = None,
    on_done: Callable[[list[str]], Awaitable[None]] | None = None,
    task: str | None = None,
) -> AsyncIterator[str]:
    """Server-Sent Events: each choice's new text as it is decoded (never a part of a stop
    string), its finish reason, then (with ``stream_options.include_usage``) the usage chunk that
    ``usage_chunk(completion tokens)`` makes, then ``[DONE]``. ``on_done(the choices' texts)``
    is awaited before the last events of a stream that ended well (capture)."""
    tokenizer = gate.service.backbone.tokenizer
    queue: asyncio.Queue = asyncio.Queue()
    heard = [Collected(request.n, queue, p * request.n) for p in range(len(prompts))]
    work = [
        asyncio.ensure_future(gate.submit("generate", request.job(p, c, rendered, task)))
        for p, c in zip(prompts, heard, strict=True)
    ]
    shown: dict[int, str] = {}
    written: dict[int, int] = {}  # choice index -> its tokens so far
    open_choices = len(prompts) * request.n
    getter: asyncio.Future | None = None
    errored = False
    try:
        while open_choices:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, *work}, return_when=asyncio.FIRST_COMPLETED)
            failed = [w for w in work if w.done() and w.exception() is not None]
            if failed:
                getter.cancel()
                error = failed[0].exception()
                message = error.detail if isinstance(error, HTTPException) else str(error)
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                errored = True
                break
            if getter not in done:
                getter.cancel()
                if all(w.done() for w in work) and queue.empty():
                    break  # every job answered and every event read
                continue
            index, ids, finished = getter.result()
            written[index] = len(ids)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            visible = visible_text(text, request.stops(), finished)
            before = shown.get(index, "")
            delta = visible[len(before) :] if visible.startswith(before) else ""
            shown[index] = max(visible, before, key=len)
            reason = finish_reason(ids, text, request, gate.service) if finished else None
            open_choices -= finished
            yield f"data: {json.dumps(chunk(index, delta, reason))}\n\n"
        if on_done is not None and not errored:
            await on_done([shown.get(index, "") for index in range(len(prompts) * request.n)])
        wants_usage = request.stream_options is not None and request.stream_options.include_usage
        if usage_chunk is not None and wants_usage and not errored:
            yield f"data: {json.dumps(usage_chunk(sum(written.values())))}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # a client that went away: its jobs leave the batch, and nothing waits on the queue
        for w in work:
            w.cancel()
        if getter is not None:
            getter.cancel()


def shadow_answer(gate: Gate, request: SamplingFields, prompts: list[Prompt], render: bool) -> asyncio.Future | None:
    """The texts the task's shadow candidate writes for ``prompts`` (rendered with its own
    template when ``render``), started now beside the live answer; None without a shadow or
    without capture (a shadow's answers are only stored)."""
    if gate.capture is None or gate.service.versions.shadow(request.model) is None:
        return None
    key = candidate_key(request.model)
    writer = gate.service.tasks.writers.get(key)
    if writer is None:
        return None
    tokenizer = gate.service.backbone.tokenizer
    shown = [writer.render(p, tokenizer) for p in prompts] if render else prompts

    async def texts() -> list[str]:
        collected = await run_whole(gate, request, shown, None, rendered=True, task=key)
        if isinstance(collected, JSONResponse):
            raise RuntimeError("the shadow's answer failed")
        return [text for text, _, _ in completed(gate.service, request, collected)]

    return asyncio.ensure_future(texts())
