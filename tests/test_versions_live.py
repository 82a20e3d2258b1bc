"""Task versions on a running server: a shadow candidate runs beside the live version (answers
captured, never returned), a canary answers its share, promote and rollback swap atomically,
survive a restart and fail no request (the tiny random Llama's two tasks, and a second
classifier trained with another seed as the candidate)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from softprompt.cli import main
from softprompt.lifecycle.store import Store, requests
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.serving.registry import artifact_version, load_task, load_tasks

from .conftest import NEGATIVE, POSITIVE, make_tiny_llama, write_jsonl
from .helpers import wait_until

TEXTS = ["a great movie", "dull and boring", "superb", "awful"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, served_tasks):
    """The two served tasks, and a second sentiment artifact (another seed: other weights)."""
    root = tmp_path_factory.mktemp("versions")
    tasks = served_tasks
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    data = write_jsonl(root / "reviews2.jsonl", rows)
    run = ["train", f"backbone={tiny_llama_dir}", f"data.train={data}", f"data.dev={data}", "prompt.init=vocab"]
    run += ["template={soft:2}Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    assert main([*run, "train.max_steps=3", "train.lr=0.3", "seed=7", f"out={root / 'candidate'}", "--quiet"]) == 0
    return tasks, root / "candidate"


@pytest.fixture
def served(trained, tmp_path):
    tasks, candidate = trained
    root = tmp_path / "served"
    shutil.copytree(tasks, root)
    shutil.copytree(candidate, tmp_path / "incoming" / "sentiment-v2")
    return root


def server(tiny_backbone, served, capture: str | None = None, **settings) -> TestClient:
    roots = (str(served.parent / "incoming"),)
    settings = ServeSettings(max_wait_ms=1, capture=capture, artifacts_roots=roots, **settings)
    return TestClient(create_app(Service(tiny_backbone, served), settings))


def classify(client, texts=TEXTS) -> dict:
    answer = client.post("/v1/classify", json={"task": "sentiment", "texts": texts})
    assert answer.status_code == 200, answer.text
    return answer.json()


def rows(db) -> list[dict]:
    with Store(str(db), create=False).engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(requests).order_by(requests.c.seq)).mappings()]


def test_a_shadow_runs_beside_the_live_version_and_is_never_returned(tiny_backbone, served, tmp_path):
    db = tmp_path / "capture.db"
    candidate = served.parent / "incoming" / "sentiment-v2"
    live, other = artifact_version(served / "sentiment"), artifact_version(candidate)
    with server(tiny_backbone, served, str(db)) as client:
        alone = classify(client)
        posted = client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate)})
        shadowed = classify(client)
        for result, labelled in zip(shadowed["results"][:2], ["positive", "negative"], strict=True):
            assert client.post("/v1/feedback", json={"id": result["id"], "label": labelled}).status_code == 200
        shown = client.get("/v1/tasks/sentiment").json()
    assert posted.status_code == 200 and posted.json()["candidate"]["mode"] == "shadow"
    # The live answers are what they were without a shadow: same labels, same probabilities.
    for before, after in zip(alone["results"], shadowed["results"], strict=True):
        assert after["version"] == live and "shadow" not in after
        assert after["label"] == before["label"]
        assert after["scores"] == pytest.approx(before["scores"], abs=1e-5)
    captured = rows(db)
    shadows = [r for r in captured if r["role"] == "shadow"]
    assert [r["id"] for r in shadows] == [r["id"] for r in shadowed["results"]]
    assert {r["version"] for r in shadows} == {other}
    candidate_shown = shown["candidate"]
    assert candidate_shown["version"] == other and candidate_shown["compared"] == len(TEXTS)
    assert 0 <= candidate_shown["agreement"] <= 1
    assert candidate_shown["on_feedback"]["n"] == 2
    assert {"live_accuracy", "candidate_accuracy"} <= set(candidate_shown["on_feedback"])
    assert shown["live"]["version"] == live and shown["previous"] is None


def test_a_canary_answers_its_share_and_each_capture_names_the_version(tiny_backbone, served, tmp_path):
    db = tmp_path / "capture.db"
    candidate = served.parent / "incoming" / "sentiment-v2"
    with server(tiny_backbone, served, str(db)) as client:
        assert (
            client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0}).status_code == 200
        )
        answered = classify(client)
    other = artifact_version(candidate)
    assert {r["version"] for r in answered["results"]} == {other}
    assert {r["version"] for r in rows(db)} == {other} and {r["role"] for r in rows(db)} == {"served"}


def test_promote_and_rollback_swap_live_and_survive_a_restart(tiny_backbone, served):
    candidate = served.parent / "incoming" / "sentiment-v2"
    first, second = artifact_version(served / "sentiment"), artifact_version(candidate)
    with server(tiny_backbone, served) as client:
        assert client.post("/v1/tasks/sentiment/promote").status_code == 409  # nothing to promote
        assert client.post("/v1/tasks/sentiment/rollback").status_code == 409  # nothing to roll back to
        assert (
            client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 0.5}).status_code == 200
        )
        promoted = client.post("/v1/tasks/sentiment/promote").json()
        assert promoted["live"]["version"] == second and promoted["candidate"] is None
        assert {r["version"] for r in classify(client)["results"]} == {second}
    shutil.rmtree(candidate)  # the server kept its own copy
    record = json.loads((served / ".versions" / "live.json").read_text())
    assert record["tasks"]["sentiment"]["previous"] == "sentiment"
    with server(tiny_backbone, served) as client:  # a restart serves what was live
        assert {r["version"] for r in classify(client)["results"]} == {second}
        rolled = client.post("/v1/tasks/sentiment/rollback").json()
        assert rolled["live"]["version"] == first and rolled["previous"] is None
        assert client.post("/v1/tasks/sentiment/rollback").status_code == 409
    with server(tiny_backbone, served) as client:
        assert {r["version"] for r in classify(client)["results"]} == {first}


def test_candidates_that_cannot_stand_beside_the_task_are_refused(tiny_backbone, served):
    with server(tiny_backbone, served) as client:
        shadow_without_capture = client.post("/v1/tasks/sentiment/candidate", json={"path": str(served / "sentiment")})
        other_kind = client.post("/v1/tasks/sentiment/candidate", json={"path": str(served / "polite"), "share": 1})
        unknown = client.post("/v1/tasks/nope/candidate", json={"path": str(served / "sentiment"), "share": 1})
        outside = client.post("/v1/tasks/sentiment/candidate", json={"path": "/etc", "share": 1})
        no_candidate = client.delete("/v1/tasks/sentiment/candidate")
        internal = client.post("/v1/classify", json={"task": "sentiment@candidate", "texts": ["x"]})
    assert shadow_without_capture.status_code == 400 and "--capture" in shadow_without_capture.json()["detail"]
    assert other_kind.status_code == 400 and "classification task" in other_kind.json()["detail"]
    assert unknown.status_code == 404 and outside.status_code == 403 and no_candidate.status_code == 409
    assert internal.status_code == 404


def test_a_candidate_for_another_backbone_is_refused(tiny_backbone, served, tmp_path):
    other = make_tiny_llama(tmp_path / "other-llama", seed=1)
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    data = write_jsonl(tmp_path / "reviews.jsonl", rows)
    run = ["train", f"backbone={other}", f"data.train={data}", f"data.dev={data}", "train.max_steps=1", "--quiet"]
    run += ["template={soft:2}Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    assert main([*run, f"out={served.parent / 'incoming' / 'elsewhere'}"]) == 0
    with server(tiny_backbone, served) as client:
        path = {"path": str(served.parent / "incoming" / "elsewhere"), "share": 1}
        refused = client.post("/v1/tasks/sentiment/candidate", json=path)
    assert refused.status_code == 400 and "backbone" in refused.json()["detail"]


def test_version_changes_need_the_admin_key(tiny_backbone, served):
    user, admin = {"Authorization": "Bearer u"}, {"Authorization": "Bearer a"}
    path = {"path": str(served.parent / "incoming" / "sentiment-v2"), "share": 1}
    with server(tiny_backbone, served, api_key="u", admin_key="a") as client:
        assert client.post("/v1/tasks/sentiment/candidate", json=path, headers=user).status_code == 403
        assert client.post("/v1/tasks/sentiment/candidate", json=path, headers=admin).status_code == 200
        assert client.post("/v1/tasks/sentiment/promote", headers=user).status_code == 403
        assert client.get("/v1/tasks/sentiment", headers=user).status_code == 200


def test_two_promotes_at_once_are_serialised_and_no_request_fails(tiny_backbone, served):
    candidate = served.parent / "incoming" / "sentiment-v2"
    statuses: list[int] = []
    stop = threading.Event()
    with server(tiny_backbone, served) as client:

        def load() -> None:
            while not stop.is_set():
                statuses.append(client.post("/v1/classify", json={"task": "sentiment", "texts": TEXTS[:2]}).status_code)

        hammer = threading.Thread(target=load)
        hammer.start()
        try:
            outcomes = []
            for _ in range(3):
                assert (
                    client.post(
                        "/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 0.5}
                    ).status_code
                    == 200
                )
                with ThreadPoolExecutor(2) as pool:
                    both = list(pool.map(lambda _: client.post("/v1/tasks/sentiment/promote").status_code, range(2)))
                outcomes.append(sorted(both))
                assert client.post("/v1/tasks/sentiment/rollback").status_code == 200
                time.sleep(0.05)  # pacing: the hammer's requests run between the rounds too
        finally:
            stop.set()
            hammer.join()
    assert outcomes == [[200, 409]] * 3
    assert statuses and set(statuses) == {200}


def test_a_generation_shadow_is_captured_beside_the_served_answer(tiny_backbone, served, tmp_path):
    db = tmp_path / "capture.db"
    shutil.copytree(served / "polite", served.parent / "incoming" / "polite-v2")
    with server(tiny_backbone, served, str(db)) as client:
        path = {"path": str(served.parent / "incoming" / "polite-v2")}
        assert client.post("/v1/tasks/polite/candidate", json=path).status_code == 200
        answer = client.post("/v1/generate", json={"task": "polite", "prompt": "shut up", "max_new_tokens": 3}).json()
        wait_until(lambda: len(rows(db)) >= 2, "the shadow's answer to be captured", every=0.05)
        shown = client.get("/v1/tasks/polite").json()
    served_row, shadow_row = rows(db)
    assert served_row["id"] == shadow_row["id"] == answer["id"] and shadow_row["role"] == "shadow"
    # Same artifact, same seed: the shadow wrote what the live version wrote.
    assert json.loads(shadow_row["output"]) == answer["completions"]
    assert shown["candidate"]["compared"] == 1 and shown["candidate"]["agreement"] == 1.0


def test_reload_keeps_the_candidate_and_the_promoted_version(tiny_backbone, served):
    candidate = served.parent / "incoming" / "sentiment-v2"
    second = artifact_version(candidate)
    with server(tiny_backbone, served) as client:
        client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0})
        client.post("/v1/tasks/sentiment/promote")
        client.post("/v1/tasks/sentiment/candidate", json={"path": str(served / "sentiment"), "share": 0.5})
        reloaded = client.post("/v1/tasks/reload")
        shown = client.get("/v1/tasks/sentiment").json()
    assert reloaded.status_code == 200
    assert shown["live"]["version"] == second  # the record, read again
    assert shown["candidate"]["version"] == artifact_version(served / "sentiment")  # still beside it


def test_a_change_of_the_task_folder_on_disk_wins_over_the_record(tiny_backbone, served, trained):
    """The operator replaced DIR/NAME while a promoted version was live: the folder is served, and
    the record forgets the task (a restart serves the folder too)."""
    candidate = served.parent / "incoming" / "sentiment-v2"
    with server(tiny_backbone, served, watch_s=0.2) as client:
        client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0})
        client.post("/v1/tasks/sentiment/promote")
        shutil.rmtree(served / "sentiment")
        shutil.copytree(trained[0] / "polite", served / "sentiment")  # another artifact, by hand
        wait_until(
            lambda: client.get("/v1/tasks/sentiment").json().get("kind") == "generate",
            "the watch to serve the replaced folder",
            every=0.1,
        )
    assert "sentiment" not in json.loads((served / ".versions" / "live.json").read_text())["tasks"]
    with server(tiny_backbone, served) as client:
        assert client.get("/v1/tasks/sentiment").json()["kind"] == "generate"


CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def test_the_openai_routes_answer_by_canary_and_shadow_too(tiny_backbone, served, tmp_path, monkeypatch):
    db = tmp_path / "capture.db"
    monkeypatch.setattr(tiny_backbone.tokenizer, "chat_template", CHAT_TEMPLATE)
    copy = served.parent / "incoming" / "polite-v2"
    shutil.copytree(served / "polite", copy)
    chat = {"model": "polite", "messages": [{"role": "user", "content": "shut up"}], "max_tokens": 3}
    with server(tiny_backbone, served, str(db)) as client:
        assert client.post("/v1/tasks/polite/candidate", json={"path": str(copy), "share": 1.0}).status_code == 200
        canary = client.post("/v1/completions", json={"model": "polite", "prompt": "go away", "max_tokens": 3}).json()
        assert client.post("/v1/tasks/polite/candidate", json={"path": str(copy)}).status_code == 200  # now a shadow
        whole = client.post("/v1/chat/completions", json=chat).json()
        streamed = client.post("/v1/chat/completions", json={**chat, "stream": True})
        wait_until(
            lambda: sum(r["role"] == "shadow" for r in rows(db)) >= 2, "the shadows' answers to be captured", every=0.05
        )
        shown = client.get("/v1/tasks/polite").json()
    by_id = {}
    for row in rows(db):
        by_id.setdefault(row["id"], {})[row["role"]] = row
    assert set(by_id[canary["id"]]) == {"served"}  # the canary answered; nothing ran beside it
    stream_id = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))["id"]
    for answer_id in (whole["id"], stream_id):
        pair = by_id[answer_id]
        assert pair["served"]["route"] == pair["shadow"]["route"] == "chat"
        # A copy of the live artifact, same seed: the shadow wrote what was served.
        assert json.loads(pair["shadow"]["output"]) == json.loads(pair["served"]["output"])
    assert shown["candidate"]["compared"] == 2 and shown["candidate"]["agreement"] == 1.0


def test_a_replaced_task_is_never_unknown_while_it_is_replaced(tiny_backbone, served, monkeypatch):
    """The event loop asks ``kind_of`` while the worker swaps versions (a promote, a rollback):
    at every step of ``put`` over an existing task, the task is still served (the race behind a
    404 seen in CI during a promote)."""
    tasks = load_tasks(served, tiny_backbone)
    replacement = load_task(served.parent / "incoming" / "sentiment-v2", tiny_backbone)
    seen: list[str | None] = []
    for method in ("put", "remove"):  # every change of the mixed batch looks at the task first
        original = getattr(type(tasks.mixed), method)

        def looking(self, *args, _original=original):
            seen.append(tasks.kind_of("sentiment"))
            return _original(self, *args)

        monkeypatch.setattr(type(tasks.mixed), method, looking)
    forget = tasks.prompt_caches.forget
    monkeypatch.setattr(
        tasks.prompt_caches, "forget", lambda name: (seen.append(tasks.kind_of("sentiment")), forget(name))
    )
    tasks.put("sentiment", replacement, "v2")
    assert seen and set(seen) == {"classify"}
    assert tasks.classifiers["sentiment"] is replacement and tasks.versions["sentiment"] == "v2"
    assert tasks.mixed.tasks["sentiment"] is replacement
