"""``POST /v1/completions`` (``model`` = a generate task's name): the text is rendered with the
task's template and its soft prompt put before it.

``logprobs`` (0-5) reports each generated token's log-probability and the most likely tokens
at its place; ``echo`` puts the prompt, as the model read it (rendered by the task's template),
before the completion, and with ``logprobs`` scores its tokens too; ``max_tokens: 0`` with
``echo`` only scores the prompt. These are the model's own log-probabilities (temperature 1,
no nucleus cut), computed in one forward pass over the finished text, and answered whole (not
streamed). This is what lm-evaluation-harness's ``local-completions`` reads for log-likelihood
tasks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from softprompt.generation.scoring import MAX_TOP_LOGPROBS
from softprompt.serving.capturing import keep_with_shadow
from softprompt.serving.gate import Gate
from softprompt.serving.openai.common import (
    Collected,
    SamplingFields,
    completed,
    openai_error,
    refusal,
    run_whole,
    shadow_answer,
    stream,
    usage,
)
from softprompt.serving.requests import Text
from softprompt.serving.service import Service
from softprompt.serving.writing import Scored, ScoreJob


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(
        None, ge=0, description="0 only with echo: score the prompt; at most serve --max-new-tokens (512 by default)"
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="report log-probabilities (top 0-5)")
    echo: bool = Field(False, description="put the prompt, as the model read it, before the completion")

    def unanswerable(self) -> tuple[str, str] | None:
        """``(field, why)`` when this request's ``logprobs``/``echo``/``max_tokens`` cannot be
        answered together, or None."""
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens", "max_tokens: 0 only makes sense with echo (to score the prompt); give 1 or more"
        if self.stream and (self.echo or self.logprobs is not None):
            return "stream", "logprobs and echo are answered whole: set stream to false"
        return None


def add_completions(app: FastAPI, service: Service, gate: Gate) -> None:
    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest, http: Request) -> JSONResponse | StreamingResponse:
        http.state.task = request.model
        refused = refusal(request, gate)
        if refused is not None:
            return refused
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts or not all(prompts):
            return openai_error(400, "prompt: give a non-empty text (or a list of them)", "prompt")
        problem = request.unanswerable()
        if problem is not None:
            return openai_error(400, problem[1], problem[0])
        try:
            gate.within_limits(prompts, (request.max_tokens or 0) * request.n * len(prompts))
        except HTTPException as exc:
            return openai_error(exc.status_code, str(exc.detail), "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = request.model
        # The version answering: the live one, or (a canary's share) its candidate.
        key = service.versions.answering(request.model)[0]
        started, version = time.perf_counter(), service.versions.version_of(service.tasks, key)
        shadow = shadow_answer(gate, request, prompts, render=True)

        async def captured(texts: list[str]) -> None:
            served = (head["id"], request.prompt, texts, version, "served")
            await keep_with_shadow(gate, "completions", request.model, served, started, shadow)

        def chunk(index: int, text: str, reason: str | None) -> dict[str, Any]:
            return {**head, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]}

        # Counted before any wait: the task may be removed while its requests are answered.
        writer = service.tasks.writers[key]
        # Rendered once (choosing demonstrations per input embeds it): generation, usage and
        # scoring all read the same text.
        rendered = [writer.render(p) for p in prompts]
        read = sum(prompt_tokens(service, writer.soft, text) for text in rendered)
        if request.stream:

            def usage_chunk(written: int) -> dict[str, Any]:
                return {**head, "choices": [], "usage": usage(read, written)}

            events = stream(
                gate, request, rendered, chunk, rendered=True, usage_chunk=usage_chunk, on_done=captured, task=key
            )
            return StreamingResponse(events, media_type="text/event-stream")
        if request.max_tokens == 0:  # echo only: nothing to generate
            collected: list[Collected] | JSONResponse = [Collected(request.n) for _ in prompts]
        else:
            collected = await run_whole(gate, request, rendered, http, rendered=True, task=key)
        if isinstance(collected, JSONResponse):
            if shadow is not None:
                shadow.cancel()
            return collected
        answers = completed(service, request, collected)
        choices = [
            {
                "text": text,
                "index": index,
                "logprobs": None,
                "finish_reason": "length" if request.max_tokens == 0 else reason,
            }
            for index, (text, reason, _) in enumerate(answers)
        ]
        written = sum(tokens for _, _, tokens in answers)
        if request.echo or request.logprobs is not None:
            failed = await add_scores(gate, request, rendered, collected, choices, http, key)
            if failed is not None:
                return failed
        await captured([choice["text"] for choice in choices])
        return JSONResponse({**head, "choices": choices, "usage": usage(read, written)})


def prompt_tokens(service: Service, soft: Any, rendered: str) -> int:
    """Tokens the model reads for a rendered prompt: its text's and the task's soft tokens."""
    return len(service.backbone.tokenizer(rendered)["input_ids"]) + (0 if soft is None else len(soft))


def visible_ids(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """The generated ids that make up ``text`` (a choice's text, cut before a stop string)."""
    if tokenizer.decode(ids, skip_special_tokens=True) == text:
        return ids
    kept = 0
    while kept < len(ids) and len(tokenizer.decode(ids[: kept + 1], skip_special_tokens=True)) <= len(text):
        kept += 1
    return ids[:kept]


async def add_scores(
    gate: Gate,
    request: CompletionRequest,
    rendered: list[str],
    collected: list[Collected],
    choices: list[dict[str, Any]],
    http: Request,
    task: str,
) -> JSONResponse | None:
    """Fill the choices' ``logprobs`` and, with ``echo``, put the rendered prompt before their
    text (one scoring pass per choice, batched by the worker); OpenAI's error if one fails."""
    tokenizer = gate.service.backbone.tokenizer
    jobs = []
    for prompt, heard in zip(rendered, collected, strict=True):
        for ids, choice in zip(heard.tokens, choices[len(jobs) :], strict=False):
            generated = visible_ids(tokenizer, ids, choice["text"])
            jobs.append(ScoreJob(task, prompt, generated, request.logprobs or 0, request.echo, rendered=True))
    try:
        scored: list[Scored] = await asyncio.gather(*(gate.submit("score", job, request=http) for job in jobs))
    except HTTPException as exc:
        return openai_error(exc.status_code, str(exc.detail))
    for choice, result in zip(choices, scored, strict=True):
        start = 0 if request.echo else len(result.rendered)
        if request.echo:
            choice["text"] = result.rendered + choice["text"]
        if request.logprobs is not None:
            choice["logprobs"] = logprobs_object(tokenizer, result, start)
    return None


def logprobs_object(tokenizer: Any, result: Scored, start: int) -> dict[str, Any]:
    """OpenAI's completions ``logprobs``: each token's text, log-probability (None for a first
    token with nothing before it), its place's most likely tokens, and where it starts in the text."""
    tokens = token_texts(tokenizer, result.scores.tokens)
    offsets = []
    for token in tokens:
        offsets.append(start)
        start += len(token)
    top = [None if place is None else top_texts(tokenizer, place) for place in result.scores.top]
    return {"tokens": tokens, "token_logprobs": result.scores.logprobs, "top_logprobs": top, "text_offset": offsets}


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's share of the decoded text, so that the tokens put together are the text
    (decoding a token alone can drop a leading space or split a character)."""
    texts, before = [], ""
    for end in range(1, len(ids) + 1):
        now = tokenizer.decode(ids[:end])
        texts.append(now[len(before) :] if now.startswith(before) else tokenizer.decode(ids[end - 1 : end]))
        before = now
    return texts


def top_texts(tokenizer: Any, place: dict[int, float]) -> dict[str, float]:
    """A place's most likely tokens keyed by text, as OpenAI's format has it. Tokens whose text is
    not whole (part of a character) or that would share a key are keyed by their vocabulary
    entry instead (``token:ID`` if even that is taken), so no token is lost."""
    out: dict[str, float] = {}
    for token, value in place.items():
        key = tokenizer.decode([token])
        if key in out or "\ufffd" in key:
            key = tokenizer.convert_ids_to_tokens(token)
        out[key if key not in out else f"token:{token}"] = value
    return out
