"""Every training job resumes only the run it started (training.driver.run_job checks it):
``multitask`` and ``detox train`` refuse a resume whose settings or data files changed, naming
them, as ``train`` does; ``detox train`` writes the config.json it is checked against."""

from __future__ import annotations

import json

from softprompt.cli import main

from .helpers import ctrl_c_at_step
from .test_continual import _sequence
from .test_detox import TRAIN_QUICK, write_paradetox


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_detox_train_resumes_only_its_own_settings_and_data(tiny_llama_dir, tmp_path, capsys):
    data = write_paradetox(tmp_path / "paradetox.tsv")
    out = tmp_path / "prompt"
    args = ["detox", "train", f"backbone={tiny_llama_dir}", f"data={data}", *TRAIN_QUICK, f"out={out}"]
    assert main(args) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["data"] == str(data) and record["data_sha256"]["data"]
    assert main([*args, "train.lr=0.5", "--resume"]) == 2
    assert "train.lr" in _one_line(capsys)
    with data.open("a", encoding="utf-8") as handle:
        handle.write("you fool 99\tplease 99\t\t\n")
    assert main([*args, "--resume"]) == 2
    message = _one_line(capsys)
    assert f"data file {data} has changed since the run started" in message


def test_multitask_resumes_only_its_own_settings_and_data(tiny_llama_dir, tmp_path, capsys):
    tasks = _sequence(tmp_path)
    recipe = {
        "backbone": str(tiny_llama_dir),
        "tasks": tasks,
        "out": str(tmp_path / "multi"),
        "prompt": {"length": 2, "init": "vocab"},
        "train": {"lr": 0.05, "batch_size": 6, "max_steps": 4, "eval_every": 2, "patience": 0},
    }
    path = tmp_path / "multitask.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    with ctrl_c_at_step(3):
        assert main(["multitask", "--config", str(path), "--quiet"]) != 0  # interrupted after a checkpoint
    assert "interrupted: the last checkpoint is intact" in capsys.readouterr().err
    assert main(["multitask", "--config", str(path), "--quiet", "--resume", "train.lr=0.5"]) == 2
    assert "train.lr" in _one_line(capsys)
    train_file = tasks[1]["data"]["train"]
    with open(train_file, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "one more", "label": "negative"}) + "\n")
    assert main(["multitask", "--config", str(path), "--quiet", "--resume"]) == 2
    assert "tasks[1].data.train file" in _one_line(capsys)
