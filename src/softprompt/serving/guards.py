"""What keeps the server bounded and private: an optional API key, and a cap on request bodies.

Both are plain ASGI middleware, so they act before FastAPI reads or parses anything.
"""

from __future__ import annotations

import hmac
from pathlib import Path
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


def is_admin_route(method: str, path: str) -> bool:
    """Whether a request changes what is served: any write under ``/v1/tasks`` (add, remove,
    reload, candidates, promote, rollback). Reading the task list is not."""
    return method != "GET" and (path == "/v1/tasks" or path.startswith("/v1/tasks/"))


class ApiKey:
    """401 unless the request carries ``Authorization: Bearer <key>`` (as OpenAI clients send it).

    With an ``admin`` key, the routes that change what is served (:func:`is_admin_route`) take
    only that key (403 for the inference key), and the others take either key; without one,
    every route takes ``key``. Either key may be None (that side is open).
    """

    def __init__(self, app: Any, key: str | None, admin: str | None = None):
        self.app = app
        self.key = None if key is None else key.encode()
        self.admin = None if admin is None else admin.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); keys are compared in constant time.
        token = token.strip() if scheme.lower() == b"bearer" else b""
        is_admin, is_user = self._matches(self.admin, token), self._matches(self.key, token)
        if self.admin is not None and is_admin_route(scope.get("method", "GET"), scope["path"]):
            if is_admin:
                return await self.app(scope, receive, send)
            if is_user:
                return await reply(send, scope, 403, "this route changes the served tasks: send the admin key")
            return await self._refuse(scope, send, "missing or wrong admin key: send 'Authorization: Bearer <key>'")
        if self.key is None or is_user or is_admin:
            return await self.app(scope, receive, send)
        return await self._refuse(scope, send, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    @staticmethod
    def _matches(expected: bytes | None, token: bytes) -> bool:
        return expected is not None and bool(token) and hmac.compare_digest(token, expected)

    @staticmethod
    async def _refuse(scope: dict, send: Any, message: str) -> None:
        await reply(send, scope, 401, message, [(b"www-authenticate", b"Bearer")])


def outside_roots(path: str, roots: list[str | Path]) -> str | None:
    """Why the server must not read ``path`` (None: it lies under one of ``roots``). Both are
    resolved first, so neither ``..`` nor a symbolic link can lead out of a root."""
    real = Path(path).expanduser().resolve()
    if any(real.is_relative_to(Path(root).expanduser().resolve()) for root in roots):
        return None
    return (
        f"path: {path} is outside the folders this server reads artifacts from (the served folder and "
        "serve --artifacts-root); put the artifact there"
    )


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
