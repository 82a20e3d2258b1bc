"""The CLI end to end on a tiny model, and every bad input as a user would meet it."""

import json
import subprocess
import sys

import pytest

from softprompt.cli import main

from .conftest import make_tiny_llama, write_jsonl


@pytest.fixture
def trained(base_args, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *base_args, f"out={out}", "train.max_steps=2", "train.eval_every=1"]) == 0
    return out


@pytest.mark.slow
def test_train_writes_the_artifact_and_reports(base_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *base_args,
                f"out={out}",
                "train.max_steps=2",
                "train.eval_every=1",
                "train.zero_shot_baseline=true",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "zero-shot test accuracy" in printed and "tuned test accuracy" in printed
    assert f"artifact: {out} (" in printed and "KB" in printed and "time:" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "checkpoint",
        "config.json",
        "curves.png",
        "log.jsonl",
        "task.json",
    ]
    meta = json.loads((out / "task.json").read_text())
    assert meta["step"] in (1, 2) and meta["template"] == "Review: {text}\nSentiment:{soft:2}"
    assert set(meta["metrics"]) >= {"dev", "test", "zero_shot_test"}
    # suffix soft tokens are not peft's layout: the adapter config says so instead of misleading peft
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "SOFTPROMPT"


@pytest.mark.slow
def test_eval_predict_inspect(trained, sentiment_files, capsys, monkeypatch):
    assert main(["eval", str(trained), "--data", str(sentiment_files["test"]), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 10 and 0 <= result["accuracy"] <= 1
    assert main(["predict", str(trained), "a great movie", "awful"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["a great movie", "awful"]
    assert all(line["label"] in ("positive", "negative") for line in lines)
    assert all(abs(sum(line["scores"].values()) - 1) < 1e-4 for line in lines)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("superb\n\nbad\n"))
    assert main(["predict", str(trained)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["inspect", str(trained)]) == 0
    shown = capsys.readouterr().out
    assert "method: prompt_tuning" in shown and "soft[  0]" in shown and "soft[  1]" in shown
    assert main(["inspect", str(trained), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["soft_tokens"]) == 2


def test_ls(capsys):
    for what, expected in (
        ("backbones", "smollm2-135m"),
        ("datasets", "rotten-tomatoes"),
        ("methods", "prompt_tuning"),
    ):
        assert main(["ls", what]) == 0
        assert expected in capsys.readouterr().out


def _fails(args, capsys, message, out=None):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err
    if out is not None:
        assert not out.exists(), "a failed run must not leave an artifact behind"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.train={missing}", "does not exist"),
        ("data.train={empty}", "is empty"),
        ("data.train={malformed}", "line 2: malformed JSON"),
        ("data.train={no_label}", "line 1: no column 'label'"),
        ("data.train={unknown_label}", "label 'neutral' is not in the verbalizer"),
        ("template=Review: {{title}} {{text}}", "template field {title} is not in the train data"),
        ("template=Nothing to classify", "has no input field"),
        ("backbone=smollm-135m", "did you mean 'smollm2-135m'"),
        ("method=prompt_tunning", "did you mean 'prompt_tuning'"),
    ],
)
def test_bad_training_input(base_args, tmp_path, capsys, override, message):
    paths = {
        "missing": tmp_path / "missing.jsonl",
        "empty": tmp_path / "empty.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "no_label": tmp_path / "no_label.jsonl",
        "unknown_label": tmp_path / "unknown.jsonl",
    }
    paths["empty"].write_text("")
    paths["malformed"].write_text('{"text": "a", "label": "positive"}\n{"text": oops}\n')
    write_jsonl(paths["no_label"], [{"text": "a", "sentiment": "positive"}])
    write_jsonl(paths["unknown_label"], [{"text": "a", "label": "positive"}, {"text": "b", "label": "neutral"}])
    out = tmp_path / "out"
    args = [a for a in base_args if not (override.startswith("data.train") and a.startswith("data.train"))]
    _fails(["train", *args, override.format(**paths), f"out={out}", "train.max_steps=1"], capsys, message, out)


def test_misspelled_dataset(tmp_path, capsys):
    _fails(
        ["train", "dataset=roten-tomatoes", f"out={tmp_path / 'o'}"],
        capsys,
        "did you mean 'rotten-tomatoes'",
        tmp_path / "o",
    )


def test_empty_texts_are_skipped_with_a_note(base_args, tmp_path, capsys):
    rows = [{"text": "", "label": "positive"}] + [
        {"text": "good", "label": "positive"},
        {"text": "bad", "label": "negative"},
    ] * 3
    train_file = write_jsonl(tmp_path / "t.jsonl", rows)
    args = [a for a in base_args if not a.startswith("data.train")]
    assert main(["train", *args, f"data.train={train_file}", f"out={tmp_path / 'o'}", "train.max_steps=1"]) == 0
    assert "skipped 1 rows with empty text" in capsys.readouterr().out


def test_broken_artifacts(trained, capsys):
    (trained / "adapter_model.safetensors").write_bytes(b"garbage")
    _fails(["predict", str(trained), "x"], capsys, "does not match task.json")
    (trained / "task.json").write_text("{not json")
    _fails(["predict", str(trained), "x"], capsys, "task.json is corrupt")
    (trained / "task.json").unlink()
    _fails(["inspect", str(trained)], capsys, "incomplete: missing task.json")
    _fails(["eval", str(trained.parent / "nope")], capsys, "nope: no such folder")


@pytest.mark.slow
def test_artifact_refuses_another_backbone(trained, tmp_path, capsys):
    from softprompt.backbones import load_backbone
    from softprompt.errors import SoftpromptError
    from softprompt.tasks.loading import load_classifier

    other = make_tiny_llama(tmp_path / "other-llama", seed=1)
    with pytest.raises(SoftpromptError, match="was trained on backbone"):
        load_classifier(trained, load_backbone(str(other)))


@pytest.mark.slow
def test_user_errors_have_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "softprompt",
            "train",
            "dataset=rotten-tomatoes",
            "backbone=gpt-17",
            f"out={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown backbone 'gpt-17'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["runs/nope", "./nope", "nope"])
def test_a_mistyped_local_artifact_is_a_missing_folder_not_a_hub_lookup(name, tmp_path, monkeypatch, capsys):
    import softprompt.artifact

    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking name must not be looked up on the Hub")

    monkeypatch.setattr(softprompt.artifact, "snapshot", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    _fails(["predict", name, "a text"], capsys, f"artifact {name}: no such folder")
    _fails(["eval", name], capsys, f"artifact {name}: no such folder")


def test_a_name_that_is_neither_a_folder_nor_on_the_hub_names_both(tmp_path, monkeypatch, capsys):
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_on_the_hub(repo_id, allow_patterns):
        request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=request))

    monkeypatch.setattr("huggingface_hub.snapshot_download", not_on_the_hub)
    monkeypatch.chdir(tmp_path)  # no folder named 'someone' here
    _fails(
        ["predict", "someone/sentiment", "a text"],
        capsys,
        "artifact someone/sentiment is neither a local folder nor a model on the Hugging Face Hub",
    )


@pytest.mark.slow
def test_eval_max_examples_scores_a_seeded_sample(trained, sentiment_files, capsys):
    data = ["--data", str(sentiment_files["test"]), "--quiet"]
    assert main(["eval", str(trained), *data, "--max-examples", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 3 and first["data"].endswith("a sample of 3 of 10")
    assert main(["eval", str(trained), *data, "--max-examples", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == first  # the same seeded sample
    assert main(["eval", str(trained), *data, "--max-examples", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10  # more than there are: all of them
    _fails(["eval", str(trained), *data, "--max-examples", "0"], capsys, "--max-examples must be >= 1, got 0")


def test_export_refuses_to_replace_a_file_without_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "prompt.safetensors"
    out.write_bytes(b"keep me")
    _fails(["export", str(trained), "--out", str(out)], capsys, f"{out} already exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"keep me" and f"wrote {out}" in capsys.readouterr().out


def test_a_one_label_verbalizer_is_refused(base_args, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*base_args, f"out={out}", "verbalizer={positive: positive}"]
    _fails(["train", *args], capsys, "a verbalizer needs at least two labels; this one has only 'positive'", out)


def test_fewshot_k_beyond_the_training_rows_says_so(base_args, sentiment_files, tmp_path, capsys):
    rows = len(sentiment_files["train"].read_text().splitlines())
    out = tmp_path / "run"
    args = [*base_args, f"out={out}", "method=none", "template=Review: {text}\\nSentiment:", "fewshot.k=1000"]
    message = f"fewshot.k=1000 is more than the {rows} training examples; give fewshot.k of at most {rows}"
    _fails(["train", *args], capsys, message, out)


def test_generate_takes_threads_as_predict_does(tiny_llama_dir, capsys):
    import torch

    from softprompt.cli import parse_args

    assert parse_args(["generate", "--threads", "1", "a prompt"]).threads == 1
    _fails(["generate", "--threads", "-1", "a prompt"], capsys, "--threads must be >= 0, got -1")
    before = torch.get_num_threads()
    try:
        args = ["generate", f"backbone={tiny_llama_dir}", "max_new_tokens=2", "--threads", "1", "--json", "Hi"]
        assert main(args) == 0
        assert torch.get_num_threads() == 1
        assert json.loads(capsys.readouterr().out)["prompt"] == "Hi"
    finally:
        torch.set_num_threads(before)
