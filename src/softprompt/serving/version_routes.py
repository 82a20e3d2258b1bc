"""The routes of task versions (:mod:`softprompt.serving.versions`): ``GET /v1/tasks/{name}``
(the versions, the shadow's agreement, each version's accuracy on feedback),
``POST``/``DELETE /v1/tasks/{name}/candidate``, ``POST /v1/tasks/{name}/promote`` and
``POST /v1/tasks/{name}/rollback``. The writes need the admin key when the server has one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParameter
from pydantic import BaseModel, Field

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.capture import StoreUnavailable
from softprompt.lifecycle.feedback import accuracy_by_version, shadow_comparison
from softprompt.serving.gate import TASK_NAME, Gate
from softprompt.serving.registry import artifact_version, load_task
from softprompt.serving.service import Service
from softprompt.serving.version_follow import RecordFollower, follow_record
from softprompt.serving.versions import VersionChange

TaskName = Annotated[str, PathParameter(pattern=TASK_NAME)]


class CandidateSource(BaseModel):
    path: str = Field(min_length=1, description="an artifact directory under the served folder or an --artifacts-root")
    share: float = Field(0.0, ge=0, le=1, description="0: a shadow (never answers); above: the share it answers")


def add_version_routes(app: FastAPI, service: Service, gate: Gate, follower: RecordFollower | None = None) -> None:
    """The routes above; ``follower``: the record this server follows (replicas sharing the folder)."""

    def served(name: str) -> None:
        if not service.tasks.serves(name):
            raise HTTPException(404, f"unknown task '{name}'; GET /v1/tasks lists them")

    async def caught_up() -> None:
        """Replicas sharing the folder: serve what the record says before changing it (a change
        made through another replica a moment ago is not missed)."""
        if follower is not None:
            await follow_record(follower, service, gate.submit)

    async def loaded(name: str, folder: Path) -> Any:
        """The artifact at ``folder`` loaded beside the worker (loading holds up no batch)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, load_task, folder, service.backbone)
        except SoftpromptError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/v1/tasks/{name}")
    async def versions(name: TaskName, http: Request) -> dict[str, Any]:
        served(name)
        http.state.task = name
        described = service.versions.describe(service.tasks, name)
        if gate.capture is not None:
            candidate = service.versions.candidates.get(name)
            store = gate.capture.store
            try:
                by_version = await gate.capture.durable(accuracy_by_version, store, name)
                if candidate is not None and candidate.share == 0:
                    live = described["live"]["version"]
                    compared = await gate.capture.durable(shadow_comparison, store, name, live, candidate.version)
                    described["candidate"]["on_feedback"] = compared
            except StoreUnavailable as exc:
                raise HTTPException(503, str(exc)) from None
            described["feedback"] = by_version
        return described

    @app.post("/v1/tasks/{name}/candidate")
    async def post_candidate(name: TaskName, source: CandidateSource, http: Request) -> dict[str, Any]:
        await caught_up()
        served(name)
        http.state.task = name
        if source.share == 0 and gate.capture is None:
            raise HTTPException(
                400, "a shadow's answers are only captured: start the server with --capture DB, or give a share > 0"
            )
        gate.confined(source.path)
        origin = Path(source.path)
        version = artifact_version(origin)
        loop = asyncio.get_running_loop()
        try:  # kept under the served folder: the path it came from may go away, a restart needs it
            folder = await loop.run_in_executor(None, service.versions.record.keep_copy, name, origin, version)
        except OSError as exc:
            raise HTTPException(400, f"path: cannot copy {origin}: {exc.strerror or exc}") from None
        model = await loaded(name, folder)
        return await gate.submit("versions", VersionChange("candidate", name, folder, model, source.share, version))

    @app.delete("/v1/tasks/{name}/candidate")
    async def drop_candidate(name: TaskName, http: Request) -> dict[str, Any]:
        await caught_up()
        http.state.task = name
        return await gate.submit("versions", VersionChange("drop", name))

    @app.post("/v1/tasks/{name}/promote")
    async def promote(name: TaskName, http: Request) -> dict[str, Any]:
        await caught_up()
        http.state.task = name
        return await gate.submit("versions", VersionChange("promote", name))

    @app.post("/v1/tasks/{name}/rollback")
    async def rollback(name: TaskName, http: Request) -> dict[str, Any]:
        await caught_up()
        served(name)
        http.state.task = name
        previous = service.versions.previous(name)
        if previous is None:
            raise HTTPException(409, f"task '{name}' has no previous version to roll back to")
        model = await loaded(name, previous)
        change = VersionChange("rollback", name, previous, model, version=artifact_version(previous))
        return await gate.submit("versions", change)
