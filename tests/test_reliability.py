"""Faults, bad input and untrusted files: nothing unpickled, resumes that are the same run,
evaluation of the data the user meant, truthful messages, files that respect the umask."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import stat

import pytest
import safetensors

from softprompt.cli import main


@pytest.fixture
def run(base_args, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *base_args, f"out={out}", "train.max_steps=4", "train.eval_every=2"]) == 0
    return out


class _Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.slow
def test_checkpoint_holds_no_pickle(run):
    with safetensors.safe_open(str(run / "checkpoint" / "state.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["state"])["progress"]["step"] == 4
        assert any(key.startswith("optimizer.") for key in handle.keys())  # noqa: SIM118


@pytest.mark.slow
def test_a_planted_pickle_checkpoint_is_refused_and_never_run(run, base_args, tmp_path, capsys):
    (run / "checkpoint" / "state.safetensors").unlink()
    marker = tmp_path / "code-ran"
    (run / "checkpoint" / "state.pt").write_bytes(pickle.dumps(_Planted(str(marker))))
    assert main(["train", *base_args, f"out={run}", "train.max_steps=4", "train.eval_every=2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "pickled checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.slow
def test_resume_refuses_settings_that_change_the_result(run, base_args, capsys):
    args = ["train", *base_args, f"out={run}", "train.eval_every=2", "--resume"]
    assert main([*args, "train.lr=0.5"]) == 2
    assert "train.lr (0.003 -> 0.5)" in capsys.readouterr().err
    assert main([*args, "train.max_steps=6"]) == 2
    assert "may grow with --extend" in capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["max_steps"] == 4, "a refused resume leaves the saved settings alone"
    assert main([*args, "train.max_steps=6", "threads=1", "--extend"]) == 0
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_a_failed_resume_writes_nothing(base_args, tmp_path, capsys):
    out = tmp_path / "never-started"
    assert main(["train", *base_args, f"out={out}", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists()


def test_eval_without_data_scores_the_artifacts_own_test_file(run, sentiment_files, capsys):
    assert main(["eval", str(run), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == f"{sentiment_files['test']} (test)"
    assert main(["eval", str(run), "--split", "dev", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == f"{sentiment_files['dev']} (dev)"
    assert main(["eval", str(run), "--data", str(sentiment_files["test"]), "--split", "dev"]) == 2
    assert "scored whole" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_batch_size_zero_is_one_line(run, command, capsys):
    texts = ["some text"] if command == "predict" else []
    assert main([command, str(run), *texts, "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch-size must be >= 1, got 0"


def test_ctrl_c_before_the_first_checkpoint_says_so(base_args, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("softprompt.training.driver.fit", interrupted)
    assert main(["train", *base_args, f"out={tmp_path / 'run'}"]) == 130
    assert "before the first checkpoint: there is nothing to resume" in capsys.readouterr().err


def test_artifacts_follow_the_umask(base_args, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["train", *base_args, f"out={tmp_path / 'run'}", "train.max_steps=1"]) == 0
    finally:
        os.umask(old)
    for name in ("task.json", "adapter_model.safetensors", "checkpoint/state.safetensors"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "bytes.jsonl",
            b'{"text": "fine", "label": "positive"}\n{"text": "caf\xe9", "label": "negative"}\n',
            "line 2: not UTF-8",
        ),
        ("bytes.csv", b"text,label\nfine,positive\ncaf\xe9,negative\n", "line 3: not UTF-8"),
        ("short.csv", b"text,label\nfine,positive\nno label here\n", "line 3: no value for 'label'"),
        ("null.jsonl", b'{"text": null, "label": "positive"}\n', "line 1: no value for 'text'"),
        (
            "neutral.jsonl",
            b'{"text": "a", "label": "positive"}\n{"text": "b", "label": "neutral"}\n',
            "line 2: label 'neutral'",
        ),
    ],
)
def test_bad_data_files_name_the_line(base_args, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["train", *base_args, f"data.train={path}", f"out={tmp_path / 'run'}"]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_and_an_empty_template(base_args, tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    assert main(["train", *base_args, f"out={taken}"]) == 2
    assert "is a file; give a directory" in _one_line_error(capsys)
    assert taken.read_text() == "mine"
    assert main(["train", *base_args, "template=", f"out={tmp_path / 'run'}"]) == 2
    assert "config field 'template': is empty" in _one_line_error(capsys)


@pytest.mark.parametrize("flag", ["--artifacts", "--prompts"])  # --prompts: the flag's first name, still taken
def test_serve_refuses_a_port_out_of_range(capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", flag, ".", "--port", "99999"])
    assert exit_info.value.code == 2
    assert "expected a port number from 1 to 65535" in capsys.readouterr().err


def test_long_texts_are_counted_when_shortened(base_args, tmp_path, capsys):
    assert main(["train", *base_args, f"out={tmp_path / 'run'}", "train.max_length=12", "train.max_steps=1"]) == 0
    assert "texts were shortened to fit train.max_length=12" in capsys.readouterr().out


def test_predict_takes_threads(run, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["predict", str(run), "a great movie", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert json.loads(capsys.readouterr().out)["text"] == "a great movie"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a gguf file at all", "is not a GGUF file (it does not start with 'GGUF')"),
        (b"GGUF" + (99).to_bytes(4, "little") + bytes(64), "is GGUF version 99; only versions 2 and 3 can be read"),
        (b"GGUF" + (3).to_bytes(4, "little") + b"\x05", "could not be read as a GGUF model"),
    ],
    ids=["not-gguf", "version-99", "truncated"],
)
def test_a_bad_gguf_file_is_one_line_naming_it(base_args, tmp_path, capsys, content, message):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(content)
    assert main(["train", *base_args, f"backbone={fake}", f"out={tmp_path / 'run'}"]) == 2
    assert f"backbone file {fake} " in (err := _one_line_error(capsys)) and message in err


def test_a_directory_given_as_data_is_named_as_one(base_args, tmp_path, run, capsys):
    assert main(["train", *base_args, f"data.train={tmp_path}", f"out={tmp_path / 'dir'}"]) == 2
    assert (
        _one_line_error(capsys)
        == f"error: data file {tmp_path} is a directory, not one written by datasets' save_to_disk; give a file "
        "(.jsonl, .csv, .tsv or .parquet) inside it"
    )
    assert main(["eval", str(run), "--data", str(tmp_path)]) == 2
    assert "is a directory, not one written by datasets' save_to_disk; give a file" in _one_line_error(capsys)


def test_predict_takes_texts_after_its_options(run, capsys):
    assert main(["predict", str(run), "--device", "cpu", "a great movie", "a dull film"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [
        "a great movie",
        "a dull film",
    ]
    assert main(["predict", str(run), "a great movie", "--device", "cpu", "a dull film"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_compare_accepts_quiet_as_train_does():
    from softprompt.cli import build_parser

    args = build_parser().parse_args(["compare", "--quiet", "methods=prompt_tuning,lora"])
    assert args.quiet and args.overrides == ["methods=prompt_tuning,lora"]


def test_out_none_from_python_is_the_default_not_a_directory_named_none():
    from softprompt.config import load_config

    assert load_config(base={"out": None}).out == load_config().out == "runs/default"


@pytest.mark.slow
def test_texts_that_are_not_utf8_are_one_line(run, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\ncaf\xe9\n"), encoding="utf-8"))
    assert main(["predict", str(run)]) == 2
    assert _one_line_error(capsys) == "error: stdin line 2: not UTF-8 (byte 0xe9); texts must be UTF-8"
    # undecodable argument bytes reach Python as lone surrogates (os.fsdecode)
    assert main(["predict", str(run), "fine", os.fsdecode(b"caf\xe9")]) == 2
    assert _one_line_error(capsys) == "error: text argument 2: not UTF-8 (byte 0xe9); texts must be UTF-8"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a great movie\r\n\n"), encoding="utf-8"))
    assert main(["predict", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "a great movie"


def test_a_loss_that_diverges_before_any_checkpoint_says_so(base_args, tmp_path, capsys, monkeypatch):
    import torch

    real = torch.nn.functional.nll_loss
    monkeypatch.setattr(torch.nn.functional, "nll_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    assert main(["train", *base_args, f"out={tmp_path / 'run'}", "train.eval_every=2"]) == 3
    err = _one_line_error(capsys)
    assert err == (
        "error: loss became inf at step 1, before the first checkpoint (nothing to resume); "
        "lower train.lr and start again"
    )
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("setting", ["train.lr=inf", "train.lr=nan", "train.epochs=inf", "train.l2=inf"])
def test_non_finite_numbers_are_refused_before_training(base_args, tmp_path, capsys, setting):
    assert main(["train", *base_args, setting, f"out={tmp_path / 'run'}"]) == 2
    assert f"config field '{setting.split('=')[0]}': must be " in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_no_data_is_an_error_not_a_silent_default_dataset(base_args, tiny_llama_dir, tmp_path, capsys):
    import softprompt

    no_data = [a for a in base_args if not a.startswith("data.")]
    assert main(["train", *no_data, f"out={tmp_path / 'run'}"]) == 2
    assert _one_line_error(capsys) == (
        "error: no training data: set data.train=FILE (train_data=[...] from Python) or a built-in "
        "dataset=NAME (softprompt ls datasets; the demo uses dataset=rotten-tomatoes)"
    )
    with pytest.raises(softprompt.SoftpromptError, match=r"^no training data: "):
        softprompt.train(
            backbone=str(tiny_llama_dir),
            template="{text} It was",
            verbalizer={"positive": "great", "negative": "bad"},
            out=str(tmp_path / "run"),
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "verbalizer, said",
    [
        ("{positive: positive, negative: positive}", "both say the word 'positive'"),
        ("{positive: [great, fine], negative: [bad, great]}", "both say the word 'great'"),
    ],
)
def test_labels_that_say_the_same_tokens_are_refused(base_args, tmp_path, capsys, verbalizer, said):
    assert main(["train", *base_args, f"verbalizer={verbalizer}", f"out={tmp_path / 'run'}"]) == 2
    err = _one_line_error(capsys)
    assert "verbalizer labels 'positive' and 'negative' cannot be told apart: " + said in err, err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_data_file_whose_contents_changed(run, base_args, sentiment_files, capsys):
    args = ["train", *base_args, f"out={run}", "train.eval_every=2", "train.max_steps=6", "--extend", "--resume"]
    train = sentiment_files["train"]
    train.write_text(train.read_text().replace("a great movie", "a grand movie"))
    assert main(args) == 2
    assert _one_line_error(capsys) == (
        f"error: data.train file {train} has changed since the run started (its SHA-256 differs); "
        "--resume needs the same data: restore the file, or start a new run with another out="
    )
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 4, "nothing was trained"


def test_a_moved_run_directory_resumes(run, base_args, tmp_path):
    import shutil

    moved = tmp_path / "run_ok"
    shutil.move(run, moved)
    assert (
        main(["train", *base_args, f"out={moved}", "train.eval_every=2", "train.max_steps=6", "--extend", "--resume"])
        == 0
    )
    assert json.loads((moved / "log.jsonl").read_text().splitlines()[-1])["step"] == 6
    assert json.loads((moved / "config.json").read_text())["out"] == str(moved)


def test_settings_the_method_ignores_are_named_in_one_warning(base_args, tmp_path, capsys):
    args = [
        "train",
        *base_args,
        f"out={tmp_path / 'run'}",
        "train.max_steps=1",
        "lora.r=4",
        "ia3.target_modules=q_proj",
    ]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the settings ia3.*, lora.* are ignored: method=prompt_tuning does not read them"]


def test_a_key_given_twice_in_a_recipe_is_one_line(base_args, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 0.1\n  max_steps: 2\n  lr: 0.2\n")
    assert main(["train", "--config", str(recipe), *base_args, f"out={tmp_path / 'run'}"]) == 2
    assert _one_line_error(capsys) == f"error: {recipe} line 4: key 'lr' is given twice (also on line 2); keep one"
    assert not (tmp_path / "run").exists()


def test_a_method_without_soft_tokens_uses_the_template_without_its_slots(base_args, tmp_path, capsys):
    assert main(["train", *base_args, "method=lora", f"out={tmp_path / 'run'}", "train.max_steps=1"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "has no soft tokens" in line]
    note = "note: method=lora has no soft tokens; the template is used without its soft slots"
    assert notes == [f"{note}: 'Review: {{text}}\\nSentiment:'"]
    assert json.loads((tmp_path / "run" / "task.json").read_text())["template"] == "Review: {text}\nSentiment:"


def test_a_data_file_name_too_long_to_look_up_does_not_crash_the_run_record(tmp_path):
    from softprompt.training.resume import data_hashes

    # From the fuzzing: in-memory records took precedence, but the unused data.train name was
    # still looked up for its hash, and the system refused the name (ENAMETOOLONG).
    assert data_hashes({"data": {"train": "1" * 400, "dev": "a\0b"}}) == {}
    real = tmp_path / "train.jsonl"
    real.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    assert list(data_hashes({"data": {"train": str(real), "dev": "1" * 400}})) == ["data.train"]
