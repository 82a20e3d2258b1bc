"""Task versions on servers that share one served folder (the replicas of ``serve --ray``, here two
servers in one process): a candidate, a promote and a rollback made through either server reach
the other through the folder's record; a restarted server serves the candidate it had."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.versions import LiveRecord, Recorded
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.serving.registry import artifact_version

from .helpers import wait_until
from .test_versions_live import TEXTS, served, trained  # noqa: F401  (fixtures)


def replica(tiny_backbone, folder) -> TestClient:
    roots = (str(folder.parent / "incoming"),)
    shared = ServeSettings(max_wait_ms=1, artifacts_roots=roots, shared_folder=True, replicas=2, watch_s=0.1)
    return TestClient(create_app(Service(tiny_backbone, folder), shared))


def versions_of(client: TestClient) -> set[str]:
    answer = client.post("/v1/classify", json={"task": "sentiment", "texts": TEXTS})
    assert answer.status_code == 200, answer.text
    return {result["version"] for result in answer.json()["results"]}


def shown(client: TestClient) -> dict:
    return client.get("/v1/tasks/sentiment").json()


def test_versions_changed_through_one_server_reach_the_other(tiny_backbone, served):  # noqa: F811
    candidate = served.parent / "incoming" / "sentiment-v2"
    first, second = artifact_version(served / "sentiment"), artifact_version(candidate)
    with replica(tiny_backbone, served) as a, replica(tiny_backbone, served) as b:
        posted = a.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0})
        assert posted.status_code == 200, posted.text
        wait_until(lambda: (shown(b)["candidate"] or {}).get("version") == second, "b to serve a's candidate")
        assert versions_of(b) == {second}  # a canary of share 1 answers every request on b too
        assert b.delete("/v1/tasks/sentiment/candidate").status_code == 200
        wait_until(lambda: shown(a)["candidate"] is None, "a to drop the candidate b dropped")
        assert versions_of(a) == {first}
        # Promote through b right after posting through a: b catches up with the record first.
        assert a.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 0.5}).status_code == 200
        promoted = b.post("/v1/tasks/sentiment/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["live"]["version"] == second
        wait_until(lambda: shown(a)["live"]["version"] == second and shown(a)["candidate"] is None, "a to promote")
        assert versions_of(a) == versions_of(b) == {second}
        assert a.post("/v1/tasks/sentiment/rollback").status_code == 200
        wait_until(lambda: shown(b)["live"]["version"] == first, "b to roll back")
        assert versions_of(b) == {first} and shown(b)["previous"] is None
        assert b.post("/v1/tasks/sentiment/rollback").status_code == 409  # rolled back already, through a


def test_a_restarted_server_serves_its_recorded_candidate(tiny_backbone, served):  # noqa: F811
    candidate = served.parent / "incoming" / "sentiment-v2"
    settings = ServeSettings(max_wait_ms=1, artifacts_roots=(str(served.parent / "incoming"),))
    with TestClient(create_app(Service(tiny_backbone, served), settings)) as client:
        posted = client.post("/v1/tasks/sentiment/candidate", json={"path": str(candidate), "share": 1.0})
        assert posted.status_code == 200, posted.text
    recorded = LiveRecord(served).read()["sentiment"]
    assert recorded.candidate is not None and recorded.share == 1.0 and recorded.live == "sentiment"
    with TestClient(create_app(Service(tiny_backbone, served), settings)) as client:
        assert shown(client)["candidate"]["version"] == artifact_version(candidate)
        assert versions_of(client) == {artifact_version(candidate)}
        assert client.delete("/v1/tasks/sentiment/candidate").status_code == 200
    assert "sentiment" not in LiveRecord(served).read()  # nothing left to record


def test_a_recorded_shadow_is_not_served_without_a_capture_store(tiny_backbone, served, capsys):  # noqa: F811
    kept = LiveRecord(served).keep_copy("sentiment", served.parent / "incoming" / "sentiment-v2", "v2")
    LiveRecord(served).set("sentiment", Recorded("sentiment", None, LiveRecord(served).relative(kept), 0.0))
    settings = ServeSettings(max_wait_ms=1)
    app = create_app(Service(tiny_backbone, served), settings)
    with TestClient(app) as client:
        assert shown(client)["candidate"] is None
    assert "its recorded shadow is not served: start the server with --capture DB" in capsys.readouterr().out


def test_the_record_keeps_its_old_form_and_skips_writes_that_change_nothing(tmp_path):
    record = LiveRecord(tmp_path)
    record.path.parent.mkdir()
    record.path.write_text(json.dumps({"tasks": {"t": {"live": ".versions/t/abc", "previous": "t"}}}))
    assert record.read() == {"t": Recorded(".versions/t/abc", "t")}  # written before candidates were recorded
    stamp = record.stamp()
    record.set("other", None)  # nothing to forget: not written
    record.set("t", Recorded(".versions/t/abc", "t"))
    assert record.stamp() == stamp
    record.set("t", Recorded(".versions/t/abc", "t", ".versions/t/def", 0.25))
    assert json.loads(record.path.read_text())["tasks"]["t"] == {
        "live": ".versions/t/abc",
        "previous": "t",
        "candidate": ".versions/t/def",
        "share": 0.25,
    }
    with record.locked():  # held while a server changes the record
        assert (tmp_path / ".versions" / ".lock").exists()


def test_a_shared_folder_without_a_watch_period_is_refused():
    with pytest.raises(SoftpromptError, match="--watch SECONDS > 0"):
        ServeSettings(shared_folder=True)  # it would follow the record in a busy loop
