"""``softprompt retrain`` (issue 40, part 3): a served version continued on its task's feedback,
guarded by replay (or EWC), judged by the gate (held-out newest feedback + the parent's dev
split), written whole with its lineage; and each bad input refused in one line, before torch.

The parent is the tiny random Llama, so a run's figures are noise: the tests that need a verdict
fix it by choosing the held-out labels against the parent's own answers (the parent then scores
0 there) and the dev tolerance (``retrain.max_dev_drop``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import softprompt
from softprompt.cli import main
from softprompt.lifecycle.gate import gate_metric, judge, verdict
from softprompt.lifecycle.plan import held_out_count
from softprompt.lifecycle.store import Captured, Feedback, Store

from .conftest import NEGATIVE, POSITIVE, write_jsonl
from .helpers import ctrl_c_at_step, train_served_tasks

TEXTS = [f"{word} film, take {i}" for i, word in enumerate(["great", "dull", "superb", "awful", "fine"] * 2)]
OTHER = {"positive": "negative", "negative": "positive"}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    return train_served_tasks(tmp_path_factory.mktemp("served"), tiny_llama_dir)


@pytest.fixture(scope="module")
def parent_answers(tasks_dir) -> list[str]:
    """The served classifier's own labels for TEXTS."""
    return [row["label"] for row in softprompt.load(tasks_dir / "sentiment").predict(TEXTS)]


def make_store(path: Path, task: str, rows: list[dict], kind: str = "classify") -> str:
    """A capture store holding one served request per row and a feedback on it (``label`` or
    ``output``), ids r0, r1... and times 1000, 1001..."""
    store = Store(str(path))
    route = "classify" if kind == "classify" else "generate"
    store.write(
        [Captured(f"r{i}", task, "v0", route, row["text"], {}, 1.0, time=1000.0 + i) for i, row in enumerate(rows)]
    )
    for i, row in enumerate(rows):
        given = {k: row.get(k) for k in ("label", "output", "score")}
        store.add_feedback(Feedback(task, kind, row["text"], f"r{i}", "v0", time=1000.0 + i, **given))
    store.close()
    return str(path)


def labelled(parent_answers: list[str], held_wrong: bool = True) -> list[dict]:
    """Label feedback on TEXTS: the older ones any label, the newest two (held out) the label the
    parent did not answer, so that the parent scores 0 on them (``held_wrong``)."""
    rows = [{"text": t, "label": "positive" if i % 2 == 0 else "negative"} for i, t in enumerate(TEXTS)]
    if held_wrong:
        for row, answer in zip(rows[-2:], parent_answers[-2:], strict=True):
            row["label"] = OTHER[answer]
    return rows


def record(folder: Path) -> dict:
    return json.loads((folder / "task.json").read_text(encoding="utf-8"))


def retrain_args(artifact: Path, db: str, out: Path, *more: str) -> list[str]:
    return ["retrain", str(artifact), "--db", db, f"out={out}", "train.max_steps=2", "--quiet", *more]


def exit_status(argv: list[str]) -> int:
    """The command's exit status, whether it returns it or exits with it (a failed gate: 3)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_retrain_writes_a_whole_artifact_with_its_lineage_and_it_serves(tasks_dir, parent_answers, tmp_path, capsys):
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    out = tmp_path / "versions" / "sentiment-2"
    status = main(retrain_args(tasks_dir / "sentiment", db, out, "retrain.max_dev_drop=1"))
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "\ngate passed: held-out feedback accuracy" in printed.out
    assert sorted(p.name for p in out.parent.iterdir()) == ["sentiment-2"]  # no staging folder left
    assert {"task.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint").exists()
    meta, parent = record(out), record(tasks_dir / "sentiment")
    lineage = meta["lineage"]
    assert lineage["parent"]["weights_sha256"] == parent["weights_sha256"] and lineage["parent"]["continued"]
    assert meta["weights_sha256"] != parent["weights_sha256"]  # trained on from the parent's prompt
    assert lineage["task"] == "sentiment" and lineage["store"] == db
    train, held = lineage["feedback"]["train"], lineage["feedback"]["held_out"]
    assert (train["count"], held["count"]) == (8, 2)
    assert (train["first_request_id"], train["last_request_id"], held["first_request_id"]) == ("r0", "r7", "r8")
    assert (train["first_time"], train["last_time"], held["last_time"]) == (1000.0, 1007.0, 1009.0)
    assert train["first_seq"] == 1 and held["last_seq"] == 10
    assert lineage["guard"] == {"kind": "replay", "rows": 8, "per_feedback_row": 1.0, "data": parent["data"]["train"]}
    gate = lineage["gate"]
    assert gate["metric"] == "accuracy" and gate["passed"] and gate["failed"] == []
    assert gate["held_out"]["parent"] == 0.0 and gate["held_out"]["n"] == 2
    assert gate["dev"]["n"] == 10 and 0 <= gate["dev"]["candidate"] <= 1
    assert meta["config"]["out"] == str(out) and meta["data"] == parent["data"]  # its own data: the parent's
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Lineage" in card and parent["weights_sha256"][:16] in card and "gate passed" in card
    assert main(["predict", str(out), "a great movie"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert answer["label"] in ("positive", "negative")


def test_a_failed_gate_exits_3_naming_the_figure_and_still_writes_the_version(
    tasks_dir, parent_answers, tmp_path, capsys
):
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    out = tmp_path / "sentiment-2"
    # A negative tolerance asks the candidate to beat the parent's dev accuracy by 100 points.
    with pytest.raises(SystemExit) as stopped:
        main(retrain_args(tasks_dir / "sentiment", db, out, "retrain.max_dev_drop=-1"))
    assert stopped.value.code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("gate failed: dev accuracy") and "at least 100.0 points higher" in err
    assert "lineage.gate.passed=false" in err and "held-out" not in err  # the held-out figure held
    gate = record(out)["lineage"]["gate"]
    assert gate["passed"] is False and gate["failed"] == ["dev"]


def test_the_gate_compares_held_out_feedback_and_dev_with_the_tolerance():
    accuracy, chrf = gate_metric("classify"), gate_metric("generate")
    assert accuracy.allowed_drop == 0.005 and chrf.allowed_drop == 0.01  # chrF / 100: 1 point
    same = {"parent": 0.8, "candidate": 0.8, "n": 10}
    assert judge(accuracy, same, {"parent": 0.9, "candidate": 0.896, "n": 500})["passed"]
    dropped = judge(accuracy, same, {"parent": 0.9, "candidate": 0.894, "n": 500})
    assert dropped["failed"] == ["dev"]
    worse = judge(accuracy, {"parent": 0.8, "candidate": 0.7, "n": 10}, {"parent": 0.9, "candidate": 0.9, "n": 5})
    assert worse["failed"] == ["held_out"]
    assert verdict(accuracy, worse) == (
        "gate failed: held-out feedback accuracy 70.0% vs the parent's 80.0% (n=10; it must not be lower)"
    )
    assert judge(chrf, {"parent": 0.4, "candidate": 0.4, "n": 3}, {"parent": 0.5, "candidate": 0.492, "n": 8})["passed"]
    assert [held_out_count(n, 0.2) for n in (2, 5, 10, 12, 100)] == [1, 1, 2, 2, 20]


def test_a_zero_shot_parent_starts_a_prompt(tasks_dir, tiny_llama_dir, parent_answers, tmp_path):
    reviews = write_jsonl(tmp_path / "reviews.jsonl", [{"text": t, "label": "positive"} for t in POSITIVE * 2])
    zero = tmp_path / "served" / "sentiment"
    run = ["train", f"backbone={tiny_llama_dir}", f"data.train={reviews}", f"data.dev={reviews}", "method=none"]
    prompt = ["template=Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    assert main([*run, *prompt, f"out={zero}", "--quiet"]) == 0
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers, held_wrong=False))
    result = softprompt.retrain(
        zero, db, tmp_path / "v2", progress=False, train={"max_steps": 2}, prompt={"length": 3}
    )  # the Python API: the same run as the command
    meta = record(tmp_path / "v2")
    assert meta["method"] == "prompt_tuning" and meta["template"].startswith("{soft:3}")
    assert meta["trainable_parameters"] > 0
    assert result.lineage["parent"]["method"] == "none" and not result.lineage["parent"]["continued"]
    assert result.passed == meta["lineage"]["gate"]["passed"]
    # The zero-shot parent never read its training split's labels: nothing is replayed from it,
    # and neither will a retrain of this version replay them.
    assert meta["lineage"]["guard"] == {"kind": "none"}
    result = softprompt.retrain(
        tmp_path / "v2", db, tmp_path / "v3", task="sentiment", progress=False, train={"max_steps": 1}
    )
    assert result.lineage["guard"] == {"kind": "none"}


def test_ewc_guards_instead_of_replay(tasks_dir, parent_answers, tmp_path, capsys):
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    out = tmp_path / "sentiment-ewc"
    more = ("retrain.guard=ewc", "retrain.ewc.samples=4", "retrain.max_dev_drop=1")
    assert main(retrain_args(tasks_dir / "sentiment", db, out, *more)) == 0, capsys.readouterr().err
    guard = record(out)["lineage"]["guard"]
    assert guard["kind"] == "ewc" and guard["samples"] == 4


@pytest.mark.slow
def test_a_built_in_dataset_is_replayed_from_the_dataset_itself(tiny_llama_dir, parent_answers, tmp_path, capsys):
    artifact = tmp_path / "reviews"
    run = [
        "train",
        f"backbone={tiny_llama_dir}",
        "dataset=rotten-tomatoes",
        "data.max_train=16",
        "data.max_eval=8",
        "train.max_steps=1",
    ]
    assert main([*run, "template={soft:2}Review: {text}\\nSentiment:", f"out={artifact}", "--quiet"]) == 0
    db = make_store(tmp_path / "capture.db", "reviews", labelled(parent_answers, held_wrong=False))
    status = exit_status(retrain_args(artifact, db, tmp_path / "reviews-2", "retrain.replay=0.5"))
    assert status in (0, 3), capsys.readouterr().err
    lineage = record(tmp_path / "reviews-2")["lineage"]
    assert lineage["guard"] == {"kind": "replay", "rows": 4, "per_feedback_row": 0.5, "data": "rotten-tomatoes"}
    assert lineage["gate"]["dev"]["n"] == 8  # the parent's own dev split: data.max_eval=8 of the dataset's


def test_a_generation_task_retrains_on_corrected_outputs_with_a_chrf_gate(tasks_dir, tmp_path, capsys):
    rows = [{"text": f"shut up you fool number {i}", "output": f"please be quiet, friend {i}"} for i in range(5)]
    db = make_store(tmp_path / "capture.db", "polite", rows, kind="generate")
    out = tmp_path / "polite-2"
    status = exit_status(retrain_args(tasks_dir / "polite", db, out))
    assert status in (0, 3), capsys.readouterr().err  # a random model's candidate may fail the gate
    lineage = record(out)["lineage"]
    assert lineage["gate"]["metric"] == "chrf" and lineage["gate"]["held_out"]["n"] == 1
    assert lineage["feedback"]["train"]["count"] == 4 and lineage["gate"]["dev"]["n"] == 8
    assert lineage["gate"]["passed"] == (status == 0)
    assert all(
        0 <= lineage["gate"][part][side] <= 1 for part in ("held_out", "dev") for side in ("parent", "candidate")
    )
    # The classifier named with the writer's task: its feedback is corrected texts, not labels.
    assert main(retrain_args(tasks_dir / "sentiment", db, tmp_path / "x", "--task", "polite")) == 2
    err = capsys.readouterr().err
    assert "is a classification model, but the feedback for task 'polite'" in err and "is generate feedback" in err
    assert not (tmp_path / "x").exists()


def test_no_feedback_or_feedback_for_another_task_only_is_one_line(tasks_dir, tmp_path, capsys):
    empty = tmp_path / "empty.db"
    Store(str(empty)).close()
    assert main(retrain_args(tasks_dir / "sentiment", str(empty), tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no feedback for task 'sentiment' in {empty}; it holds no feedback yet " + (
        "(POST /v1/feedback to the server)"
    )
    other = make_store(tmp_path / "other.db", "reviews", [{"text": "a great film", "label": "positive"}] * 3)
    assert main(retrain_args(tasks_dir / "sentiment", other, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "no feedback for task 'sentiment'" in err and "it holds feedback for: reviews (give --task NAME)" in err
    scored = make_store(tmp_path / "scored.db", "sentiment", [{"text": "meh", "score": -1.0}] * 3)
    assert main(retrain_args(tasks_dir / "sentiment", scored, tmp_path / "out")) == 2
    assert "none with a right answer to train on" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_data_that_moved_or_changed_says_what_replay_needs(tiny_llama_dir, parent_answers, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    train, dev = write_jsonl(data / "train.jsonl", rows), write_jsonl(data / "dev.jsonl", rows)
    artifact = tmp_path / "served" / "sentiment"
    prompt = ["template={soft:2}Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    run = ["train", f"backbone={tiny_llama_dir}", f"data.train={train}", f"data.dev={dev}", *prompt]
    assert main([*run, "train.max_steps=1", "prompt.init=vocab", f"out={artifact}", "--quiet"]) == 0
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    moved = train.rename(data / "elsewhere.jsonl")
    assert main(retrain_args(artifact, db, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: data.train {train} is not there (moved?): replay reads the parent's own training data; give "
        "data.train=PATH of that file, or retrain.replay=0 to train on the feedback alone"
    )
    write_jsonl(train, rows[:3])  # back in place, but other rows than the parent trained on
    assert main(retrain_args(artifact, db, tmp_path / "out")) == 2
    assert "differs from the file the parent trained on" in capsys.readouterr().err
    dev.unlink()
    assert main(retrain_args(artifact, db, tmp_path / "out", "retrain.replay=0")) == 2
    assert "the gate scores the parent's own dev split; give data.dev=PATH" in capsys.readouterr().err
    shutil.copy(moved, dev)
    status = exit_status(retrain_args(artifact, db, tmp_path / "out", f"data.train={moved}"))  # where it is now
    assert status in (0, 3), capsys.readouterr().err
    assert record(tmp_path / "out")["lineage"]["guard"]["data"] == str(moved)


def test_an_out_in_use_is_refused_unless_overwrite_and_an_interrupted_run_leaves_nothing(
    tasks_dir, parent_answers, tmp_path, capsys
):
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(retrain_args(tasks_dir / "sentiment", db, out)) == 2
    assert "is not empty; give another out=, or --overwrite" in capsys.readouterr().err
    assert main(retrain_args(tasks_dir / "sentiment", db, tasks_dir / "sentiment")) == 2
    assert "is the parent artifact itself" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    with ctrl_c_at_step(1):
        assert main(retrain_args(tasks_dir / "sentiment", db, fresh)) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.db", "taken"]  # no half version
    assert "nothing was written to" in capsys.readouterr().err
    more = ("--overwrite", "retrain.max_dev_drop=1")
    assert main(retrain_args(tasks_dir / "sentiment", db, out, *more)) == 0, capsys.readouterr().err
    assert not (out / "notes.txt").exists() and record(out)["lineage"]["gate"]["passed"]


def test_a_diverged_loss_writes_nothing_and_is_a_user_error(tasks_dir, parent_answers, tmp_path, capsys, monkeypatch):
    import softprompt.lifecycle.retrain as retraining
    from softprompt.errors import TrainingDiverged

    def diverge(job, resume=False, progress=True):
        job.out.mkdir(parents=True)
        (job.out / "task.json").write_text("{}", encoding="utf-8")  # half a version, in the staging folder
        raise TrainingDiverged("loss became nan at step 1, before the first checkpoint; lower train.lr")

    monkeypatch.setattr(retraining, "run_job", diverge)
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    assert main(retrain_args(tasks_dir / "sentiment", db, tmp_path / "v2", "train.lr=100")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: loss became nan at step 1 while retraining; nothing was written to {tmp_path / 'v2'}; "
        "lower train.lr (now 100.0)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.db"]


PROBE = r"""
import contextlib, io, json, sys
from softprompt.cli import main

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue().strip()

artifact, db = sys.argv[1], sys.argv[2]
errors = [
    run(["retrain", artifact, "--db", db]),
    run(["retrain", artifact, "--db", db, "out=x", "retrain.guard=forget"]),
    run(["retrain", artifact, "--db", db, "out=x", "train.lr=-1"]),
    run(["retrain", artifact, "--db", db + ".missing", "out=x"]),
    run(["retrain", artifact, "--db", db, "out=x", "--task", "nobody"]),
]
print(json.dumps({"errors": errors, "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def test_mistakes_are_refused_before_torch_loads(tasks_dir, parent_answers, tmp_path):
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tasks_dir / "sentiment"), db],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["heavy"] == []
    assert [status for status, _ in found["errors"]] == [2] * 5
    messages = [err for _, err in found["errors"]]
    assert all(len(m.splitlines()) == 1 and m.startswith("error: ") for m in messages)
    assert "give out=DIR" in messages[0] and "retrain.guard" in messages[1] and "train.lr" in messages[2]
    assert "no such file" in messages[3] and "no feedback for task 'nobody'" in messages[4]


def test_a_lora_parent_is_refused_in_one_line(tiny_llama_dir, parent_answers, tmp_path, capsys):
    """A served LoRA task: retrain does not continue it (it would load two LoRAs on one backbone);
    the line says what to do instead."""
    reviews = write_jsonl(tmp_path / "reviews.jsonl", [{"text": t, "label": "positive"} for t in POSITIVE * 2])
    parent = tmp_path / "served" / "sentiment"
    run = ["train", f"backbone={tiny_llama_dir}", f"data.train={reviews}", f"data.dev={reviews}", "method=lora"]
    prompt = ["template=Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    assert main([*run, *prompt, "train.max_steps=1", f"out={parent}", "--quiet"]) == 0
    db = make_store(tmp_path / "capture.db", "sentiment", labelled(parent_answers))
    capsys.readouterr()
    assert exit_status(retrain_args(parent, db, tmp_path / "v2")) == 2
    err = capsys.readouterr().err
    assert "method=lora changes the backbone's layers" in err and "softprompt train" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "v2").exists()
