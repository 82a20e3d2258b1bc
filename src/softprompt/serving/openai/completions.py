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

import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from softprompt.generation.sampling import Prompt
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
from softprompt.serving.openai.logprobs import completion_logprobs, score_choices
from softprompt.serving.requests import Text
from softprompt.serving.service import Service


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts, token ids (a list of ints) or a list of those (as "
        "lm-evaluation-harness sends by default); token ids are read as they are, in the template's {text}"
    )
    max_tokens: int | None = Field(
        None, ge=0, description="0 only with echo: score the prompt; at most serve --max-new-tokens (512 by default)"
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="report log-probabilities (top 0-5)")
    echo: bool = Field(False, description="put the prompt, as the model read it, before the completion")

    def prompts(self) -> list[Prompt]:
        """The request's prompts: texts, or lists of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(item, int) for item in self.prompt):
            return [list(self.prompt)]  # one prompt of token ids
        return list(self.prompt)

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
        prompts = request.prompts()
        tokenizer = service.backbone.tokenizer
        problem = request.unanswerable() or unreadable(prompts, len(tokenizer))
        if problem is not None:
            return openai_error(400, problem[1], problem[0])
        try:
            texts = [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]
            gate.within_limits(texts, (request.max_tokens or 0) * request.n * len(prompts))
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
        rendered = [writer.render(p, tokenizer) for p in prompts]
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


def unreadable(prompts: list[Prompt], vocabulary: int) -> tuple[str, str] | None:
    """``("prompt", why)`` for an empty prompt or a token id outside the vocabulary, or None."""
    if not prompts or not all(prompts):
        return "prompt", "prompt: give a non-empty text or list of token ids (or a list of them)"
    for index, prompt in enumerate(prompts):
        wrong = next((i for i in prompt if not 0 <= i < vocabulary), None) if isinstance(prompt, list) else None
        if wrong is not None:
            return "prompt", f"prompt {index}: token id {wrong} is not in the vocabulary (0 to {vocabulary - 1})"
    return None


def prompt_tokens(service: Service, soft: Any, rendered: Prompt) -> int:
    """Tokens the model reads for a rendered prompt: its own and the task's soft tokens."""
    own = len(rendered) if isinstance(rendered, list) else len(service.backbone.tokenizer(rendered)["input_ids"])
    return own + (0 if soft is None else len(soft))


async def add_scores(
    gate: Gate,
    request: CompletionRequest,
    rendered: list[Prompt],
    collected: list[Collected],
    choices: list[dict[str, Any]],
    http: Request,
    task: str,
) -> JSONResponse | None:
    """Fill the choices' ``logprobs`` and, with ``echo``, put the rendered prompt before their
    text (one scoring pass per choice, batched by the worker); OpenAI's error if one fails."""
    tokens = [heard.tokens for heard in collected]
    texts = [choice["text"] for choice in choices]
    try:
        scored = await score_choices(gate, task, rendered, tokens, texts, request.logprobs or 0, request.echo, http)
    except HTTPException as exc:
        return openai_error(exc.status_code, str(exc.detail))
    tokenizer = gate.service.backbone.tokenizer
    for choice, result in zip(choices, scored, strict=True):
        start = 0 if request.echo else len(result.rendered)
        if request.echo:
            choice["text"] = result.rendered + choice["text"]
        if request.logprobs is not None:
            choice["logprobs"] = completion_logprobs(tokenizer, result, start)
    return None
