"""What the server measures: ``GET /metrics`` in Prometheus' text format (prometheus-client),
and one structured (JSON) access-log line per request on the ``softprompt.access`` logger.

Per route and task: requests by status and their latency; for generation, the time to the first
token and the tokens generated; for the worker, the queue depth, the rows of each batch and the
rows being decoded; for the classifiers' prompt caches, hits, misses, entries and bytes. Each app
has its own registry, so several servers (or tests) in one process do not collide.

Labels come only from what the server itself serves, never from a client's string: a task label
is a served task's name (at most ``max_task_labels`` of them; later ones share ``other``), and a
request naming a task that is not served is counted under ``unknown``. So no client can grow
``/metrics`` or the access log, whatever names it sends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

access_log = logging.getLogger("softprompt.access")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


UNKNOWN_TASK = "unknown"  # the label of every request naming a task that is not served
OTHER_TASKS = "other"  # the label of served tasks beyond the cap


class TaskLabels:
    """The task label of a request: its task's name if served and among the first ``cap`` served
    names labelled so far, ``other`` for served tasks past the cap, ``unknown`` otherwise."""

    def __init__(self, served: Callable[[str], bool], cap: int):
        self.served, self.cap = served, cap
        self.named: set[str] = set()

    def __call__(self, task: str) -> str:
        if not task:
            return ""
        if task in self.named:
            return task
        if not self.served(task):
            return UNKNOWN_TASK
        if len(self.named) >= self.cap:
            return OTHER_TASKS
        self.named.add(task)
        return task


class ServerMetrics:
    """The server's instruments, in a registry of their own; ``task_label`` names a request's
    task in the labels (see :class:`TaskLabels`)."""

    def __init__(self, task_label: Callable[[str], str] | None = None) -> None:
        self.task_label = task_label or (lambda task: task)
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "softprompt_requests",
            "HTTP requests by route, task and status",
            ["route", "task", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "softprompt_request_seconds",
            "request latency",
            ["route", "task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "softprompt_time_to_first_token_seconds",
            "from a generation request's arrival to the end of the decoding slice that gave its first token",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter("softprompt_generated_tokens", "tokens generated", ["task"], registry=registry)
        self.batch_rows = Histogram(
            "softprompt_batch_rows",
            "rows per model call: texts of a classification batch, rows of a decoding slice",
            ["kind"],
            buckets=ROW_BUCKETS,
            registry=registry,
        )

    def watch(self, name: str, help_text: str, value: Callable[[], float]) -> None:
        """A gauge read when scraped (queue depth, rows being decoded...)."""
        Gauge(name, help_text, registry=self.registry).set_function(value)

    def generated(self, task: str, tokens: int, first_after: float | None) -> None:
        """Tokens generated for ``task``, and the time to its first token when these are a job's first."""
        label = self.task_label(task)
        self.tokens.labels(label).inc(tokens)
        if first_after is not None:
            self.first_token.labels(label).observe(first_after)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_request(self, route: str, task: str, status: int, seconds: float) -> None:
        """Count a finished request; ``task`` is what the request named (labelled by ``task_label``)."""
        task = self.task_label(task)
        self.requests.labels(route, task, str(status)).inc()
        self.latency.labels(route, task).observe(seconds)
        access_log.info(
            json.dumps({"route": route, "task": task, "status": status, "ms": round(1000 * seconds, 1)}, sort_keys=True)
        )


class PromptCacheCollector(Collector):
    """The classifiers' prompt-cache counters, read from the store when scraped (the store is
    replaced on reload, so it is looked up each time)."""

    def __init__(self, store: Callable[[], Any]):
        self.store = store

    def collect(self) -> Iterator[Any]:
        store = self.store()
        hits, read, misses, entries, size = (
            (0, 0, 0, 0, 0)
            if store is None
            else (store.hits, store.folder.reads if store.folder else 0, store.misses, len(store), store.bytes)
        )
        yield CounterMetricFamily("softprompt_prompt_cache_hits", "prompt caches found kept", value=hits)
        yield CounterMetricFamily(
            "softprompt_prompt_cache_folder_hits", "prompt caches read from --prompt-cache-dir", value=read
        )
        yield CounterMetricFamily("softprompt_prompt_cache_misses", "prompt caches computed", value=misses)
        yield GaugeMetricFamily("softprompt_prompt_cache_entries", "prompt caches kept", value=entries)
        yield GaugeMetricFamily("softprompt_prompt_cache_bytes", "memory of the kept prompt caches", value=size)


class RequestMetrics:
    """ASGI middleware: times every request to its last body byte and records it with its route
    template (``/v1/tasks/{name}``, not the raw path) and its task (what the endpoint put in
    ``request.state.task``)."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                task = scope.get("state", {}).get("task", "")
                self.metrics.observe_request(path, task, status[0], time.perf_counter() - started)

        try:
            return await self.app(scope, receive, sending)
        except Exception:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                route, scope.get("state", {}).get("task", ""), 500, time.perf_counter() - started
            )
            raise


class DriftCollector(Collector):
    """Per served classifier, read when scraped: its window's mean confidence and label shares,
    its feedback accuracy, its drift score against its artifact's reference and the alert
    (:mod:`softprompt.lifecycle.drift`). Only served tasks are named, through ``task_label``."""

    def __init__(self, monitor: Callable[[], Any], serves: Callable[[str], bool], task_label: Callable[[str], str]):
        self.monitor, self.serves, self.task_label = monitor, serves, task_label

    def collect(self) -> Iterator[Any]:
        monitor = self.monitor()
        confidence = GaugeMetricFamily(
            "softprompt_task_confidence", "mean top-label probability of the last answers", labels=["task"]
        )
        shares = GaugeMetricFamily(
            "softprompt_task_label_share", "share of each label in the last answers", labels=["task", "label"]
        )
        accuracy = GaugeMetricFamily(
            "softprompt_task_feedback_accuracy",
            "share of the last judged answers that feedback called right",
            labels=["task"],
        )
        drift = GaugeMetricFamily(
            "softprompt_task_drift", "PSI of the last answers against the artifact's dev split", labels=["task"]
        )
        alert = GaugeMetricFamily(
            "softprompt_task_drift_alert",
            "1 when the drift score is at or over serve --drift-threshold",
            labels=["task"],
        )
        for task, window in list(monitor.windows.items()):
            if not self.serves(task):
                continue
            label = self.task_label(task)
            mean = window.mean_confidence()
            if mean is not None:
                confidence.add_metric([label], mean)
                for name, share in window.label_shares().items():
                    shares.add_metric([label, name], share)
            judged = window.feedback_accuracy()
            if judged is not None:
                accuracy.add_metric([label], judged)
            score = window.score()
            if score is not None:
                drift.add_metric([label], score)
                alert.add_metric([label], float(monitor.alert(score)))
        yield from (confidence, shares, accuracy, drift, alert)
