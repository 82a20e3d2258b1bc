"""OpenAI-compatible routes, so OpenAI's clients and tools talk to a softprompt server unchanged:
``GET /v1/models`` (the generate tasks), ``POST /v1/completions`` and ``POST /v1/chat/completions``
(``model`` = a generate task's name).

Settings a request leaves out take the task's own (the decoding its artifact recorded: greedy
unless it sampled); temperature 0 is greedy. ``stop`` (a string or up to 4) ends a choice before
the first stop string, which is never shown, streaming included. ``stream: true`` answers with
Server-Sent Events, a chunk per decoding slice, then ``data: [DONE]``. Errors have OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``): an unknown model is 404; ``logprobs``,
``echo``, ``best_of``, penalties and tools are refused with a 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError

from softprompt.serving.openai.chat import add_chat
from softprompt.serving.openai.common import openai_error
from softprompt.serving.openai.completions import add_completions
from softprompt.serving.service import Gate, Service

OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions")


def add_completion_routes(app: FastAPI, service: Service, gate: Gate) -> None:
    """``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = list(service.tasks.generators)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "softprompt"} for n in names],
        }

    add_completions(app, service, gate)
    add_chat(app, service, gate)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """OpenAI's clients show the message of a 400 in their shape; FastAPI's 422 elsewhere."""
        if request.url.path not in OPENAI_ROUTES:
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0]
        where = [str(part) for part in first.get("loc", ())[1:]]  # without "body"
        message = f"{'.'.join(where)}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request")
        return openai_error(400, message, where[0] if where else None)
