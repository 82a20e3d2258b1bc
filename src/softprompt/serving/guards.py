"""What keeps the server bounded and private: an optional API key, and a cap on request bodies.

Both are plain ASGI middleware, so they act before FastAPI reads or parses anything.
"""

from __future__ import annotations

import hmac
from typing import Any

from softprompt.serving.errors import error_body

OPEN_PATHS = ("/healthz",)  # liveness probes need no key


async def reply(
    send: Any, scope: dict, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a JSON error response in the shape the route's clients read (FastAPI's ``{"detail"}``,
    or OpenAI's ``{"error"}`` on its routes)."""
    code = {401: "invalid_api_key", 413: "request_too_large"}.get(status)
    body = error_body(scope["path"], status, detail, code=code)
    extra = headers or []
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class ApiKey:
    """401 unless the request carries ``Authorization: Bearer <key>`` (as OpenAI clients send it)."""

    def __init__(self, app: Any, key: str):
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.expected):
            challenge = [(b"www-authenticate", b"Bearer")]
            return await reply(
                send, scope, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'", challenge
            )
        return await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over ``limit`` bytes, declared (Content-Length) or streamed.

    The body is read here, at most ``limit`` bytes of it, and handed on whole: an exception
    raised while FastAPI reads would be turned into its own 400.
    """

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the limit of {self.limit:,} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await reply(send, scope, 413, message)
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] != "http.request":  # the client went away
                return None
            chunks.append(event.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await reply(send, scope, 413, message)
            if not event.get("more_body"):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()  # later events (a disconnect) come from the client
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)
