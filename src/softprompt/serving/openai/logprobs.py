"""Log-probabilities on the OpenAI routes: each choice's tokens scored in one pass through the
worker (:class:`~softprompt.serving.writing.ScoreJob`), then written in the shape each route
answers with: ``/v1/completions``' ``logprobs`` object (tokens, token_logprobs, top_logprobs,
text_offset) and chat's ``logprobs.content`` list (token, logprob, bytes, top_logprobs).

These are the model's own log-probabilities (temperature 1, no nucleus cut), whatever the
decoding settings, as vLLM reports them by default."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from softprompt.generation.sampling import Prompt
from softprompt.serving.gate import Gate
from softprompt.serving.writing import Scored, ScoreJob

MAX_CHAT_TOP_LOGPROBS = 20  # OpenAI's own limit for chat's ``top_logprobs``


async def score_choices(
    gate: Gate,
    task: str,
    prompts: list[Prompt],
    tokens: list[list[list[int]]],
    texts: list[str],
    top: int,
    echo: bool,
    http: Request | None,
) -> list[Scored]:
    """The scores of every choice (prompt-major: ``tokens[prompt][sample]`` and their shown
    ``texts``), after its rendered prompt and, with ``echo``, of the prompt's tokens too.

    Raises:
        HTTPException: a scoring job failed (the task went away, the server is closing...).
    """
    tokenizer = gate.service.backbone.tokenizer
    jobs = []
    for prompt, samples in zip(prompts, tokens, strict=True):
        for ids in samples:
            generated = visible_ids(tokenizer, ids, texts[len(jobs)])
            jobs.append(ScoreJob(task, prompt, generated, top, echo, rendered=True))
    return list(await asyncio.gather(*(gate.submit("score", job, request=http) for job in jobs)))


def visible_ids(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """The generated ids that make up ``text`` (a choice's text, cut before a stop string)."""
    if tokenizer.decode(ids, skip_special_tokens=True) == text:
        return ids
    kept = 0
    while kept < len(ids) and len(tokenizer.decode(ids[: kept + 1], skip_special_tokens=True)) <= len(text):
        kept += 1
    return ids[:kept]


def completion_logprobs(tokenizer: Any, result: Scored, start: int) -> dict[str, Any]:
    """OpenAI's completions ``logprobs``: each token's text, log-probability (None for a first
    token with nothing before it), its place's most likely tokens, and where it starts in the text."""
    tokens = token_texts(tokenizer, result.scores.tokens)
    offsets = []
    for token in tokens:
        offsets.append(start)
        start += len(token)
    top = [None if place is None else top_texts(tokenizer, place) for place in result.scores.top]
    return {"tokens": tokens, "token_logprobs": result.scores.logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(tokenizer: Any, result: Scored) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: ``{"content": [...]}``, one entry per generated token with its
    text, log-probability, UTF-8 bytes and its place's most likely tokens (most likely first)."""
    scores = result.scores
    content = []
    for text, logprob, place in zip(token_texts(tokenizer, scores.tokens), scores.logprobs, scores.top, strict=True):
        best = [
            {"token": key, "logprob": value, "bytes": list(key.encode("utf-8"))}
            for key, value in top_texts(tokenizer, place or {}).items()
        ]
        content.append({"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": best})
    return {"content": content}


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
