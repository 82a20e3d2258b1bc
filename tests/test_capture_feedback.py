"""Capture and feedback (``serve --capture DB``, ``POST /v1/feedback``, ``softprompt feedback``):
every route's answers stored with their id and version before they leave, feedback checked
against its task and kept with its history, a failing store that fails no request, and the same
on a real PostgreSQL server (a classifier and a generation task on the tiny random Llama)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from softprompt.cli import main
from softprompt.lifecycle.store import Store, metadata, requests
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.serving.registry import artifact_version

from .helpers import logged_messages


def serve(tiny_backbone, served_tasks, db, **settings) -> TestClient:
    return TestClient(
        create_app(Service(tiny_backbone, served_tasks), ServeSettings(max_wait_ms=1, capture=db, **settings))
    )


def stored(db) -> list[dict]:
    with Store(str(db), create=False).engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(requests).order_by(requests.c.seq)).mappings()]


@pytest.mark.slow
def test_every_route_stores_its_answers_with_their_id_and_version(tiny_backbone, served_tasks, tmp_path, monkeypatch):
    db = tmp_path / "capture.db"
    monkeypatch.setattr(
        tiny_backbone.tokenizer, "chat_template", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    with serve(tiny_backbone, served_tasks, str(db)) as client:
        one = client.post("/v1/classify", json={"task": "sentiment", "texts": ["great film"]}).json()
        two = client.post("/v1/classify", json={"task": "sentiment", "texts": ["bad", "fine"]}).json()
        written = client.post("/v1/generate", json={"task": "polite", "prompt": "shut up", "max_new_tokens": 3}).json()
        completion = client.post("/v1/completions", json={"model": "polite", "prompt": "go away", "max_tokens": 2})
        chat = client.post(
            "/v1/chat/completions", json={"model": "polite", "messages": [{"role": "user", "content": "hi"}]}
        )
        streamed = client.post(
            "/v1/completions", json={"model": "polite", "prompt": "you fool", "max_tokens": 2, "stream": True}
        )
    assert one["results"][0]["id"] == one["id"]  # one text: the result's id is the request's
    assert [r["id"] for r in two["results"]] == [f"{two['id']}-0", f"{two['id']}-1"]
    rows = {row["id"]: row for row in stored(db)}
    sentiment = artifact_version(served_tasks / "sentiment")
    assert len(sentiment) == 64 and one["results"][0]["version"] == sentiment
    assert rows[one["id"]]["version"] == sentiment and rows[one["id"]]["route"] == "classify"
    assert json.loads(rows[one["id"]]["input"]) == "great film"
    assert json.loads(rows[one["id"]]["output"])["label"] == one["results"][0]["label"]
    assert json.loads(rows[f"{two['id']}-1"]["input"]) == "fine"
    assert json.loads(rows[written["id"]]["output"]) == written["completions"]
    assert rows[written["id"]]["version"] == artifact_version(served_tasks / "polite")
    assert json.loads(rows[completion.json()["id"]]["output"]) == [completion.json()["choices"][0]["text"]]
    assert json.loads(rows[chat.json()["id"]]["input"]) == [{"role": "user", "content": "hi"}]
    stream_id = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))["id"]
    assert rows[stream_id]["route"] == "completions" and rows[stream_id]["latency_ms"] > 0
    assert len(rows) == 7


def test_feedback_is_checked_stored_and_superseded_with_history(tiny_backbone, served_tasks, tmp_path):
    db = tmp_path / "capture.db"
    with serve(tiny_backbone, served_tasks, str(db)) as client:
        answer = client.post("/v1/classify", json={"task": "sentiment", "texts": ["great film"]}).json()
        written = client.post("/v1/generate", json={"task": "polite", "prompt": "shut up", "max_new_tokens": 3}).json()
        first = client.post("/v1/feedback", json={"id": answer["id"], "label": "negative"})
        later = client.post("/v1/feedback", json={"id": answer["id"], "label": "positive"})
        corrected = client.post("/v1/feedback", json={"id": written["id"], "output": "please stop"})
        scored = client.post("/v1/feedback", json={"id": written["id"], "score": 0.5})
        own = client.post("/v1/feedback", json={"task": "sentiment", "text": "dull", "label": "negative"})
        refused = {
            "unknown id": client.post("/v1/feedback", json={"id": "cls-nope", "label": "positive"}),
            "label not the task's": client.post("/v1/feedback", json={"id": answer["id"], "label": "neutral"}),
            "output for a classifier": client.post("/v1/feedback", json={"id": answer["id"], "output": "x"}),
            "label for a writer": client.post("/v1/feedback", json={"id": written["id"], "label": "positive"}),
            "unknown task": client.post("/v1/feedback", json={"task": "nope", "text": "a", "label": "positive"}),
            "two kinds": client.post("/v1/feedback", json={"id": answer["id"], "label": "positive", "score": 1}),
            "score out of range": client.post("/v1/feedback", json={"id": answer["id"], "score": 2}),
            "a 1 MB correction": client.post("/v1/feedback", json={"id": written["id"], "output": "x" * 1_000_000}),
            "a long correction": client.post("/v1/feedback", json={"id": written["id"], "output": "x" * 20_000}),
        }
    assert [r.status_code for r in (first, later, corrected, scored, own)] == [200] * 5
    assert {name: r.status_code for name, r in refused.items()} == {
        "unknown id": 404,
        "label not the task's": 400,
        "output for a classifier": 400,
        "label for a writer": 400,
        "unknown task": 404,
        "two kinds": 422,
        "score out of range": 422,
        "a 1 MB correction": 413,
        "a long correction": 413,
    }
    assert "positive, negative" in refused["label not the task's"].json()["detail"]
    store = Store(str(db), create=False)
    in_force = list(store.latest_feedback())
    assert [(r["task"], r["label"], r["output"], r["score"]) for r in in_force] == [
        ("sentiment", "positive", None, None),  # the later label superseded the first
        ("polite", None, None, 0.5),  # the score superseded the correction
        ("sentiment", "negative", None, None),
    ]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from feedback")).scalar() == 5  # the history stays
    assert in_force[0]["answer"] == answer["results"][0]["label"] and in_force[0]["text"] == "great film"


def test_feedback_without_capture_says_how_to_turn_it_on(tiny_backbone, served_tasks):
    with TestClient(create_app(Service(tiny_backbone, served_tasks), ServeSettings(max_wait_ms=1))) as client:
        answer = client.post("/v1/classify", json={"task": "sentiment", "texts": ["great"]}).json()
        refused = client.post("/v1/feedback", json={"id": answer["id"], "label": "positive"})
    assert answer["id"].startswith("cls-")  # ids are given without capture too
    assert refused.status_code == 400 and "--capture" in refused.json()["detail"]


@pytest.mark.slow
def test_sampling_and_the_row_cap(tiny_backbone, served_tasks, tmp_path):
    sampled, capped = tmp_path / "sampled.db", tmp_path / "capped.db"
    with serve(tiny_backbone, served_tasks, str(sampled), capture_rate=0.5) as client:
        for _ in range(40):
            client.post("/v1/classify", json={"task": "sentiment", "texts": ["ok"]})
    with serve(tiny_backbone, served_tasks, str(capped), capture_max_rows=5) as client:
        ids = [client.post("/v1/classify", json={"task": "sentiment", "texts": ["ok"]}).json()["id"] for _ in range(9)]
    assert 8 <= len(stored(sampled)) <= 32
    assert [row["id"] for row in stored(capped)] == ids[-5:]  # the oldest dropped


def failures(client) -> float:
    text = client.get("/metrics").text
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
    names = [s.name for f in text_string_to_metric_families(text) for s in f.samples]
    return found[names.index("softprompt_capture_failures_total")]


def test_a_failing_store_fails_no_request_and_capture_resumes(tiny_backbone, served_tasks, tmp_path):
    db = tmp_path / "capture.db"
    with serve(tiny_backbone, served_tasks, str(db)) as client, logged_messages("softprompt.lifecycle") as logged:
        client.post("/v1/classify", json={"task": "sentiment", "texts": ["before"]})
        with sqlite3.connect(db) as conn:  # the store breaks under the server (a table gone)
            conn.execute("drop table requests")
        during = [client.post("/v1/classify", json={"task": "sentiment", "texts": ["during"]}) for _ in range(3)]
        assert failures(client) == 3
        metadata.create_all(sa.create_engine(f"sqlite:///{db}"))  # repaired
        after = client.post("/v1/classify", json={"task": "sentiment", "texts": ["after"]}).json()
    assert [r.status_code for r in during] == [200] * 3
    assert [row["id"] for row in stored(db)] == [after["id"]]
    assert len([m for m in logged if "failed" in m]) == 1 and any("writing again" in m for m in logged)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("{tmp}/a-file/capture.db", "give a path in a folder you can write"),
        ("{tmp}/corrupt.db", "not an intact SQLite database"),
        ("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2", "is the database server running"),
        ("mysql+nodriver://x/y", "give a file path, or a URL"),
    ],
)
def test_a_store_that_cannot_open_is_one_line_before_the_backbone_loads(tmp_path, capsys, target, expected):
    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "corrupt.db").write_bytes(b"this is not a database" * 100)
    code = main(
        ["serve", "--artifacts", str(tmp_path), "--backbone", "nowhere", "--capture", target.format(tmp=tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_a_locked_store_at_start_is_one_line(tmp_path, capsys):
    db = tmp_path / "capture.db"
    Store(str(db)).close()
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    try:
        code = main(["serve", "--artifacts", str(tmp_path), "--backbone", "nowhere", "--capture", str(db)])
    finally:
        holder.rollback()
        holder.close()
    err = capsys.readouterr().err
    assert code == 2 and "locked" in err and "holds a lock" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_feedback_export_trains_and_stats_count(tiny_backbone, served_tasks, tmp_path, capsys, tiny_llama_dir):
    db = tmp_path / "capture.db"
    with serve(tiny_backbone, served_tasks, str(db)) as client:
        texts = ["great film", "awful plot", "lovely", "boring"]
        ids = [client.post("/v1/classify", json={"task": "sentiment", "texts": [t]}).json()["id"] for t in texts]
        for id_, label in zip(ids[:3], ["positive", "negative", "positive"], strict=True):
            assert client.post("/v1/feedback", json={"id": id_, "label": label}).status_code == 200
        client.post("/v1/feedback", json={"id": ids[3], "score": -1})
    out = tmp_path / "feedback.jsonl"
    assert main(["feedback", "export", "--db", str(db), "--task", "sentiment", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"text": "great film", "label": "positive"},
        {"text": "awful plot", "label": "negative"},
        {"text": "lovely", "label": "positive"},
    ]  # the negative score trains nothing
    assert main(["feedback", "stats", "--db", str(db), "--json"]) == 0
    capsys.readouterr()
    main(["feedback", "stats", "--db", str(db), "--json"])
    (figures,) = json.loads(capsys.readouterr().out)
    assert figures["requests"] == 4 and figures["feedback"] == 4 and figures["feedback_share"] == 1.0
    assert figures["version"] == artifact_version(served_tasks / "sentiment")
    train = [f"backbone={tiny_llama_dir}", f"data.train={out}", f"data.dev={out}", "train.max_steps=1", "--quiet"]
    assert (
        main(
            [
                "train",
                *train,
                "template={soft:2}{text}:",
                "verbalizer={positive: good, negative: bad}",
                f"out={tmp_path / 'again'}",
            ]
        )
        == 0
    )
    assert main(["feedback", "export", "--db", str(db), "--task", "polite", "--out", str(out)]) == 2
    assert "no feedback for this task" in capsys.readouterr().err
    assert main(["feedback", "stats", "--db", str(tmp_path / "none.db")]) == 2


@pytest.mark.slow
def test_capture_and_feedback_on_a_real_postgresql_server(tiny_backbone, served_tasks, postgres_url):
    with serve(tiny_backbone, served_tasks, postgres_url) as client:
        answer = client.post("/v1/classify", json={"task": "sentiment", "texts": ["great", "bad"]}).json()
        given = client.post("/v1/feedback", json={"id": answer["results"][1]["id"], "label": "negative"})
    assert given.status_code == 200
    store = Store(postgres_url, create=False)
    assert store.engine.dialect.name == "postgresql"
    assert {r["id"] for r in stored(postgres_url)} >= {r["id"] for r in answer["results"]}
    assert [r["label"] for r in store.latest_feedback("sentiment")][-1] == "negative"


def test_a_copy_of_the_served_folder_is_untouched(served_tasks, tmp_path):
    """Capture writes only to its store: the served folder stays as it was."""
    root = tmp_path / "served"
    shutil.copytree(served_tasks, root)
    before = sorted(p.name for p in root.rglob("*"))
    assert before == sorted(p.name for p in served_tasks.rglob("*"))
