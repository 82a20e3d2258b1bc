"""Who may change what a server serves: the admin key (``serve --admin-key``) guards every
route that changes the served tasks, the inference key the rest; and a path given to the server
must lie under the served folder or an ``--artifacts-root`` (no ``..``, no symbolic link out), so
a client cannot make the server read files (the tiny random Llama's two tasks)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from softprompt.cli import main
from softprompt.serving.app import ServeSettings, Service, create_app

USER, ADMIN = {"Authorization": "Bearer user-key"}, {"Authorization": "Bearer admin-key"}


def client_for(tiny_backbone, served_copy, **settings) -> TestClient:
    return TestClient(create_app(Service(tiny_backbone, served_copy), ServeSettings(max_wait_ms=1, **settings)))


def test_task_changes_need_the_admin_key_and_inference_the_api_key(tiny_backbone, served_copy):
    copy = {"path": str(served_copy / "sentiment")}
    with client_for(tiny_backbone, served_copy, api_key="user-key", admin_key="admin-key") as client:
        classify = {"task": "sentiment", "texts": ["great"]}
        statuses = {
            "classify, user key": client.post("/v1/classify", json=classify, headers=USER).status_code,
            "classify, admin key": client.post("/v1/classify", json=classify, headers=ADMIN).status_code,
            "classify, no key": client.post("/v1/classify", json=classify).status_code,
            "list, user key": client.get("/v1/tasks", headers=USER).status_code,
            "add, user key": client.post("/v1/tasks/copy", json=copy, headers=USER).status_code,
            "add, no key": client.post("/v1/tasks/copy", json=copy).status_code,
            "add, admin key": client.post("/v1/tasks/copy", json=copy, headers=ADMIN).status_code,
            "remove, user key": client.delete("/v1/tasks/copy", headers=USER).status_code,
            "reload, user key": client.post("/v1/tasks/reload", headers=USER).status_code,
            "remove, admin key": client.delete("/v1/tasks/copy", headers=ADMIN).status_code,
        }
        refused = client.post("/v1/tasks/copy", json=copy, headers=USER).json()
    assert statuses == {
        "classify, user key": 200,
        "classify, admin key": 200,
        "classify, no key": 401,
        "list, user key": 200,
        "add, user key": 403,
        "add, no key": 401,
        "add, admin key": 200,
        "remove, user key": 403,
        "reload, user key": 403,
        "remove, admin key": 200,
    }
    assert "admin key" in refused["detail"]


def test_an_admin_key_alone_leaves_inference_open(tiny_backbone, served_copy):
    with client_for(tiny_backbone, served_copy, admin_key="admin-key") as client:
        assert client.post("/v1/classify", json={"task": "sentiment", "texts": ["great"]}).status_code == 200
        assert client.delete("/v1/tasks/sentiment").status_code == 401
        assert client.delete("/v1/tasks/sentiment", headers=ADMIN).status_code == 200


def test_paths_outside_the_served_folder_and_the_roots_are_refused(tiny_backbone, served_copy, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(served_copy / "sentiment", outside / "sentiment")
    (served_copy / "link").symlink_to(outside / "sentiment")  # a link in the served folder that leads out
    tries = {
        "elsewhere": str(outside / "sentiment"),
        "dot-dot": str(served_copy / ".." / "outside" / "sentiment"),
        "link out": str(served_copy / "link"),
        "system file": "/etc/passwd",
    }
    with client_for(tiny_backbone, served_copy) as client:
        answers = {name: client.post("/v1/tasks/x", json={"path": path}) for name, path in tries.items()}
        inside = client.post("/v1/tasks/x", json={"path": str(served_copy / "sentiment")})
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(tries, 403)
    assert "--artifacts-root" in answers["elsewhere"].json()["detail"]
    assert inside.status_code == 200
    with client_for(tiny_backbone, served_copy, artifacts_roots=(str(outside),)) as client:
        assert client.post("/v1/tasks/x", json={"path": str(outside / "sentiment")}).status_code == 200
        assert client.post("/v1/tasks/y", json={"path": "/etc/passwd"}).status_code == 403


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--api-key", "same", "--admin-key", "same"], "--admin-key is the same as --api-key"),
        (["--admin-key", " "], "--admin-key is empty"),
    ],
)
def test_admin_key_mistakes_are_one_line(tmp_path, capsys, flags, expected):
    assert main(["serve", "--artifacts", str(tmp_path), "--backbone", "nowhere", *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
