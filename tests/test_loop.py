"""``softprompt loop`` against a real running server (uvicorn on a local port) with capture, while
a client sends traffic and a labeller sends feedback: a round retrains, shadows, and promotes or
drops; a loop killed with SIGKILL mid-round resumes that round (the tiny random Llama)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from softprompt.lifecycle.loop import Loop, LoopSettings
from softprompt.serving.app import ServeSettings, Service, create_app

from .conftest import NEGATIVE, POSITIVE
from .helpers import live_server, logged_messages, train_served_tasks

GOLD = {**dict.fromkeys(POSITIVE, "positive"), **dict.fromkeys(NEGATIVE, "negative")}
ADMIN = "admin-key"
RETRAIN = ["train.max_steps=2", "retrain.max_dev_drop=1"]  # quick; the dev half of the gate always passes


@pytest.fixture
def serving(tmp_path, tiny_llama_dir, tiny_backbone):
    """A server with capture, its store, and a client labelling everything it is answered."""
    served = train_served_tasks(tmp_path, tiny_llama_dir)
    db = tmp_path / "capture.db"
    settings = ServeSettings(max_wait_ms=1, capture=str(db), admin_key=ADMIN)
    app = create_app(Service(tiny_backbone, served), settings)
    with live_server(app) as url:
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    for text, label in GOLD.items():
                        answer = client.post("/v1/classify", json={"task": "sentiment", "texts": [text]}).json()
                        client.post("/v1/feedback", json={"id": answer["id"], "label": label})

        labeller = threading.Thread(target=traffic, daemon=True)
        labeller.start()
        yield url, db, served
        stop.set()
        labeller.join(timeout=30)


def settings_for(url: str, db: Path, **extra) -> LoopSettings:
    retrain = {"train": {"max_steps": 2}, "retrain": {"max_dev_drop": 1.0}}
    return LoopSettings(
        url, str(db), "sentiment", every=6, shadow_requests=4, key=ADMIN, poll_s=0.1, retrain=retrain, **extra
    )


@pytest.mark.slow
def test_a_round_retrains_shadows_and_decides(serving, tmp_path):
    url, db, served = serving
    loop = Loop(settings_for(url, db, rounds=1), tmp_path / "state.json")
    with logged_messages("softprompt.lifecycle") as lines:
        (outcome,) = loop.run()
    loop.close()
    shown = httpx.get(f"{url}/v1/tasks/sentiment").json()
    assert outcome["outcome"] in {"promoted", "dropped", "refused by the gate"}, outcome
    new_version = json.loads((Path(outcome["version"]) / "task.json").read_text())
    assert Path(outcome["version"]).is_relative_to(served)  # under DIR/.versions: the server may read it
    if outcome["outcome"] == "promoted":
        assert shown["live"]["version"] == new_version["weights_sha256"]
        assert outcome["candidate"] > outcome["live"] and outcome["n"] >= 4
    else:
        assert shown["live"]["version"] != new_version["weights_sha256"] and shown["candidate"] is None
    parent = json.loads((served / "sentiment" / "task.json").read_text())["weights_sha256"]
    assert new_version["lineage"]["parent"]["weights_sha256"] == parent
    assert any(f"round 1: {outcome['outcome']}" in line for line in lines)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["round"] == 2 and state["phase"] == "waiting" and state["seen"] >= 6


@pytest.mark.slow
def test_a_loop_killed_mid_round_resumes_that_round(serving, tmp_path):
    url, db, _ = serving
    state_file = tmp_path / "state.json"
    command = [sys.executable, "-m", "softprompt", "loop", "--server", url, "--db", str(db), "--task", "sentiment"]
    command += ["--every", "6", "--shadow-requests", "1000000", "--poll", "0.1", "--state", str(state_file), *RETRAIN]
    process = subprocess.Popen(command, env={**os.environ, "SOFTPROMPT_ADMIN_KEY": ADMIN}, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240

        def shadowing() -> bool:  # the state says so and the server has the candidate (posted just after the save)
            if not (state_file.is_file() and json.loads(state_file.read_text())["phase"] == "shadowing"):
                return False
            return httpx.get(f"{url}/v1/tasks/sentiment").json()["candidate"] is not None

        while not shadowing():
            assert process.poll() is None and time.monotonic() < deadline, "the loop did not reach its shadow"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = json.loads(state_file.read_text())
    folder = Path(killed["candidate"])
    written = (folder / "task.json").stat().st_mtime_ns
    assert httpx.get(f"{url}/v1/tasks/sentiment").json()["candidate"] is not None  # the shadow still runs
    loop = Loop(settings_for(url, db, rounds=1), state_file)
    with logged_messages("softprompt.lifecycle") as lines:
        (outcome,) = loop.run()
    loop.close()
    assert any("resuming round 1 at shadowing" in line for line in lines)
    assert outcome["round"] == 1 and outcome["version"] == str(folder) and outcome["outcome"] in {"promoted", "dropped"}
    assert (folder / "task.json").stat().st_mtime_ns == written  # not retrained again
