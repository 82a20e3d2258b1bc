"""The HTTP API (FastAPI): ``GET /healthz``, ``GET /v1/tasks``, ``POST /v1/classify``,
``POST /v1/generate``, ``POST /v1/tasks/reload``, ``POST /v1/tasks/{name}`` (serve an artifact
directory as that task, replacing one: ``{"path": DIR}``), ``DELETE /v1/tasks/{name}``, and
OpenAI's ``POST /v1/completions`` and ``GET /v1/models`` (:mod:`softprompt.serving.openai`); the
OpenAPI schema at ``/openapi.json``; ``GET /metrics`` for Prometheus (:mod:`softprompt.serving.metrics`).

Errors: an invalid body is 422 with the field named (FastAPI's validation), an unknown task 404,
a full queue 429 (retry later), a request of the wrong kind for its task 400, a missing or wrong
API key 401, a body, text or generation over its limit 413, a request over its time 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.lifecycle.capture import Capture
from softprompt.lifecycle.drift import DriftMonitor
from softprompt.lifecycle.store import Store
from softprompt.serving.capturing import (
    add_feedback_route,
    answer_id,
    classified,
    keep,
    keep_with_shadow,
    shadow_generation,
)
from softprompt.serving.engine import Engine
from softprompt.serving.errors import described, error_body, first_problem, is_openai_route
from softprompt.serving.executor import ServiceExecutor
from softprompt.serving.gate import TASK_NAME, Gate
from softprompt.serving.guards import ApiKey, BodyLimit
from softprompt.serving.metrics import DriftCollector, PromptCacheCollector, RequestMetrics, ServerMetrics, TaskLabels
from softprompt.serving.openai import add_completion_routes
from softprompt.serving.openai.common import openai_error
from softprompt.serving.registry import CLASSIFY, GENERATE, reserved_name_problem
from softprompt.serving.requests import ClassifyRequest, GenerateRequest, TaskSource
from softprompt.serving.scheduler import Scheduler
from softprompt.serving.service import Service, TaskChange
from softprompt.serving.settings import ServeSettings
from softprompt.serving.version_follow import RecordFollower, follow_record, keep_following
from softprompt.serving.version_routes import add_version_routes
from softprompt.serving.watch import FolderWatch, watch_folder


def create_app(
    service: Service,
    settings: ServeSettings | None = None,
    capture: Capture | None = None,
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The FastAPI application serving ``service``; with ``settings.capture`` (or ``capture``, a
    store already opened), its answers are captured and take feedback. ``health`` adds fields to
    ``GET /healthz`` (a replica's view of its application, under Ray)."""
    settings = settings or ServeSettings()
    if capture is None and settings.capture is not None:
        capture = Capture(Store(settings.capture), settings.capture_rate, settings.capture_max_rows)
    metrics = ServerMetrics(TaskLabels(service.serves, settings.max_task_labels))
    scheduler = Scheduler(
        continuous={"generate"},
        urgent={"tasks", "reload", "versions"},
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        queue_size=settings.queue_size,
        token_budget=settings.token_budget,
        max_token_wait=settings.max_token_wait_ms / 1000 or None,
    )
    executor = ServiceExecutor(
        worker_handlers(service), service, lambda kind, rows: metrics.batch_rows.labels(kind).observe(rows)
    )
    engine = Engine(scheduler, executor)
    service.stream.metrics = metrics
    metrics.watch("softprompt_queue_depth", "requests waiting for the worker", lambda: scheduler.waiting_count)
    metrics.watch("softprompt_generation_rows", "rows in the running decoding batch", lambda: service.stream.rows)
    metrics.watch("softprompt_tasks", "tasks served", lambda: len(service.tasks.names()))
    metrics.registry.register(PromptCacheCollector(lambda: service.tasks.prompt_caches))
    service.drift = DriftMonitor(settings.drift_window, settings.drift_threshold)
    metrics.registry.register(DriftCollector(lambda: service.drift, service.serves, metrics.task_label))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        watchers = [start_watching(service, gate, settings.watch_s)] if settings.watch_s > 0 else []
        if settings.shared_folder:  # the versions other replicas change, as the folder's record says
            watchers.append(asyncio.create_task(keep_following(follower, service, gate.submit, settings.watch_s)))
        else:  # once: a candidate recorded before a restart
            await follow_record(follower, service, gate.submit)
        yield
        for watcher in watchers:
            watcher.cancel()
        await engine.stop()  # Ctrl-C: in-flight requests are answered before the worker stops
        if capture is not None:
            await capture.close()  # their answers stored

    # No /docs or /redoc: their pages load scripts from a CDN; the schema stays at /openapi.json.
    app = FastAPI(
        title="softprompt",
        description="many prompt tasks on one frozen backbone",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.api_key or settings.admin_key:
        app.add_middleware(ApiKey, key=settings.api_key, admin=settings.admin_key)  # added last: checked first
    gate = Gate(service, engine, settings, capture)
    if capture is not None:
        failures = Counter(
            "softprompt_capture_failures", "answers that could not be captured", registry=metrics.registry
        )
        capture.on_failure = failures.inc
    add_routes(app, service, gate, health)
    add_feedback_route(app, service, gate)
    follower = RecordFollower(service.versions, shadows=capture is not None)
    add_version_routes(app, service, gate, follower if settings.shared_folder else None)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    add_completion_routes(app, service, gate)
    return app


def worker_handlers(service: Service) -> dict[str, Any]:
    """What the executor runs for each one-shot kind of request (generation is the service's
    running batch)."""
    return {
        "classify": service.classify,
        "score": service.score,  # logprobs and echo on completions
        "reload": service.reload,
        "tasks": service.change_tasks,
        "versions": service.change_versions,
    }


def start_watching(service: Service, gate: Gate, every: float) -> asyncio.Task:
    """Watch the artifacts folder (``serve --watch``), applying its changes through the same
    queue as ``POST``/``DELETE /v1/tasks/{name}``."""
    served = service.tasks.names()
    watch = FolderWatch(service.artifacts, served, service.note_skipped)
    return asyncio.create_task(watch_folder(watch, gate.change, every))


def add_routes(
    app: FastAPI, service: Service, gate: Gate, health: Callable[[], Awaitable[dict[str, Any]]] | None = None
) -> None:
    """The endpoints (see the module docstring)."""

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(service.tasks.names()), **(await health() if health else {})}

    @app.get("/v1/tasks")
    async def list_tasks() -> dict[str, Any]:
        skipped = dict(service.tasks.skipped)
        return {"backbone": service.backbone.name, "tasks": service.tasks.describe(), "skipped": skipped}

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest, http: Request) -> dict[str, Any]:
        http.state.task = request.task
        gate.at_most("texts", len(request.texts), gate.settings.max_texts, "--max-texts")
        gate.within_limits(request.texts)
        gate.known(request.task, CLASSIFY)
        started = time.perf_counter()
        results = await gate.submit("classify", request, size=len(request.texts), request=http)
        request_id = answer_id("cls")
        for index, result in enumerate(results):
            result["id"] = request_id if len(results) == 1 else f"{request_id}-{index}"
        await keep(gate, "classify", request.task, classified(results), started)
        return {"id": request_id, "task": request.task, "results": results}

    @app.post("/v1/generate")
    async def generate(request: GenerateRequest, http: Request) -> dict[str, Any]:
        http.state.task = request.task or ""
        gate.at_most("max_new_tokens", request.max_new_tokens, gate.settings.max_new_tokens, "--max-new-tokens")
        gate.at_most("samples", request.samples, gate.settings.max_samples, "--max-samples")
        gate.within_limits([request.prompt], (request.max_new_tokens or 0) * request.samples)
        if request.task is not None:
            gate.known(request.task, GENERATE)
        started, job = time.perf_counter(), request.job()
        key = service.versions.answering(request.task)[0] if request.task is not None else None
        version = service.versions.version_of(service.tasks, key) if key is not None else ""
        shadow = shadow_generation(gate, job)  # beside the live job, in the same decoding batch
        try:
            completions = await gate.submit("generate", dataclasses.replace(job, task=key), request=http)
        except BaseException:
            if shadow is not None:
                shadow.cancel()
            raise
        request_id = answer_id("gen")
        answer = (request_id, request.prompt, completions, version, "served")
        await keep_with_shadow(gate, "generate", request.task, answer, started, shadow)
        return {"id": request_id, "task": request.task, "prompt": request.prompt, "completions": completions}

    @app.post("/v1/tasks/reload")
    async def reload(http: Request) -> JSONResponse:
        # A body with a path is a client adding a task named "reload": refused, never a reload.
        body = await http.body()
        if body.strip() not in (b"", b"{}", b"null"):
            raise HTTPException(400, reserved_name_problem("reload") + "; POST /v1/tasks/reload takes no body")
        return JSONResponse(await gate.submit("reload", None))

    # After /v1/tasks/reload: routes match in order, and "reload" is not a task name.
    @app.post("/v1/tasks/{name}")
    async def put_task(
        name: Annotated[str, Path(pattern=TASK_NAME)], source: TaskSource, http: Request
    ) -> dict[str, Any]:
        http.state.task = name
        return await gate.change(TaskChange(name, source.path))

    @app.delete("/v1/tasks/{name}")
    async def delete_task(name: Annotated[str, Path(pattern=TASK_NAME)], http: Request) -> dict[str, Any]:
        http.state.task = name
        return await gate.change(TaskChange(name))


async def invalid_request(request: Request, exc: Exception) -> Response:
    """An invalid body: 400 in OpenAI's shape on its routes (its clients show that message), else
    FastAPI's 422 ``{"detail": [...]}``; either way in words, naming the field, and repeating at
    most a little of the input. Rendered as ASCII JSON, so an input that cannot be UTF-8 (a lone
    surrogate) is echoed escaped instead of failing the response."""
    assert isinstance(exc, RequestValidationError)
    errors = described(jsonable_encoder(exc.errors()))
    if is_openai_route(request.url.path):
        message, param = first_problem(errors)
        return openai_error(400, message, param)
    return Response(json.dumps({"detail": errors}, ensure_ascii=True), 422, media_type="application/json")


async def http_error(request: Request, exc: Exception) -> Response:
    """Any other HTTP error (404 route, 405 method...): in OpenAI's shape on its routes."""
    assert isinstance(exc, StarletteHTTPException)
    if not is_openai_route(request.url.path):
        return await http_exception_handler(request, exc)
    body = error_body(request.url.path, exc.status_code, str(exc.detail))
    return Response(body, exc.status_code, headers=exc.headers, media_type="application/json")
