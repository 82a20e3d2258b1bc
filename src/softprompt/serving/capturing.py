"""The server's side of capture and feedback (``serve --capture DB``): every answer carries an
``id``; with capture on, a route stores its answers (:func:`keep`) before its response leaves,
and ``POST /v1/feedback`` attaches a label, a corrected output or a score to an answer by that
id (or labels a text of its own), stored before its 200."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field, model_validator

from softprompt.lifecycle.capture import Capture, StoreUnavailable
from softprompt.lifecycle.feedback import (
    CLASSIFY,
    GENERATE,
    FeedbackProblem,
    TaskShape,
    feedback_on,
    feedback_on_text,
    is_correct,
)
from softprompt.lifecycle.store import Captured
from softprompt.serving.gate import Gate
from softprompt.serving.requests import Text
from softprompt.serving.service import Service
from softprompt.serving.versions import candidate_key
from softprompt.serving.writing import WriteJob


def answer_id(prefix: str) -> str:
    """A new answer's id (``cls-…``, ``gen-…``; OpenAI's routes keep their ``cmpl-``/``chatcmpl-``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


Answer = tuple[str, Any, Any, str, str]  # id, input, output, the version that answered, role


async def keep(gate: Gate, route: str, task: str | None, answers: list[Answer], started: float) -> bool:
    """Capture the answers of one request, ``(id, input, output, version, role)`` each (role
    "served", or "shadow" for a candidate's answer that was not returned), when the server
    captures and the request is sampled; returns once they are committed, with whether they were
    captured."""
    capture: Capture | None = gate.capture
    if capture is None or not answers or not capture.sampled():
        return False
    latency_ms = 1000 * (time.perf_counter() - started)
    rows = [Captured(i, task or "", v, route, given, out, latency_ms, role) for i, given, out, v, role in answers]
    await capture.record(rows)
    return True


def shadow_generation(gate: Gate, job: WriteJob) -> asyncio.Future | None:
    """The job of the task's shadow candidate, started beside the live one (None: no shadow, or
    nowhere to keep its answers)."""
    if job.task is None or gate.capture is None or gate.service.versions.shadow(job.task) is None:
        return None
    return asyncio.ensure_future(gate.submit("generate", dataclasses.replace(job, task=candidate_key(job.task))))


def keep_shadow(
    gate: Gate, shadow: asyncio.Future, task: str, served: Answer, started: float, route: str = "generate"
) -> None:
    """Once the shadow's job is done, compare and capture its answer beside the served one (in
    the background: the response does not wait for it). A shadow that fails fails no request."""
    request_id, given, live_output, _, _ = served
    candidate = gate.service.versions.shadow(task)
    capture = gate.capture
    if candidate is None or capture is None:
        shadow.cancel()
        return

    async def follow() -> None:
        try:
            texts = await shadow
        except Exception:
            return
        candidate.compare(live_output, texts)
        latency_ms = 1000 * (time.perf_counter() - started)
        row = Captured(request_id, task, candidate.version, route, given, texts, latency_ms, "shadow")
        await capture.record([row])

    gate.in_background(follow())


def classified(results: list[dict[str, Any]]) -> list[Answer]:
    """A classification request's answers to capture, its shadow's beside them (taken out of
    the results: a shadow's answers are never returned)."""
    out: list[Answer] = []
    for result in results:
        output = {"label": result["label"], "scores": result["scores"]}
        out.append((result["id"], result["text"], output, result["version"], "served"))
        shadow = result.pop("shadow", None)
        if shadow is not None:
            output = {"label": shadow["label"], "scores": shadow["scores"]}
            out.append((result["id"], result["text"], output, shadow["version"], "shadow"))
    return out


class FeedbackRequest(BaseModel):
    """``{"id", "label"|"output"|"score"}`` on a served answer, or ``{"task", "text",
    "label"|"output"}`` for a text with no served request."""

    id: str | None = Field(None, min_length=1, max_length=80, description="the id of a served answer")
    task: str | None = Field(None, min_length=1, description="with text: a served task (no id)")
    text: Text | None = Field(None, min_length=1, description="with task: the input the label is for (no id)")
    label: Text | None = Field(None, min_length=1, description="a classification task's right label")
    output: Text | None = Field(None, min_length=1, description="a generation task's corrected text")
    score: float | None = Field(None, ge=-1, le=1, description="how good the served answer was, from -1 to 1")

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackRequest:
        given = [name for name in ("label", "output", "score") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of label, output or score (got {', '.join(given) or 'none'})")
        if self.id is None and (self.task is None or self.text is None):
            raise ValueError("give the id of a served answer, or a task and a text")
        if self.id is not None and (self.task is not None or self.text is not None):
            raise ValueError("give an id, or a task and a text, not both")
        return self


def task_shape(service: Service, task: str) -> TaskShape | None:
    """What served task ``task`` takes as feedback (None: not served)."""
    if not service.tasks.serves(task):
        return None
    if task in service.tasks.classifiers:
        return TaskShape(CLASSIFY, tuple(service.tasks.classifiers[task].task.labels))
    if task in service.tasks.writers:
        return TaskShape(GENERATE)
    return None


def add_feedback_route(app: FastAPI, service: Service, gate: Gate) -> None:
    """``POST /v1/feedback``."""

    @app.post("/v1/feedback")
    async def give_feedback(given: FeedbackRequest, http: Request) -> dict[str, Any]:
        capture = gate.capture
        if capture is None:
            raise HTTPException(400, "this server keeps no answers to give feedback on: start it with --capture DB")
        gate.within_limits([t for t in (given.text, given.label, given.output) if t is not None])
        try:
            if given.id is not None:
                answer = await capture.durable(capture.store.answer, given.id)
                shape = None if answer is None else task_shape(service, answer["task"])
                row = feedback_on(answer, given.id, shape, given.label, given.output, given.score)
            else:
                assert given.task is not None and given.text is not None
                shape = task_shape(service, given.task)
                if shape is None:
                    raise HTTPException(404, f"unknown task '{given.task[:100]}'; GET /v1/tasks lists them")
                row = feedback_on_text(given.task, given.text, shape, given.label, given.output, given.score)
            http.state.task = row.task
            number = await capture.durable(capture.store.add_feedback, row)
            correct = is_correct(dataclasses.asdict(row))
            if correct is not None and row.kind == CLASSIFY:
                service.drift.feedback(row.task, correct)
        except FeedbackProblem as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return {"feedback": number, "id": given.id, "task": row.task}


async def keep_with_shadow(
    gate: Gate, route: str, task: str | None, served: Answer, started: float, shadow: asyncio.Future | None
) -> None:
    """Capture a served answer and, when it was captured, its shadow's answer beside it (later)."""
    if await keep(gate, route, task, [served], started) and shadow is not None and task is not None:
        keep_shadow(gate, shadow, task, served, started, route)
    elif shadow is not None:
        shadow.cancel()
