"""What no client can do to the server: grow its metrics or memory with names it makes up, take a
route's word as a task name, or get back more of its input than a few hundred characters; and
what every client is told: errors in words, in the shape its library reads, with every limit a
flag (a classifier and a generation task on the tiny random Llama)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import string

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from softprompt.cli import build_parser
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.serving.registry import RESERVED_TASK_NAMES
from softprompt.serving.settings import setting_flags

from .helpers import wait_until


@pytest.fixture
def client(tiny_backbone, served_copy):
    settings = ServeSettings(max_wait_ms=1, artifacts_roots=(str(served_copy.parent),))  # "elsewhere" beside it
    with TestClient(create_app(Service(tiny_backbone, served_copy), settings)) as test_client:
        yield test_client


def series(text: str) -> set[tuple[str, tuple]]:
    """Every sample of a Prometheus text as (name, labels), without its value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


# ---- 1. labels only from what is served ---------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_unknown_names_leave_metrics_and_memory_flat(tiny_backbone, served_copy):
    """3,000 5,000-character unknown model names took /metrics to 290 MB before labels were
    limited to served tasks: now 10,000 random names change no series and no memory."""
    app = create_app(Service(tiny_backbone, served_copy), ServeSettings(max_wait_ms=1))
    rng = random.Random(0)

    def name() -> str:
        return "".join(rng.choices(string.ascii_letters, k=rng.choice([8, 200, 5_000])))

    async def scenario() -> tuple[list[str], list[float], list[int]]:
        transport = httpx.ASGITransport(app=app)
        scrapes, memory, statuses = [], [], set()
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for _round in range(11):  # the first 1,000 warm up; then 10,000 more
                for _ in range(1_000):
                    kind = rng.randrange(3)
                    if kind == 0:
                        answer = await http.post("/v1/classify", json={"task": name(), "texts": ["a"]})
                    elif kind == 1:
                        answer = await http.post("/v1/completions", json={"model": name(), "prompt": "a"})
                    else:
                        message = [{"role": "user", "content": "hi"}]
                        answer = await http.post("/v1/chat/completions", json={"model": name(), "messages": message})
                    statuses.add(answer.status_code)
                scrapes.append((await http.get("/metrics")).text)
                memory.append(resident_mb())
        return scrapes, memory, sorted(statuses)

    scrapes, memory, statuses = asyncio.run(scenario())
    assert statuses == [404]
    assert series(scrapes[1]) == series(scrapes[-1]), "a client's name became a label"
    assert len(scrapes[-1]) < 1.2 * len(scrapes[1]) and len(scrapes[-1]) < 100_000
    assert memory[-1] - memory[0] < 25, f"resident memory grew {memory[-1] - memory[0]:.0f} MB over 10,000 requests"
    assert 'task="unknown"' in scrapes[-1]


def test_served_task_labels_are_capped(tiny_backbone, served_copy):
    service = Service(tiny_backbone, served_copy)
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1, max_task_labels=1))) as http:
        assert http.post("/v1/classify", json={"task": "sentiment", "texts": ["a"]}).status_code == 200
        body = {"model": "polite", "prompt": "a", "max_tokens": 1}
        assert http.post("/v1/completions", json=body).status_code == 200
        text = http.get("/metrics").text
    labels = {dict(labels).get("task") for _, labels in series(text)}
    assert "sentiment" in labels and "other" in labels and "polite" not in labels


def test_the_access_log_records_only_served_names(client):
    import logging

    lines: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    access, kept = logging.getLogger("softprompt.access"), Kept()
    access.addHandler(kept)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        assert client.post("/v1/completions", json={"model": "x" * 5_000, "prompt": "a"}).status_code == 404
    finally:
        access.removeHandler(kept)
        access.setLevel(level)
    assert len(lines) == 1 and json.loads(lines[0])["task"] == "unknown" and len(lines[0]) < 200


# ---- 2. route words are not task names; what reload does ----------------------------------------


def test_route_words_cannot_name_a_task(client, served_copy):
    before = client.get("/v1/tasks").json()["tasks"]
    added = client.post("/v1/tasks/reload", json={"path": str(served_copy / "sentiment")})
    assert added.status_code == 400 and "'reload' is reserved" in added.json()["detail"]
    assert client.delete("/v1/tasks/reload").status_code == 400
    assert client.get("/v1/tasks").json()["tasks"] == before  # nothing was re-read or changed
    assert client.post("/v1/tasks/reload").status_code == 200  # the route itself still works


def test_a_folder_named_like_a_route_is_skipped_with_the_reason(tiny_backbone, served_copy):
    shutil.copytree(served_copy / "sentiment", served_copy / "reload")
    service = Service(tiny_backbone, served_copy)
    assert "reload" not in service.tasks.classifiers
    assert "reserved" in service.tasks.skipped["reload"] and "rename the folder" in service.tasks.skipped["reload"]


def test_reload_keeps_the_changes_made_through_the_api(client, served_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(served_copy / "sentiment", elsewhere / "sentiment")
    assert client.post("/v1/tasks/extra", json={"path": str(elsewhere / "sentiment")}).status_code == 200
    assert client.delete("/v1/tasks/polite").status_code == 200
    shutil.copytree(served_copy / "sentiment", served_copy / "new-on-disk")
    listing = client.post("/v1/tasks/reload").json()
    names = {task["name"] for task in listing["tasks"]}
    # The folder is read again (new-on-disk), the API's addition stays, its removal too.
    assert names == {"sentiment", "extra", "new-on-disk"}
    shutil.rmtree(elsewhere)
    listing = client.post("/v1/tasks/reload").json()
    assert "extra" not in {task["name"] for task in listing["tasks"]}
    assert "added through the API" in listing["skipped"]["extra"]
    # Adding it again through the API with a path that loads ends the API's removal too.
    assert client.post("/v1/tasks/polite", json={"path": str(served_copy / "polite")}).status_code == 200
    assert "polite" in {task["name"] for task in client.post("/v1/tasks/reload").json()["tasks"]}


# ---- 3. a watched folder that fails is listed ---------------------------------------------------


def test_a_watched_folder_that_fails_is_listed_as_skipped(tiny_backbone, served_copy):
    def wait_for(condition, what):
        wait_until(condition, f"the watch to {what}", every=0.05)

    with TestClient(
        create_app(Service(tiny_backbone, served_copy), ServeSettings(max_wait_ms=1, watch_s=0.05))
    ) as http:

        def skipped():
            return http.get("/v1/tasks").json()["skipped"]

        late = served_copy / "late"
        late.mkdir()
        (late / "task.json").write_text("{not json", encoding="utf-8")
        wait_for(lambda: "late" in skipped(), "list the broken folder")
        assert "late" in skipped()["late"]  # the reason names the folder
        late.joinpath("task.json").unlink()
        shutil.rmtree(late)
        shutil.copytree(served_copy / "sentiment", late)
        wait_for(lambda: "late" not in skipped(), "unlist the mended folder")
        assert http.post("/v1/classify", json={"task": "late", "texts": ["a"]}).status_code == 200
        broken = served_copy / "broken"
        broken.mkdir()
        (broken / "task.json").write_text("[]", encoding="utf-8")
        wait_for(lambda: "broken" in skipped(), "list a second broken folder")
        shutil.rmtree(broken)
        wait_for(lambda: "broken" not in skipped(), "unlist a removed broken folder")


# ---- 4, 7. OpenAI's error shape everywhere on its routes; messages in words --------------------


def test_every_error_on_an_openai_route_has_openai_shape(tiny_backbone, served_copy):
    settings_ = ServeSettings(max_wait_ms=1, api_key="k", max_body_bytes=1_000)
    with TestClient(create_app(Service(tiny_backbone, served_copy), settings_)) as http:
        for method, path in (("post", "/v1/completions"), ("post", "/v1/chat/completions"), ("get", "/v1/models")):
            refused = getattr(http, method)(path)
            error = refused.json()["error"]
            assert refused.status_code == 401 and "API key" in error["message"], refused.text
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        key = {"Authorization": "Bearer k"}
        big = http.post("/v1/completions", json={"model": "polite", "prompt": "x" * 2_000}, headers=key)
        assert big.status_code == 413 and "1,000 bytes" in big.json()["error"]["message"]
        wrong_method = http.get("/v1/completions", headers=key)
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]
        # The server's own routes keep FastAPI's shape.
        assert "detail" in http.post("/v1/classify").json()


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b'{"model": "polite", "prompt": 5}', "prompt: expected text or a list", "prompt"),
        (b'{"model": "polite", "prompt": ["a", "\\ud800"]}', "prompt[1]: not valid Unicode", "prompt[1]"),
        (b'{"model": "polite", "prompt": "a", "max_tokens": "many"}', "max_tokens: expected an integer", "max_tokens"),
        (b'{"model": "polite",, }', "the body is not valid JSON at character 1", None),
        (b"[1, 2]", "the body: expected a JSON object", None),
    ],
)
def test_openai_errors_name_the_field_in_words(client, body, message, param):
    answer = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["message"].startswith(message) and error["param"] == param, error
    for internal in ("function-after", "encodable", "JSON decode error", "list["):
        assert internal not in error["message"]


# ---- 5. chat content as a list of parts ---------------------------------------------------------


def test_chat_takes_text_parts_and_refuses_other_parts_by_type(tiny_backbone, served_tasks):
    service = Service(tiny_backbone, served_tasks)
    original = service.backbone.tokenizer.chat_template
    service.backbone.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as http:

        def chat(content):
            body = {"model": "polite", "messages": [{"role": "user", "content": content}], "max_tokens": 3}
            return http.post("/v1/chat/completions", json={**body, "temperature": 0})

        plain = chat("hello\nthere")
        parts = chat([{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}])
        assert plain.status_code == parts.status_code == 200, parts.text
        assert parts.json()["choices"] == plain.json()["choices"]
        assert parts.json()["usage"] == plain.json()["usage"]
        image = chat([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}])
        error = image.json()["error"]
        assert image.status_code == 400 and "'image_url'" in error["message"] and error["param"].endswith("content[1]")
        assert chat([{"type": "text"}]).status_code == 400
        assert chat([]).status_code == 400
    service.backbone.tokenizer.chat_template = original


# ---- 6. errors repeat little of the input -------------------------------------------------------


def test_an_error_repeats_at_most_a_little_of_the_input(client):
    many = client.post("/v1/classify", json={"task": "sentiment", "texts": ["word"] * 100_000})
    assert many.status_code == 422 and len(many.content) < 1_000, many.content[:300]
    assert "--max-texts" in many.text
    long = client.post("/v1/classify", json={"task": "sentiment", "texts": "y" * 50_000})
    assert long.status_code == 422 and len(long.content) < 1_000 and "50,000 characters" in long.text
    nested = client.post("/v1/classify", json={"task": "sentiment", "texts": [["z" * 300] * 300]})
    assert nested.status_code == 422 and len(nested.content) < 2_000
    model = client.post("/v1/completions", json={"model": "m" * 20_000, "prompt": "a"})
    assert model.status_code == 404 and len(model.content) < 1_000


# ---- 8, 9. every limit a flag; a request of the wrong kind is a 400 ----------------------------


def test_every_limit_is_a_serve_flag_and_named_when_crossed(tiny_backbone, served_copy):
    serve = next(
        action.choices["serve"] for action in build_parser()._actions if getattr(action, "choices", None)
    ).format_help()
    for flag, *_ in setting_flags():
        assert flag in serve
    limits = ServeSettings(max_wait_ms=1, max_texts=2, max_new_tokens=4, max_samples=2)
    with TestClient(create_app(Service(tiny_backbone, served_copy), limits)) as http:
        texts = http.post("/v1/classify", json={"task": "sentiment", "texts": ["a", "b", "c"]})
        assert texts.status_code == 422 and "at most 2" in texts.text and "--max-texts" in texts.text
        tokens = http.post("/v1/generate", json={"task": "polite", "prompt": "a", "max_new_tokens": 5})
        assert tokens.status_code == 422 and "--max-new-tokens" in tokens.text
        samples = http.post("/v1/generate", json={"task": "polite", "prompt": "a", "samples": 3})
        assert samples.status_code == 422 and "--max-samples" in samples.text
        n = http.post("/v1/completions", json={"model": "polite", "prompt": "a", "n": 3}).json()["error"]
        assert n["param"] == "n" and "--max-samples" in n["message"]
        fine = http.post("/v1/generate", json={"task": "polite", "prompt": "a", "max_new_tokens": 4, "samples": 2})
        assert fine.status_code == 200


def test_the_serving_guide_lists_every_limit():
    from pathlib import Path

    guide = (Path(__file__).parents[1] / "docs" / "serving-and-many-tasks.md").read_text(encoding="utf-8")
    for flag, *_ in setting_flags():
        assert f"`{flag}`" in guide, f"{flag} is missing from the serving guide's table of limits"


def test_a_completion_for_a_classifier_is_a_400_saying_so(client):
    answer = client.post("/v1/completions", json={"model": "sentiment", "prompt": "a"})
    error = answer.json()["error"]
    assert answer.status_code == 400 and "classify task" in error["message"] and "/v1/classify" in error["message"]
    chat = client.post(
        "/v1/chat/completions", json={"model": "sentiment", "messages": [{"role": "user", "content": "a"}]}
    )
    assert chat.status_code == 400
    assert client.post("/v1/generate", json={"task": "sentiment", "prompt": "a"}).status_code == 400
    assert client.post("/v1/classify", json={"task": "polite", "texts": ["a"]}).status_code == 400


# ---- properties: random names, reserved words, large inputs ------------------------------------

names = st.text(min_size=1, max_size=300)


@given(task=names, model=names)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_any_name_a_client_sends_stays_out_of_the_metrics(client, task, model):
    client.post("/v1/classify", json={"task": task, "texts": ["a"]})
    client.post("/v1/completions", json={"model": model, "prompt": "a", "max_tokens": 1})
    labels = {dict(found).get("task") for _, found in series(client.get("/metrics").text)}
    assert labels <= {None, "", "unknown", "sentiment", "polite"}


@given(
    word=st.sampled_from(sorted(RESERVED_TASK_NAMES)), body=st.dictionaries(st.text(max_size=10), st.text(max_size=10))
)
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_reserved_word_never_becomes_a_task(client, served_copy, word, body):
    client.post(f"/v1/tasks/{word}", json={"path": str(served_copy / "sentiment"), **body})
    client.delete(f"/v1/tasks/{word}")
    assert word not in {task["name"] for task in client.get("/v1/tasks").json()["tasks"]}


@given(value=st.recursive(st.text(max_size=2_000) | st.integers(), lambda inner: st.lists(inner, max_size=400)))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_no_error_repeats_a_large_input(client, value):
    for path, body in (
        ("/v1/classify", {"task": "sentiment", "texts": value}),
        ("/v1/generate", {"prompt": value, "max_new_tokens": 1}),
        ("/v1/completions", {"model": "polite", "prompt": value, "max_tokens": value}),
    ):
        answer = client.post(path, json=body)
        if answer.status_code >= 400:
            assert len(answer.content) < 4_000, (path, answer.status_code, answer.content[:200])
