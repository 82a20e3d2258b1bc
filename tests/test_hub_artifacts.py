"""The Hub round trip of artifacts: loading one by its Hub id from the Hugging Face cache
(offline), and pushing one (the upload is checked as huggingface_hub would send it; no real
Hub is reached)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import softprompt
from softprompt.cli import main

ARTIFACT_ID = "tiny-org/sentiment-prompt"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def run(base_args, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *base_args, f"out={out}", "train.max_steps=4", "train.eval_every=2"]) == 0
    return out


def _cache_repo(hub: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """Lay ``files`` out as the snapshot of ``repo_id`` in a hub cache, as `hf download` does."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants as hub_constants

    hub = tmp_path / "hf-home" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return hub


def _artifact_files(run: Path) -> dict[str, Path | bytes]:
    names = ("task.json", "adapter_model.safetensors", "adapter_config.json", "README.md")
    return {name: run / name for name in names}


@pytest.mark.slow
def test_load_and_predict_by_hub_id_from_the_cache(run, offline_hub, capsys):
    _cache_repo(offline_hub, ARTIFACT_ID, _artifact_files(run))
    texts = ["a great movie", "dull and far too long"]
    local, hub = softprompt.load(run), softprompt.load(ARTIFACT_ID)
    assert [r["scores"] for r in hub.predict(texts)] == [r["scores"] for r in local.predict(texts)]
    assert main(["predict", ARTIFACT_ID, texts[0]]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == local.predict(texts[0])[0]["label"]
    assert main(["inspect", ARTIFACT_ID, "--card"]) == 0
    assert "model-index" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, f"artifact {ARTIFACT_ID} is not a local folder and not in the Hugging Face cache"),
        ({"README.md": b"# a model\n", "model.safetensors": b"x"}, "holds no softprompt artifact (no task.json)"),
        ("pickle", "no adapter_model.safetensors; softprompt loads only safetensors"),
    ],
)
def test_hub_ids_that_hold_no_usable_artifact_are_one_line(run, offline_hub, tmp_path, capsys, files, message):
    if files == "pickle":  # an artifact whose weights were saved with torch.save: never unpickled
        marker = tmp_path / "unpickled"
        weights = safetensors.torch.load_file(str(run / "adapter_model.safetensors"))
        torch.save(weights, tmp_path / "adapter_model.bin")
        files = {"task.json": run / "task.json", "adapter_model.bin": tmp_path / "adapter_model.bin"}
    if files is not None:
        _cache_repo(offline_hub, ARTIFACT_ID, files)
    assert main(["predict", ARTIFACT_ID, "some text"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    if files and "adapter_model.bin" in files:
        assert not marker.exists()


@pytest.mark.slow
def test_push_sends_the_artifact_and_a_card_for_the_repository(run, monkeypatch, capsys):
    from huggingface_hub import HfApi

    sent: dict = {}

    class Commit:
        commit_url = f"https://huggingface.co/{ARTIFACT_ID}/commit/{COMMIT}"

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        sent["repo"] = (repo_id, private, exist_ok, self.token)

    def create_commit(self, repo_id, operations, commit_message="", **kw):
        sent["operations"] = {op.path_in_repo: op for op in operations}
        sent["message"] = commit_message
        return Commit()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_for_test")
    assert main(["push", str(run), ARTIFACT_ID, "--private"]) == 0
    assert capsys.readouterr().out.strip() == Commit.commit_url
    assert sent["repo"] == (ARTIFACT_ID, True, True, "hf_secret_token_for_test")
    operations = sent["operations"]
    assert sorted(operations) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "task.json"]
    for name in ("adapter_model.safetensors", "task.json", "adapter_config.json"):
        assert Path(operations[name].path_or_fileobj).read_bytes() == (run / name).read_bytes()
    with operations["README.md"].as_file() as handle:  # what huggingface_hub uploads
        card = handle.read().decode("utf-8")
    assert f'softprompt.load("{ARTIFACT_ID}")' in card and "name: tiny-org/sentiment-prompt" in card
    assert "prompt_tuning for classification" in sent["message"]
    # The token went to huggingface_hub only: not into any file of the run.
    assert not any(b"hf_secret_token_for_test" in p.read_bytes() for p in run.rglob("*") if p.is_file())


@pytest.mark.slow
def test_push_without_a_token_or_with_a_bad_id_is_one_line(run, monkeypatch, tmp_path, capsys):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(run), ARTIFACT_ID]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "set HF_TOKEN or run `hf auth login`" in err
    assert main(["push", str(run), "not a repo id"]) == 2
    assert "is not of the form user/name" in capsys.readouterr().err
    (run / "adapter_model.safetensors").write_bytes(b"damaged")
    assert main(["push", str(run), ARTIFACT_ID]) == 2
    assert "does not match task.json" in capsys.readouterr().err


@pytest.mark.slow
def test_push_to_a_hub_that_does_not_answer_is_one_line(run, monkeypatch, capsys):
    import socket

    import huggingface_hub.constants as hub_constants

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)  # read from HF_ENDPOINT at import
    monkeypatch.setenv("HF_TOKEN", "x")
    assert main(["push", str(run), ARTIFACT_ID]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot reach the Hugging Face Hub at {endpoint}: ")
    assert err.endswith("; check the network or HF_ENDPOINT")
