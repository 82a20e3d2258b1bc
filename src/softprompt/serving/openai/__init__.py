"""OpenAI-compatible routes, so OpenAI's clients and tools talk to a softprompt server unchanged:
``GET /v1/models`` (the generate tasks), ``POST /v1/completions`` and ``POST /v1/chat/completions``
(``model`` = a generate task's name).

Settings a request leaves out take the task's own (the decoding its artifact recorded: greedy
unless it sampled); temperature 0 is greedy. ``stop`` (a string or up to 4) ends a choice before
the first stop string, which is never shown, streaming included. ``stream: true`` answers with
Server-Sent Events, a chunk per decoding slice, then (``stream_options.include_usage``) a usage
chunk, then ``data: [DONE]``. Chat takes ``max_completion_tokens`` for ``max_tokens``. Errors
have OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): an unknown model is
404, a classify task 400; ``best_of``, penalties and tools (and, on chat, ``logprobs``) are
refused with a 400 rather than ignored; other unknown fields are ignored and logged once by name,
as vLLM does. Completions answer ``logprobs`` and ``echo``
(:mod:`softprompt.serving.openai.completions`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from softprompt.serving.gate import Gate
from softprompt.serving.openai.chat import add_chat
from softprompt.serving.openai.completions import add_completions
from softprompt.serving.service import Service


def add_completion_routes(app: FastAPI, service: Service, gate: Gate) -> None:
    """``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [name for name in service.tasks.names() if name in service.tasks.writers]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "softprompt"} for n in names],
        }

    add_completions(app, service, gate)
    add_chat(app, service, gate)
