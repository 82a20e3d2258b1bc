"""`softprompt serve --ray`: a real local Ray cluster (2 CPUs) running 2 replicas of the tiny
backbone behind Ray's HTTP proxy, capturing into one PostgreSQL database. Skipped only where Ray is
not installed or cannot start (the skip says which)."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from softprompt.errors import SoftpromptError
from softprompt.lifecycle.store import Store, requests
from softprompt.serving.registry import artifact_version
from softprompt.serving.settings import ServeSettings

from .helpers import wait_until
from .test_versions_live import trained  # noqa: F401  (a second sentiment artifact)

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[serve]'; make test installs it)")
ray_serve = pytest.importorskip("softprompt.serving.ray")

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, served_tasks, tiny_llama_dir, postgres_url) -> Iterator[tuple[str, Path, str]]:
    """(base URL, served folder, capture URL) of a running 2-replica application."""
    from ray import serve

    folder = tmp_path_factory.mktemp("ray-served") / "served"
    shutil.copytree(served_tasks, folder)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # a sandbox without shared memory or sockets for Ray's processes
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    port = _port()
    config = ray_serve.ReplicaConfig(
        artifacts=str(folder), backbone=str(tiny_llama_dir), threads=1, settings={"capture": postgres_url}
    )
    try:
        ray_serve.start(config, 2, "127.0.0.1", port)
        yield f"http://127.0.0.1:{port}", folder, postgres_url
    finally:
        serve.shutdown()
        ray.shutdown()


def classify(base: str, task: str = "sentiment") -> httpx.Response:
    return httpx.post(f"{base}/v1/classify", json={"task": task, "texts": ["a great movie"]}, timeout=60)


def replicas_seen(base: str, count: int = 30) -> set[str]:
    return {classify(base).headers[ray_serve.REPLICA_HEADER] for _ in range(count)}


def test_both_replicas_answer_with_the_same_answers(cluster):
    base, _, _ = cluster
    answers = [classify(base) for _ in range(30)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.headers[ray_serve.REPLICA_HEADER] for a in answers}) == 2
    assert len({str(a.json()["results"][0]["scores"]) for a in answers}) == 1  # one backbone, one answer


def test_a_task_added_through_one_replica_is_served_by_both_within_5_s_and_removed_from_both(cluster):
    base, folder, _ = cluster
    incoming = folder / ".incoming" / "copy"
    shutil.copytree(folder / "sentiment", incoming)
    added = httpx.post(f"{base}/v1/tasks/copy", json={"path": str(incoming)}, timeout=60)
    assert added.status_code == 200, added.text
    started = time.monotonic()

    def served_by(replicas: int, present: bool) -> bool:
        answers = [classify(base, "copy") for _ in range(12)]
        names = {a.headers[ray_serve.REPLICA_HEADER] for a in answers if (a.status_code == 200) == present}
        return len(names) >= replicas and all((a.status_code == 200) == present for a in answers[-6:])

    wait_until(lambda: served_by(2, True), "both replicas to serve the added task", timeout=5)
    assert time.monotonic() - started < 5
    assert (folder / "copy" / "task.json").is_file()  # written to the folder every replica watches
    assert httpx.delete(f"{base}/v1/tasks/copy", timeout=60).status_code == 200
    wait_until(lambda: served_by(2, False), "both replicas to drop the removed task", timeout=5)
    assert not (folder / "copy").exists()


def test_healthz_reports_the_replicas_and_metrics_are_labelled_by_replica(cluster):
    base, _, _ = cluster
    answer = httpx.get(f"{base}/healthz", timeout=60)
    body = answer.json()
    assert body["status"] == "ok" and body["replica"] == answer.headers[ray_serve.REPLICA_HEADER]
    assert body["replicas"] == {"RUNNING": 2}
    metrics = httpx.get(f"{base}/metrics", timeout=60)
    replica = metrics.headers[ray_serve.REPLICA_HEADER]
    samples = [line for line in metrics.text.splitlines() if line and not line.startswith("#")]
    assert samples and all(f'{{replica="{replica}"' in line for line in samples)
    assert int(metrics.headers["content-length"]) == len(metrics.content)


def test_labelled_adds_the_replica_to_every_sample():
    text = b'# HELP a x\n# TYPE a counter\na_total 3.0\nb{kind="classify"} 2.0\n'
    assert ray_serve.labelled(text, "r1").decode().splitlines() == [
        "# HELP a x",
        "# TYPE a counter",
        'a_total{replica="r1"} 3.0',
        'b{replica="r1",kind="classify"} 2.0',
    ]


def test_candidates_promote_and_rollback_made_through_any_replica_reach_both(cluster, trained):  # noqa: F811
    """Through Ray's proxy, each change lands on whichever replica Ray picks; both then answer with
    the version the change made live (a canary of share 1 answers every request)."""
    base, folder, _ = cluster
    incoming = folder / ".incoming" / "sentiment-v2"
    shutil.copytree(trained[1], incoming)
    first, second = artifact_version(folder / "sentiment"), artifact_version(incoming)

    def answered_by_both(version: str) -> bool:
        answers = [classify(base) for _ in range(12)]
        names = {a.headers[ray_serve.REPLICA_HEADER] for a in answers}
        return len(names) == 2 and {a.json()["results"][0]["version"] for a in answers} == {version}

    changes = [
        ("post", "/v1/tasks/sentiment/candidate", {"path": str(incoming), "share": 1.0}, second),
        ("delete", "/v1/tasks/sentiment/candidate", None, first),
        ("post", "/v1/tasks/sentiment/candidate", {"path": str(incoming), "share": 0.0}, first),
        ("post", "/v1/tasks/sentiment/promote", None, second),
        ("post", "/v1/tasks/sentiment/rollback", None, first),
    ]
    for method, path, body, version in changes:
        answer = httpx.request(method, f"{base}{path}", json=body, timeout=60)
        assert answer.status_code == 200, (path, answer.text)
        wait_until(lambda v=version: answered_by_both(v), f"both replicas to answer with {version} after {path}")


def test_one_capture_store_holds_every_answered_request(cluster):
    base, _, url = cluster
    ids = [classify(base).json()["id"] for _ in range(20)]
    with Store(url, create=False).engine.connect() as connection:
        stored = {row.id for row in connection.execute(sa.select(requests.c.id))}
    assert set(ids) <= stored


def test_a_killed_replica_fails_only_its_requests_and_is_back_within_60_s(cluster):
    base, _, _ = cluster
    before = replicas_seen(base)
    assert len(before) == 2
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    victim = next(name for name in names if name.endswith(sorted(before)[0]))
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    failed, answered = 0, 0
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline and len(seen - before) < 1:
        answer = classify(base)
        if answer.status_code == 200:
            answered += 1
            seen.add(answer.headers[ray_serve.REPLICA_HEADER])
        else:
            failed += 1
    assert seen - before, "no replacement replica answered within 60 s"
    assert answered > 0 and failed <= 2, (answered, failed)  # at most the one in flight (plus a retry)
    assert len(replicas_seen(base)) == 2


def test_several_replicas_refuse_an_sqlite_store_in_one_line():
    settings = ServeSettings(capture="capture.db")
    with pytest.raises(SoftpromptError, match=r"SQLite file is one machine's.*postgresql"):
        ray_serve.check_replicas(settings, 2)
    ray_serve.check_replicas(settings, 1)  # one replica may keep its own file


def test_the_guides_rayservice_manifest_is_valid_for_ray_and_builds_the_app(tmp_path):
    """The KubeRay manifest in docs/serving-and-many-tasks.md: its serveConfigV2 passes Ray's own
    schema, and its import path and args build the application (no cluster needed)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    guide = (Path(__file__).parents[1] / "docs" / "serving-and-many-tasks.md").read_text(encoding="utf-8")
    blocks = [b.split("\n", 1)[1] for b in guide.split("```")[1::2] if b.startswith("yaml") and "RayService" in b]
    [manifest] = [yaml.safe_load(block) for block in blocks]
    assert manifest["kind"] == "RayService"
    config = ServeDeploySchema.parse_obj(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    [application] = config.applications
    module, name = application.import_path.split(":")
    assert (module, name) == ("softprompt.serving.ray", "app")
    args = {**application.args, "artifacts": str(tmp_path), "capture": "postgresql+psycopg://u@h/db"}
    assert ray_serve.app(args) is not None
    with pytest.raises(SoftpromptError, match="takes artifacts=DIR"):
        ray_serve.app({"artifact": str(tmp_path)})


def test_serve_ray_with_an_sqlite_store_and_two_replicas_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    from softprompt.cli import main

    started: list[object] = []
    monkeypatch.setattr(ray_serve, "start", lambda *args: started.append(args))
    code = main(["serve", "--artifacts", str(tmp_path), "--ray", "--replicas", "2", "--capture", "c.db"])
    err = capsys.readouterr().err
    assert code != 0 and "one PostgreSQL database" in err and "Traceback" not in err
    assert not started


def test_requests_naming_their_task_in_the_routing_header_stay_on_one_replica(cluster):
    """Task routing: a client that sends its task as ``serve_multiplexed_model_id`` is routed to the
    replica that answered the task's first such request (its prompt cache warm there)."""
    base, _, _ = cluster
    header = {"serve_multiplexed_model_id": "sentiment"}

    def ask() -> httpx.Response:
        body = {"task": "sentiment", "texts": ["fine"]}
        return httpx.post(f"{base}/v1/classify", json=body, headers=header, timeout=60)

    first = ask().headers[ray_serve.REPLICA_HEADER]
    # Ray pushes what a replica holds to its router every 0.1 s, with no event to wait on; a second
    # request sent before that could be routed to, and held by, the other replica as well.
    time.sleep(3)
    answers = [ask() for _ in range(12)]
    assert {a.status_code for a in answers} == {200}
    assert {a.headers[ray_serve.REPLICA_HEADER] for a in answers} == {first}
    assert len(replicas_seen(base)) == 2  # requests without the header still go to both
