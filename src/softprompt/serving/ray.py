"""softprompt on Ray Serve: the same HTTP API, served by replicas that each hold one backbone and
run softprompt's own engine, behind Ray's HTTP proxy.

Each replica is the whole server of ``softprompt serve`` (:func:`~softprompt.serving.app.create_app`):
its batches still mix every task's rows, because Ray hands it requests one by one (Ray's own
``@serve.batch`` would split batches by model id) and its engine batches them. The replicas share
the served folder: a task added or removed through any replica is written to the folder, which
every replica watches (:mod:`softprompt.serving.shared_folder`), and they capture into one
database (PostgreSQL; SQLite only with one replica).

Start it with ``softprompt serve DIR --ray --replicas N`` (which starts a local Ray cluster, or joins
one with ``--ray-address``), or with Ray's own tooling::

    serve run softprompt.serving.ray:app artifacts=DIR backbone=smollm2-135m replicas=2
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from softprompt.core.prompt_caches import PromptCacheSettings
from softprompt.errors import SoftpromptError
from softprompt.serving.settings import ServeSettings

DEPLOYMENT = "softprompt"
REPLICA_HEADER = "x-softprompt-replica"  # every answer names the replica that gave it
WATCH_S = 1.0  # how often a replica looks at the shared folder when the command line says nothing


@dataclass
class ReplicaConfig:
    """What each replica is started with (plain values: Ray sends it to every replica)."""

    artifacts: str
    backbone: str = "smollm2-135m"
    device: str = "auto"
    precision: str = "auto"
    threads: int = 1  # torch threads per replica, and the CPUs Ray reserves for it
    prompt_caches: dict[str, Any] = field(default_factory=dict)  # PromptCacheSettings' fields
    settings: dict[str, Any] = field(default_factory=dict)  # ServeSettings' fields
    replicas: int = 1  # how many replicas the application runs (set by `application`)

    def serve_settings(self) -> ServeSettings:
        given = {**self.settings, "shared_folder": True, "replicas": self.replicas}
        given["artifacts_roots"] = tuple(given.get("artifacts_roots", ()))
        if not given.get("watch_s"):
            given["watch_s"] = WATCH_S
        return ServeSettings(**given)


def check_replicas(settings: ServeSettings, replicas: int) -> None:
    """Refuse what several replicas cannot share, in one line."""
    if replicas < 1:
        raise SoftpromptError(f"--replicas: expected a number >= 1, got {replicas}")
    capture = settings.capture
    if replicas > 1 and capture is not None and "://" not in capture:
        raise SoftpromptError(
            f"--capture {capture}: an SQLite file is one machine's; {replicas} replicas (maybe on several "
            "machines) capture into one PostgreSQL database: give --capture postgresql+psycopg://..."
        )


class SoftpromptReplica:
    """One replica: a backbone, the served tasks and the engine, as ``softprompt serve`` runs them."""

    def __init__(self, config: dict[str, Any]):
        import torch

        from softprompt.backbones import load_backbone
        from softprompt.serving.app import Service, create_app

        setup = ReplicaConfig(**config)
        torch.set_num_threads(setup.threads)
        backbone = load_backbone(setup.backbone, setup.device, setup.precision)
        backbone.require_token_prediction("serve")
        service = Service(backbone, setup.artifacts, PromptCacheSettings(**setup.prompt_caches))
        context = serve.get_replica_context()
        name = context.replica_id.unique_id if context is not None else str(os.getpid())
        # Names of our own: Ray's wrapper class defines `app` and others on the same object.
        self.replica_name = name
        served = create_app(service, setup.serve_settings(), health=self.health)
        self.softprompt_app = NamedReplica(served, name, self.hold_task)

    def __serve_build_asgi_app__(self) -> Any:
        return self.softprompt_app

    async def health(self) -> dict[str, Any]:
        """``/healthz`` under Ray: this replica's name and the application's replicas by state, as
        Ray's controller sees them (``{"RUNNING": 2}``; a replica being replaced shows as STARTING)."""
        status = await asyncio.to_thread(serve.status)
        deployment = status.applications[DEPLOYMENT].deployments[DEPLOYMENT]
        states = {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}
        return {"replica": self.replica_name, "replicas": states}

    @serve.multiplexed(max_num_models_per_replica=-1)
    async def hold_task(self, task: str) -> str:
        """Tell Ray's router that this replica holds ``task`` (a request's ``serve_multiplexed_model_id``
        header), so that its later requests come here, where its prompt cache is warm. Nothing to
        load: every replica serves every task; the prompt cache's own LRU decides what stays warm."""
        return task


Deployment = serve.deployment(name=DEPLOYMENT, max_ongoing_requests=256, health_check_period_s=5)(
    serve.ingress()(SoftpromptReplica)
)


class NamedReplica:
    """The ASGI app, each response carrying the replica's name (``x-softprompt-replica``), each
    request that names its task in ``serve_multiplexed_model_id`` marking the task as held here."""

    def __init__(self, app: Any, name: str, hold_task: Callable[[str], Awaitable[str]]):
        self.app, self.name, self.hold_task = app, name, hold_task

    async def __call__(self, scope: MutableMapping, receive: Callable, send: Callable[[Any], Awaitable]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if task := serve.get_multiplexed_model_id():
            await self.hold_task(task)
        metrics = scope.get("path") == "/metrics"
        started: list[MutableMapping] = []

        async def named(message: MutableMapping) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((REPLICA_HEADER.encode(), self.name.encode()))
                if metrics:  # sent with the body, whose length changes
                    started.append(message)
                    return
            elif metrics and message["type"] == "http.response.body" and started:
                message["body"] = labelled(message.get("body", b""), self.name)
                start = started.pop()
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                start["headers"] = [*headers, (b"content-length", str(len(message["body"])).encode())]
                await send(start)
            await send(message)

        await self.app(scope, receive, named)


def labelled(exposition: bytes, replica: str) -> bytes:
    """Prometheus text with ``replica="NAME"`` added to every sample's labels, so that series from
    different replicas stay apart where they are collected together."""
    lines = []
    for line in exposition.decode().splitlines():
        if line and not line.startswith("#"):
            name, brace, rest = line.partition("{")
            if brace:
                line = f'{name}{{replica="{replica}",{rest}'
            else:
                metric, _, value = line.partition(" ")
                line = f'{metric}{{replica="{replica}"}} {value}'
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def application(config: ReplicaConfig, replicas: int) -> Any:
    """The Ray Serve application: ``replicas`` replicas of :class:`SoftpromptReplica`."""
    check_replicas(config.serve_settings(), replicas)
    options = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": config.threads}}
    return Deployment.options(**options).bind(dataclasses.asdict(dataclasses.replace(config, replicas=replicas)))


def app(args: dict[str, str]) -> Any:
    """The builder ``serve run softprompt.serving.ray:app artifacts=DIR [backbone=NAME]
    [replicas=N] [threads=N] [capture=URL]`` calls with its ``key=value`` arguments."""
    known = {"artifacts", "backbone", "replicas", "threads", "capture", "device", "precision"}
    unknown = sorted(set(args) - known)
    if unknown or "artifacts" not in args:
        raise SoftpromptError(
            f"serve run softprompt.serving.ray:app takes artifacts=DIR and {sorted(known)}; got {args}"
        )
    settings = {"capture": args["capture"]} if "capture" in args else {}
    config = ReplicaConfig(
        artifacts=os.path.abspath(args["artifacts"]),
        backbone=args.get("backbone", "smollm2-135m"),
        device=args.get("device", "auto"),
        precision=args.get("precision", "auto"),
        threads=int(args.get("threads", 1)),
        settings=settings,
    )
    return application(config, int(args.get("replicas", 1)))


def start(config: ReplicaConfig, replicas: int, host: str, port: int, address: str | None = None) -> None:
    """Start (or join, at ``address``) a Ray cluster, its HTTP proxy at ``host:port``, and the
    application; returns once every replica is ready."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(config, replicas), name=DEPLOYMENT, route_prefix="/")


def serve_until_stopped(config: ReplicaConfig, replicas: int, host: str, port: int, address: str | None) -> None:
    """``softprompt serve DIR --ray``: start, then serve until Ctrl-C, then shut the application down."""
    import ray

    started_ray = not ray.is_initialized()
    try:
        start(config, replicas, host, port, address)
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init's own: stopped like Ctrl-C (Kubernetes, kill)
        print(f"serving on Ray with {replicas} replica(s) at http://{host}:{port} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            if started_ray:
                ray.shutdown()  # the local cluster this command started (a joined one keeps running)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
