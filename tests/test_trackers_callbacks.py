"""Experiment trackers (train.report_to, read back from TensorBoard's event files) and the
callbacks of the Python API, which the loop's progress bar and early stopping also are."""

from __future__ import annotations

import json

import pytest

import softprompt
from softprompt.cli import main
from softprompt.training.callbacks import Callback, EarlyStopping, ProgressBar

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _scalars(run_dir) -> dict[str, dict[int, float]]:
    [events] = [p.parent for p in (run_dir / "trackers").rglob("events.out.tfevents.*") if "hparams" not in str(p)][:1]
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_gets_the_steps_the_dev_and_the_test_scores(base_args, tmp_path):
    out = tmp_path / "tb-run"
    args = ["train", *base_args, f"out={out}", "train.max_steps=4", "train.eval_every=2", "train.report_to=tensorboard"]
    args.append("train.zero_shot_baseline=true")
    assert main(args) == 0
    scalars = _scalars(out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = {entry["step"]: entry["loss"] for entry in log if "loss" in entry}
    assert scalars["train/loss"].keys() == losses.keys() == {1, 2, 3, 4}
    for step, loss in losses.items():
        assert scalars["train/loss"][step] == pytest.approx(loss, abs=1e-5)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "train/peak_memory_mb"} <= set(scalars)
    assert all(value > 0 for value in scalars["train/tokens_per_second"].values())
    dev = {entry["step"]: entry["dev"] for entry in log if "dev" in entry}
    assert {step: pytest.approx(value) for step, value in scalars["dev/accuracy"].items()} == dev
    meta = json.loads((out / "task.json").read_text())
    assert list(scalars["test/accuracy"].values()) == [pytest.approx(meta["metrics"]["test"]["accuracy"])]
    assert "zero_shot_test/accuracy" in scalars  # the baselines too
    hparams = list((out / "trackers").rglob("hparams.yml"))
    assert hparams and "train.lr: " in hparams[0].read_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tensorbord", "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)"),
        ("tensorboard,clearml", "the clearml tracker is not installed: pip install clearml"),
    ],
)
def test_a_bad_tracker_is_one_line_before_anything_is_written(base_args, tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert main(["train", *base_args, f"out={out}", f"train.report_to={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not out.exists()


def test_other_training_commands_report_too(tiny_llama_dir, tmp_path):
    from .test_continual import _sequence

    recipe = {
        "backbone": str(tiny_llama_dir),
        "tasks": _sequence(tmp_path)[:2],
        "out": str(tmp_path / "multi"),
        "prompt": {"length": 2, "init": "vocab"},
        "train": {"lr": 0.05, "batch_size": 6, "max_steps": 2, "eval_every": 2, "report_to": ["tensorboard"]},
    }
    path = tmp_path / "multitask.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    assert main(["multitask", "--config", str(path), "--quiet"]) == 0
    assert set(_scalars(tmp_path / "multi")["train/loss"]) == {1, 2}


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.calls = stop_at, []

    def on_train_begin(self, state, max_steps):
        self.calls.append(("begin", state.step, max_steps))

    def on_step_end(self, state, logs):
        self.calls.append(("step", state.step, round(logs["loss"], 6)))
        return self.stop_at is not None and state.step >= self.stop_at

    def on_evaluate(self, state, metrics, improved):
        self.calls.append(("evaluate", state.step, metrics["accuracy"], improved))

    def on_train_end(self, state):
        self.calls.append(("end", state.step))


def _settings(tiny_llama_dir, out):
    return {
        "backbone": str(tiny_llama_dir),
        "verbalizer": {"positive": "positive", "negative": "negative"},
        "template": "Review: {text}\nSentiment:{soft:2}",
        "prompt": {"init": "vocab"},
        "train": {"batch_size": 4, "max_steps": 6, "eval_every": 2, "patience": 0},
        "out": str(out),
    }


def test_callbacks_see_every_step_and_evaluation_and_can_stop(tiny_llama_dir, tmp_path):
    from .conftest import NEGATIVE, POSITIVE

    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    recorder = Recorder()
    softprompt.train(
        train_data=rows * 2, callbacks=[recorder], progress=False, **_settings(tiny_llama_dir, tmp_path / "a")
    )
    kinds = [call[0] for call in recorder.calls]
    assert kinds == ["begin", "step", "step", "evaluate", "step", "step", "evaluate", "step", "step", "evaluate", "end"]
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [c[2] for c in recorder.calls if c[0] == "step"] == [e["loss"] for e in log if "loss" in e]
    stopper = Recorder(stop_at=3)
    result = softprompt.train(
        train_data=rows * 2, callbacks=[stopper], progress=False, **_settings(tiny_llama_dir, tmp_path / "b")
    )
    assert stopper.calls[-1] == ("end", 3) and result.best_step == 2
    with pytest.raises(softprompt.SoftpromptError, match="callbacks must be a list"):
        softprompt.train(train_data=rows, callbacks=stopper, **_settings(tiny_llama_dir, tmp_path / "c"))


def test_a_trainer_callback_plugs_in_and_can_stop_the_loop(tiny_llama_dir, tmp_path):
    """A transformers TrainerCallback, as Trainer users write them: it gets (args, state, control)
    with the run's settings, every step's logs, the dev metrics as eval_*, and stops the loop with
    control.should_training_stop. Something with none of the hooks is refused in one line."""
    from transformers import TrainerCallback

    from .conftest import NEGATIVE, POSITIVE

    class Watcher(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.seen.append(("begin", args.learning_rate, args.max_steps, state.max_steps))

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(("log", state.global_step, round(logs["loss"], 6)))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.seen.append(("evaluate", state.global_step, metrics["eval_accuracy"], state.best_global_step))
            if state.global_step >= 4:
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            self.seen.append(("end", state.global_step))

    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    watcher = Watcher()
    settings = _settings(tiny_llama_dir, tmp_path / "a")
    settings["train"]["lr"] = 0.02
    softprompt.train(train_data=rows * 2, callbacks=[watcher], progress=False, **settings)
    assert watcher.seen[0] == ("begin", 0.02, 6, 6) and watcher.seen[-1] == ("end", 4)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [e[2] for e in watcher.seen if e[0] == "log"] == [e["loss"] for e in log if "loss" in e]
    evaluations = [e for e in watcher.seen if e[0] == "evaluate"]
    assert [e[1] for e in evaluations] == [2, 4]  # stopped at step 4 of 6
    assert [e[2] for e in evaluations] == [e["dev"] for e in log if "dev" in e]
    with pytest.raises(softprompt.SoftpromptError, match=r"callbacks\[0\]: a str has none of the loop's hooks"):
        softprompt.train(train_data=rows, callbacks=["print"], **_settings(tiny_llama_dir, tmp_path / "c"))


def test_early_stopping_is_a_callback_that_counts_evaluations_without_a_new_best():
    from softprompt.training.checkpoint import Progress

    state = Progress(evals_without_improvement=2)
    assert EarlyStopping(2).on_evaluate(state, {}, False) and not EarlyStopping(3).on_evaluate(state, {}, False)
    assert not EarlyStopping(0).on_evaluate(state, {}, False)  # 0: never
    bar = ProgressBar(enabled=True)
    bar.on_train_begin(Progress(step=2), 10)
    bar.on_step_end(Progress(step=3), {"loss": 0.5})
    assert bar.bar.n == 3 and bar.bar.total == 10
    bar.on_train_end(Progress(step=3))


@pytest.mark.slow
def test_mlflow_local_store_holds_the_runs_metrics(base_args, tmp_path):
    """MLflow with a local store (its default since 3.x: an SQLite file; its file-system store is in
    maintenance mode and refused by default): the run's parameters and metric histories are read
    back with MLflow's own client and equal log.jsonl's."""
    pytest.importorskip("mlflow")
    import json
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    out, store = tmp_path / "mlflow-run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    command = [sys.executable, "-m", "softprompt", "train", *base_args, f"out={out}", "train.max_steps=4"]
    command += ["train.eval_every=2", "train.report_to=mlflow"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=store)
    [experiment] = [e for e in client.search_experiments() if e.name == "mlflow-run"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["train.max_steps"] == "4" and run.data.params["train.lr"]
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([row["loss"] for row in logged if "loss" in row], rel=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "dev/accuracy")) == 2
    assert "test/accuracy" in run.data.metrics


@pytest.mark.slow
def test_wandb_offline_records_the_run(base_args, tmp_path):
    """W&B in offline mode. Its run file is wandb's own binary format: the test looks for the
    logged keys in it."""
    pytest.importorskip("wandb")
    import os
    import subprocess
    import sys

    out = tmp_path / "wb-run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "softprompt", "train", *base_args, f"out={out}", "train.max_steps=4"]
    command += ["train.eval_every=2", "train.report_to=wandb"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    [record] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    for key in (b"train/loss", b"train/tokens_per_second", b"dev/accuracy", b"test/accuracy", b"train.lr"):
        assert key in data, key
