"""Every route of the server fuzzed from its own OpenAPI schema with schemathesis: whatever a
client sends that the schema lets it (and much that it does not), no answer is a 5xx and every
answer the schema describes matches it. Examples are bounded so that this stays a few seconds
per route on the tiny random Llama (a classifier and a generation task served)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

from softprompt.serving.app import ServeSettings, Service, create_app  # noqa: E402
from softprompt.serving.registry import RESERVED_TASK_NAMES  # noqa: E402

from .helpers import live_server, train_served_tasks  # noqa: E402


class Raised:
    """ASGI wrapper that notes every exception escaping the app (uvicorn would log it with its
    traceback; the server runs with that logging off, and the test asserts there were none)."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.seen.append(f"{scope.get('method')} {scope.get('path')}: {exc!r}")
            raise


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir, tiny_backbone):
    """The app (a classifier and a generation task on the tiny Llama) and its live URL."""
    tasks = train_served_tasks(tmp_path_factory.mktemp("fuzzed"), tiny_llama_dir)
    app = create_app(Service(tiny_backbone, tasks), ServeSettings(max_wait_ms=1, timeout_s=30))
    raised = Raised(app)
    with live_server(raised, log_level="critical") as url:
        yield app, url, raised


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_dict(served[0].openapi())


schema = schemathesis.pytest.from_fixture("api_schema")


SERVED_LABELS = {"", "unknown", "other", "sentiment", "polite"}


@schemathesis.check
def errors_repeat_little_of_the_input(ctx, response, case):
    """An error never sends back a large input (a 100,000-item list once came back whole)."""
    if response.status_code >= 400 and len(response.content) > 4_000:
        raise AssertionError(f"a {response.status_code} of {len(response.content):,} bytes")


@schemathesis.check
def error_messages_name_no_library_internals(ctx, response, case):
    if response.status_code >= 400 and any(word in response.text for word in ("function-after", "JSON decode error")):
        raise AssertionError(f"library internals in a message: {response.text[:200]}")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_no_route_answers_a_server_error_or_breaks_its_schema(case, served):
    checks = [
        not_a_server_error,
        response_schema_conformance,
        errors_repeat_little_of_the_input,
        error_messages_name_no_library_internals,
    ]
    case.call_and_validate(base_url=served[1], checks=checks)
    assert not served[2].seen, served[2].seen  # nothing raised inside the app, even after its answer began
    # Whatever names the fuzzer sent, /metrics labels only what is served; and no route word
    # (a reserved name such as 'reload') ever became a task.
    metrics = httpx.get(f"{served[1]}/metrics").text
    labels = {s.labels.get("task") for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert labels - {None} <= SERVED_LABELS, labels - SERVED_LABELS
    names = {task["name"] for task in httpx.get(f"{served[1]}/v1/tasks").json()["tasks"]}
    assert not names & RESERVED_TASK_NAMES
