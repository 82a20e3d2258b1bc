"""Continual learning, prompt transfer and prompt reading, on the tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.config.tasklist import task_configs
from softprompt.continual.config import load_continual_config
from softprompt.continual.learners import make_learner
from softprompt.continual.metrics import continual_metrics
from softprompt.continual.runner import run_continual
from softprompt.datasets import load_builtin
from softprompt.errors import SoftpromptError
from softprompt.methods.transfer import read_soft_prompt
from softprompt.tasks.classification.model import label_probabilities
from softprompt.tasks.tasklist import prepare_tasks

from .conftest import NEGATIVE, POSITIVE, SHARED_DATA, make_tiny_llama, write_jsonl

# A second and third task whose label names clash with the first ("positive" / "negative" mean
# something else in each), to check tasks keep their labels apart.
LONG = ["the film runs three long hours", "a long and winding story", "long takes and long scenes"]
SHORT = ["short", "brief", "a short one"]
QUESTION = ["is it good?", "why would anyone watch this?", "who made this?"]
STATEMENT = ["it is good.", "nobody would watch this.", "a studio made this."]


def _task_files(tmp_path, name: str, first: list[str], second: list[str]) -> dict[str, str]:
    rows = [{"text": t, "label": "positive"} for t in first] + [{"text": t, "label": "negative"} for t in second]
    files = {}
    for split, reps in (("train", 4), ("dev", 1), ("test", 1)):
        files[split] = str(write_jsonl(tmp_path / f"{name}-{split}.jsonl", rows * reps))
    return files


def _sequence(tmp_path) -> list[dict]:
    return [
        {
            "name": "sentiment",
            "data": _task_files(tmp_path, "sentiment", POSITIVE, NEGATIVE),
            "verbalizer": {"positive": "positive", "negative": "negative"},
        },
        {
            "name": "length",
            "data": _task_files(tmp_path, "length", LONG, SHORT),
            "template": "Text: {text}\nIs it long?",
            "verbalizer": {"positive": "yes", "negative": "no"},
        },
        {
            "name": "question",
            "data": _task_files(tmp_path, "question", QUESTION, STATEMENT),
            "template": "{text}\nQuestion:",
            "verbalizer": {"positive": "yes", "negative": "no"},
        },
    ]


def _config(tiny_llama_dir, tmp_path, *extra: str, tasks: list[dict] | None = None):
    recipe = {
        "backbone": str(tiny_llama_dir),
        "tasks": tasks if tasks is not None else _sequence(tmp_path),
        "out": str(tmp_path / "run"),
        "prompt": {"length": 2, "init": "vocab"},
        "train": {"lr": 0.05, "batch_size": 4, "max_steps": 6, "eval_every": 3, "patience": 0},
    }
    path = tmp_path / "continual.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    return path, load_continual_config(path, list(extra))


def _task_probabilities(learner, prepared, j: int, stages_done: int) -> torch.Tensor:
    model = learner.classifier(j, stages_done)
    return label_probabilities(model, prepared[j].splits.test)


@pytest.mark.slow
def test_progressive_prompts_leave_earlier_tasks_bit_identical(tiny_llama_dir, tmp_path):
    _, config = _config(tiny_llama_dir, tmp_path)
    results = run_continual(config, progress=False)
    # Rebuild the learner on the finished run and score task 0 with the prompts as saved after
    # stage 1 and after stage 3: the same tensors, bit for bit.
    prepared = prepare_tasks(task_configs(config))
    learner = make_learner(load_backbone(config.backbone), prepared, config)
    after_first = _task_probabilities(learner, prepared, 0, 1)
    after_last = _task_probabilities(learner, prepared, 0, 3)
    assert torch.equal(after_first, after_last)
    stack = [
        read_soft_prompt(tmp_path / "run" / f"stage-{k}-{t['name']}").embeddings
        for k, t in [(1, {"name": "sentiment"}), (3, {"name": "question"})]
    ]
    assert stack[1].shape[0] == 6 and torch.equal(stack[0], stack[1][:2])
    matrix = results["matrix"]
    assert [row[0] for row in matrix[1:]] == [matrix[1][0]] * 3  # never forgotten
    assert results["metrics"]["backward_transfer"] == 0.0
    for name in ("md", "json", "png"):
        assert (tmp_path / "run" / f"continual.{name}").stat().st_size > 0


@pytest.mark.slow
def test_stage_artifacts_load_with_eval(tiny_llama_dir, tmp_path, capsys):
    path, _ = _config(tiny_llama_dir, tmp_path)
    assert main(["continual", "--config", str(path), "--quiet", "train.max_steps=2", "train.eval_every=2"]) == 0
    test_file = tmp_path / "question-test.jsonl"
    assert main(["eval", str(tmp_path / "run" / "stage-3-question"), "--data", str(test_file), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "average final accuracy" in printed and '"accuracy"' in printed


@pytest.mark.parametrize("strategy", ["naive", "replay", "ewc"])
@pytest.mark.slow
def test_shared_lora_strategies_run(strategy, tiny_llama_dir, tmp_path):
    _, config = _config(
        tiny_llama_dir, tmp_path, "method=lora", f"strategy={strategy}", "replay.size=4", "ewc.samples=3"
    )
    results = run_continual(config, progress=False)
    assert len(results["matrix"]) == 4 and all(len(row) == 3 for row in results["matrix"])
    if strategy == "ewc":
        assert (tmp_path / "run" / "stage-1-sentiment" / "ewc.safetensors").is_file()


def test_replay_batches_hold_earlier_tasks_scored_with_their_own_labels(tiny_llama_dir, tmp_path):
    _, config = _config(tiny_llama_dir, tmp_path, "method=lora", "strategy=replay", "replay.size=4")
    prepared = prepare_tasks(task_configs(config))
    learner = make_learner(load_backbone(config.backbone), prepared, config)
    model, rows = learner.stage_model(2)
    replayed = {task for row in rows for task, _ in row[1:]}
    assert replayed == {0, 1}  # the buffer holds both earlier tasks
    # Each item's loss is its own task's: the mixed loss equals the size-weighted sum.
    batch = rows[:2]
    items = [item for row in batch for item in row]
    expected = sum(learner.models[t].loss([r]) for t, r in items) / len(items)
    assert torch.allclose(model.loss(batch), expected, atol=1e-6)


@pytest.mark.slow
def test_ewc_penalty_pulls_towards_the_earlier_weights(tiny_llama_dir, tmp_path):
    _, config = _config(tiny_llama_dir, tmp_path, "method=lora", "strategy=ewc", "ewc.samples=3", "ewc.weight=10")
    prepared = prepare_tasks(task_configs(config))
    learner = make_learner(load_backbone(config.backbone), prepared, config)
    params = learner.method.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    (prepared[0].out).mkdir(parents=True)
    learner.finish_stage(0)
    model, _ = learner.stage_model(1)
    assert float(model.penalty().detach()) == 0.0  # at the anchor
    with torch.no_grad():
        params[0].add_(1.0)
    fisher = learner.ewc_terms[0][0][0]
    assert float(model.penalty().detach()) == pytest.approx(float(10 / 2 * fisher.sum()), rel=1e-5)


def test_metrics_match_hand_computed_values():
    matrix = [
        [0.50, 0.40, 0.30],  # before training
        [0.90, 0.50, 0.35],
        [0.80, 0.85, 0.45],
        [0.70, 0.80, 0.95],
    ]
    metrics = continual_metrics(matrix, alone=[0.90, 0.90, 0.90])
    assert metrics["average_accuracy"] == pytest.approx((0.70 + 0.80 + 0.95) / 3)
    assert metrics["backward_transfer"] == pytest.approx(((0.70 - 0.90) + (0.80 - 0.85)) / 2)
    assert metrics["forward_transfer"] == pytest.approx(((0.50 - 0.40) + (0.45 - 0.30)) / 2)
    assert metrics["forgetting"] == pytest.approx(((0.90 - 0.70) + (0.85 - 0.80)) / 2)
    assert metrics["gap_to_alone"] == pytest.approx((0.70 + 0.80 + 0.95) / 3 - 0.90)


def test_a_missing_stage_file_stops_before_training(tiny_llama_dir, tmp_path):
    tasks = _sequence(tmp_path)
    tasks[2]["data"]["train"] = str(tmp_path / "nowhere.jsonl")
    _, config = _config(tiny_llama_dir, tmp_path, tasks=tasks)
    with pytest.raises(SoftpromptError, match=r"tasks\[2\] \(question\): data file .*nowhere.jsonl does not exist"):
        run_continual(config, progress=False)
    assert not (tmp_path / "run" / "stage-1-sentiment").exists()


def test_duplicate_task_names_and_unknown_keys_are_named(tiny_llama_dir, tmp_path):
    tasks = _sequence(tmp_path)
    tasks[1]["name"] = "sentiment"
    _, config = _config(tiny_llama_dir, tmp_path, tasks=tasks)
    with pytest.raises(SoftpromptError, match=r"tasks\[1\]: task name 'sentiment' is used twice"):
        task_configs(config)
    tasks = _sequence(tmp_path)
    tasks[0]["templat"] = "x"
    _, config = _config(tiny_llama_dir, tmp_path, tasks=tasks)
    with pytest.raises(SoftpromptError, match=r"tasks\[0\]: unknown key 'templat'.*template"):
        task_configs(config)


def test_progressive_refuses_replay(tiny_llama_dir, tmp_path):
    with pytest.raises(SoftpromptError, match="progressive_prompts never updates old prompts"):
        _config(tiny_llama_dir, tmp_path, "strategy=replay")


@pytest.mark.slow
def test_interrupted_sequence_resumes_where_it_stopped(tiny_llama_dir, tmp_path, monkeypatch):
    _, config = _config(tiny_llama_dir, tmp_path)
    reference = run_continual(config, progress=False)["matrix"]
    import softprompt.continual.runner as runner

    real = runner._score_all

    def stop_after_stage_two(learner, tasks, stages_done, cfg):
        if stages_done == 3:
            raise KeyboardInterrupt
        return real(learner, tasks, stages_done, cfg)

    _, config = _config(tiny_llama_dir, tmp_path, "out=" + str(tmp_path / "again"))
    monkeypatch.setattr(runner, "_score_all", stop_after_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_continual(config, progress=False)
    monkeypatch.setattr(runner, "_score_all", real)
    with pytest.raises(SoftpromptError, match="already holds a continual run"):
        run_continual(config, progress=False)
    assert run_continual(config, resume=True, progress=False)["matrix"] == reference


# ---- prompt transfer, similarity, inspection --------------------------------------------------


def _train_prompt(tiny_llama_dir, files, out, *extra):
    args = [
        "train",
        f"backbone={tiny_llama_dir}",
        f"data.train={files['train']}",
        f"data.dev={files['dev']}",
        f"out={out}",
        "verbalizer={positive: positive, negative: negative}",
        "prompt.length=4",
        "prompt.init=vocab",
        "train.max_steps=2",
        "train.eval_every=2",
        "--quiet",
        *extra,
    ]
    assert main(args) == 0
    return out


def test_prompt_init_from_an_artifact_starts_from_its_prompt(tiny_llama_dir, sentiment_files, tmp_path):
    source = _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "source")
    target = _train_prompt(
        tiny_llama_dir,
        sentiment_files,
        tmp_path / "target",
        f"prompt.init=from:{source}",
        "prompt.length=3",
        "train.lr=1e-12",
    )
    start = read_soft_prompt(source).embeddings[:3]  # the stated rule: a longer source's first tokens
    assert torch.allclose(read_soft_prompt(target).embeddings, start, atol=1e-6)


def test_transfer_refuses_a_shorter_source_or_another_backbone(tiny_llama_dir, sentiment_files, tmp_path, capsys):
    source = _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "source")
    args = [
        "train",
        f"backbone={tiny_llama_dir}",
        f"data.train={sentiment_files['train']}",
        "verbalizer={positive: positive, negative: negative}",
        f"prompt.init=from:{source}",
        "train.max_steps=1",
        "--quiet",
    ]
    assert main([*args, "prompt.length=8", f"out={tmp_path / 'a'}"]) == 2
    assert "source prompt has 4 soft tokens, this run needs 8" in capsys.readouterr().err
    other = make_tiny_llama(tmp_path / "other-llama", seed=1)
    assert main([*args, "prompt.length=4", f"backbone={other}", f"out={tmp_path / 'b'}"]) == 2
    assert "only transfers between runs on the same backbone" in capsys.readouterr().err


def test_similarity_ranks_a_prompt_first_against_itself(tiny_llama_dir, sentiment_files, tmp_path, capsys):
    first = _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "first")
    second = _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "second", "seed=7")
    capsys.readouterr()
    assert main(["similarity", str(first), str(second), str(first), "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert ranking[0]["source"] == str(first) and ranking[0]["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert ranking[1]["mean_cosine"] < 1.0


def test_inspect_compare_draws_the_token_similarity_heat_map(tiny_llama_dir, sentiment_files, tmp_path, capsys):
    first = _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "first")
    png = tmp_path / "map.png"
    capsys.readouterr()
    assert main(["inspect", "--compare", str(first), str(first), "--out", str(png)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [4, 4] and summary["same_position_mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert png.read_bytes()[:4] == b"\x89PNG"


# ---- the sequence's built-in datasets --------------------------------------------------------


def test_rt_subjectivity_is_balanced_plot_sentences_vs_review_snippets():
    splits = load_builtin("rt-subjectivity")
    test = splits["test"]
    counts = {label: sum(e.label == label for e in test) for label in ("objective", "subjective")}
    assert len(test) == 1000 and min(counts.values()) > 400
    assert all("\n" not in e.text and 5 <= len(e.text.split()) <= 60 for e in test if e.label == "objective")
    seen = {e.text for split in splits.values() for e in split}
    assert len(seen) == sum(len(split) for split in splits.values())  # no text in two splits


def test_paradetox_toxicity_needs_its_path():
    with pytest.raises(SoftpromptError, match=r"set data\.path=<that file>"):
        load_builtin("paradetox-toxicity")


@pytest.mark.skipif(not (SHARED_DATA / "paradetox" / "paradetox.tsv").is_file(), reason="needs ../shared/data")
def test_paradetox_toxicity_reads_one_side_of_each_pair():
    splits = load_builtin("paradetox-toxicity", SHARED_DATA / "paradetox" / "paradetox.tsv")
    labels = [e.label for e in splits["train"]]
    assert abs(labels.count("toxic") - labels.count("neutral")) < 0.1 * len(labels)
