"""The training loop on a tiny model: learning, resume, divergence, artifacts, peft compatibility."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from softprompt.artifact import read_artifact
from softprompt.config import load_config
from softprompt.errors import SoftpromptError, TrainingDiverged
from softprompt.tasks.loading import load_classifier
from softprompt.training.run import train

from .helpers import EXAMPLES, ctrl_c_at_step


def _config(tiny_llama_dir, files, out, *extra):
    return load_config(
        overrides=[
            f"backbone={tiny_llama_dir}",
            f"data.train={files['train']}",
            f"data.dev={files['dev']}",
            f"data.test={files['test']}",
            f"out={out}",
            "verbalizer={positive: positive, negative: negative}",
            "template='Review: {text}\nSentiment:'",
            "prompt.length=4",
            "prompt.init=vocab",
            "train.batch_size=4",
            "train.patience=0",
            *extra,
        ]
    )


@pytest.mark.slow
def test_loss_goes_down(tiny_llama_dir, sentiment_files, tmp_path):
    cfg = _config(
        tiny_llama_dir, sentiment_files, tmp_path / "run", "train.max_steps=40", "train.eval_every=20", "train.lr=0.05"
    )
    result = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert result.metrics["test"]["n"] == 10
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "task.json",
        "log.jsonl",
        "curves.png",
        "config.json",
        "checkpoint/state.safetensors",
    ):
        assert (tmp_path / "run" / name).is_file(), name


def test_save_load_round_trip_is_exact(tiny_llama_dir, tiny_backbone, sentiment_files, tmp_path):
    cfg = _config(tiny_llama_dir, sentiment_files, tmp_path / "run", "train.max_steps=3", "train.eval_every=3")
    train(cfg, progress=False)
    backbone = tiny_backbone
    model, meta = load_classifier(tmp_path / "run", backbone)
    saved = read_artifact(tmp_path / "run").state["prompt_embeddings"]
    assert torch.equal(model.method.prompt_embeddings.detach(), saved)
    again, _ = load_classifier(tmp_path / "run", backbone)
    batch = model.task.collate([model.task.encode(e) for e in EXAMPLES])
    with torch.no_grad():
        assert torch.equal(model(batch), again(batch))
    assert meta["backbone"]["fingerprint"] == backbone.fingerprint


def test_peft_loads_our_artifact_with_equal_logits(tiny_llama_dir, tiny_backbone, sentiment_files, tmp_path):
    cfg = _config(tiny_llama_dir, sentiment_files, tmp_path / "run", "train.max_steps=3", "train.eval_every=3")
    train(cfg, progress=False)
    config = json.loads((tmp_path / "run/adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    ours, _ = load_classifier(tmp_path / "run", tiny_backbone)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    tok = ours.backbone.tokenizer
    for example in EXAMPLES:
        ids = tok(f"Review: {example.text}\nSentiment:", add_special_tokens=False)["input_ids"]
        word_logps = []
        for candidate in ours.task.candidates:  # peft's full log-probability of each verbalizer word
            with torch.no_grad():
                # peft's logits include the virtual-token positions: drop them
                logits = peft_model(input_ids=torch.tensor([ids + list(candidate.ids)])).logits[0, 4:]
            logp = torch.log_softmax(logits, -1)
            word_logps.append(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(candidate.ids)))
        with torch.no_grad():
            ours_scores = ours(ours.task.collate([ours.task.encode(example)]))[0]
        torch.testing.assert_close(torch.log_softmax(torch.stack(word_logps), -1), ours_scores, atol=1e-5, rtol=1e-5)
        # and the whole next-token distribution, computed our way (soft embeddings + token embeddings)
        ids_tensor = torch.tensor([ids])
        embeds = torch.cat([ours.method.prompt_embeddings[None], ours.model.get_input_embeddings()(ids_tensor)], 1)
        with torch.no_grad():
            torch.testing.assert_close(
                ours.model(inputs_embeds=embeds).logits[0, -1],
                peft_model(input_ids=ids_tensor).logits[0, -1],
                atol=1e-5,
                rtol=1e-5,
            )
    assert any(len(c.ids) > 1 for c in ours.task.candidates)  # multi-token words are covered too


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tiny_llama_dir, sentiment_files, tmp_path):
    steps = ["train.max_steps=6", "train.eval_every=2", "train.lr=0.05"]
    straight = train(_config(tiny_llama_dir, sentiment_files, tmp_path / "a", *steps), progress=False)

    # the 4th step: after the step-2 checkpoint and one more step
    with ctrl_c_at_step(4), pytest.raises(KeyboardInterrupt):
        train(_config(tiny_llama_dir, sentiment_files, tmp_path / "b", *steps), progress=False)
    assert json.loads((tmp_path / "b/task.json").read_text())["step"] == 2  # the last good artifact survived
    resumed = train(_config(tiny_llama_dir, sentiment_files, tmp_path / "b", *steps), resume=True, progress=False)

    a, b = read_artifact(tmp_path / "a"), read_artifact(tmp_path / "b")
    assert torch.equal(a.state["prompt_embeddings"], b.state["prompt_embeddings"])
    assert _log_without_timing(tmp_path / "a") == _log_without_timing(tmp_path / "b")
    assert resumed.metrics["test"] == straight.metrics["test"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_llama_dir, sentiment_files, tmp_path, monkeypatch):
    real_loss = torch.nn.functional.nll_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.functional, "nll_loss", poisoned)
    cfg = _config(tiny_llama_dir, sentiment_files, tmp_path / "run", "train.max_steps=6", "train.eval_every=2")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3; the last good checkpoint \(step 2\)"):
        train(cfg, progress=False)
    assert read_artifact(tmp_path / "run").meta["step"] == 2
    assert (tmp_path / "run/checkpoint/state.safetensors").is_file()


def test_existing_run_is_not_overwritten_silently(tiny_llama_dir, sentiment_files, tmp_path):
    cfg = _config(tiny_llama_dir, sentiment_files, tmp_path / "run", "train.max_steps=1", "train.eval_every=1")
    train(cfg, progress=False)
    with pytest.raises(SoftpromptError, match="already holds a run; use resume=True"):
        train(cfg, progress=False)
    train(cfg, overwrite=True, progress=False)


@pytest.mark.slow
def test_zero_and_few_shot_without_training(tiny_llama_dir, sentiment_files, tmp_path):
    cfg = _config(tiny_llama_dir, sentiment_files, tmp_path / "run", "method=none", "fewshot.k=2")
    result = train(cfg, progress=False)
    meta = read_artifact(tmp_path / "run").meta
    assert meta["demonstrations"].count("Sentiment:") == 2
    assert result.trainable_parameters == 0 and result.metrics["test"]["n"] == 10


def test_l2_penalty_shrinks_the_prompt(tiny_llama_dir, sentiment_files, tmp_path):
    norms = []
    for l2 in (0.0, 1.0):
        cfg = _config(
            tiny_llama_dir,
            sentiment_files,
            tmp_path / f"l2-{l2}",
            "train.max_steps=10",
            "train.eval_every=10",
            "train.lr=0.05",
            f"train.l2={l2}",
        )
        train(cfg, progress=False)
        norms.append(read_artifact(tmp_path / f"l2-{l2}").state["prompt_embeddings"].norm())
    assert norms[1] < norms[0]


def _log_without_timing(run: Path) -> list[dict]:
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in entries]


def test_batches_grouped_by_length_cover_each_sample_once_per_epoch():
    from softprompt.training.batches import GROUP, batch_indices

    count, size = GROUP * 4, 4  # one epoch = one group of GROUP batches
    lengths = [(i * 37) % 23 for i in range(count // 2)] * 2
    batches = [batch_indices(step, size, count // 2 * 2, 0, lengths) for step in range(GROUP)]
    assert sorted(i for b in batches for i in b) == list(range(count))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spread) <= 1  # sorted runs: a batch holds (nearly) equal lengths
    assert batches == [batch_indices(step, size, count, 0, lengths) for step in range(GROUP)]  # resumable


def test_length_grouped_batches_keep_the_class_mix_when_length_goes_with_the_class():
    from softprompt.training.batches import GROUP, batch_indices

    count, size = GROUP * 8, 8
    classes = [i % 2 for i in range(count)]
    lengths = [10 + 40 * c + (i * 7) % 30 for i, c in enumerate(classes)]  # class 1 is always longer
    plain = [batch_indices(step, size, count, 0, lengths) for step in range(GROUP)]
    mixed = [batch_indices(step, size, count, 0, lengths, classes) for step in range(GROUP)]
    assert sorted(i for b in mixed for i in b) == list(range(count))  # each sample once per epoch
    pure = [sum(classes[i] for i in b) in (0, size) for b in plain]
    assert sum(pure) >= GROUP - 1  # plain sorting: one class per batch (bar the one at the border)
    # the pool holds some mix of both classes; every batch is within one sample of it
    share = [sum(classes[i] for i in b) for b in mixed]
    assert max(share) - min(share) <= 1 and min(share) > 0
    # and lengths are still grouped within each class: a batch spans a small part of the range
    longer = [[lengths[i] for i in b if classes[i] == 1] for b in mixed]
    assert max(max(group) - min(group) for group in longer) <= 4


def test_grad_accum_2_of_batch_8_makes_the_update_of_batch_16(tiny_llama_dir, tmp_path):
    """Both draw the same 16 rows per step; two backward passes of 8 add up to one of 16 (the
    rows are padded differently, so float32 rounding differs: tolerance 1e-5)."""
    import softprompt

    from .conftest import NEGATIVE, POSITIVE

    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    prompts = {}
    for name, batching in (("one", {"batch_size": 16}), ("two", {"batch_size": 8, "grad_accum": 2})):
        softprompt.train(
            train_data=rows * 4,
            dev_data=rows,
            backbone=str(tiny_llama_dir),
            template="{soft:3}Review: {text}\nSentiment:",
            verbalizer={"positive": "great", "negative": "bad"},
            train={"max_steps": 3, "eval_every": 3, "lr": 0.05, **batching},
            out=str(tmp_path / name),
            progress=False,
        )
        prompts[name] = read_artifact(tmp_path / name).state["prompt_embeddings"]
    start = softprompt.build(
        backbone=str(tiny_llama_dir),
        template="{soft:3}Review: {text}\nSentiment:",
        verbalizer={"positive": "great", "negative": "bad"},
    ).module.method.soft_embeddings()
    assert start.shape == prompts["one"].shape and (start - prompts["one"]).abs().max() > 1e-3  # it trained
    assert torch.allclose(prompts["one"], prompts["two"], atol=1e-5)


def test_grad_accum_0_is_refused_in_one_line():
    from softprompt.config import load_config
    from softprompt.errors import SoftpromptError

    with pytest.raises(SoftpromptError, match=r"config field 'train\.grad_accum': must be >= 1, got 0"):
        load_config(overrides=["train.grad_accum=0"])


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("prompt_tuning", "{soft:3}Review: {text}\nSentiment:"),  # a leading block (shared when not checkpointed)
        ("prompt_tuning", "Review: {text}{soft:2}\nSentiment:"),  # after the text (frozen prefix when not)
        ("lora", "Review: {text}\nSentiment:"),
    ],
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama_dir, method, template, monkeypatch):
    import transformers.modeling_utils

    from softprompt.backbones import load_backbone

    checkpoint, calls = transformers.modeling_utils.checkpoint, []
    monkeypatch.setattr(
        transformers.modeling_utils, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k)
    )

    from .helpers import EXAMPLES, classifier

    # Its own backbone: LoRA changes the backbone's layers.
    model = classifier(load_backbone(str(tiny_llama_dir)), template, {"positive": "a", "negative": "b"}, method)
    rows = model.training_rows(
        [type(e)(e.fields, label=label) for e, label in zip(EXAMPLES, ["positive", "negative"] * 2, strict=True)],
        model.encode_split(EXAMPLES),
        "test",
    )
    results = []
    for checkpointing in (False, True):
        model.checkpointing = checkpointing
        loss = model.loss(rows)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.trainable_parameters()]))
        model.zero_grad(set_to_none=True)
        assert len(calls) == (2 if checkpointing else 0)  # both layers of the tiny Llama, when on
    (plain, plain_grads), (checked, checked_grads) = results
    torch.testing.assert_close(plain, checked, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in plain_grads)  # (LoRA's A gets none at init: B starts at zero)
    for a, b in zip(plain_grads, checked_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_trains_through_the_loop_and_refuses_prefix_tuning(tiny_llama_dir, tmp_path):
    import softprompt
    from softprompt.errors import SoftpromptError

    from .conftest import NEGATIVE, POSITIVE

    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    common = {"train_data": rows * 4, "dev_data": rows, "backbone": str(tiny_llama_dir), "progress": False}
    common["verbalizer"] = {"positive": "great", "negative": "bad"}
    steps = {"max_steps": 4, "eval_every": 4, "lr": 0.05, "gradient_checkpointing": True}
    result = softprompt.train(
        template="{soft:3}Review: {text}\nSentiment:", train=steps, out=str(tmp_path / "a"), **common
    )
    assert result.metrics["dev"]["n"] == len(rows)
    with pytest.raises(SoftpromptError, match="gradient_checkpointing does not work with method=prefix_tuning"):
        softprompt.train(
            method="prefix_tuning",
            template="Review: {text}\nSentiment:",
            train=steps,
            out=str(tmp_path / "b"),
            **common,
        )


def test_a_run_saved_before_the_compute_settings_existed_still_resumes():
    from softprompt.config import load_config
    from softprompt.training.resume import check_same_run

    requested = load_config(overrides=["out=runs/x"]).to_dict()
    saved = {k: v for k, v in requested.items() if k not in ("precision", "quantize", "device")}
    saved["train"] = {k: v for k, v in requested["train"].items() if k not in ("grad_accum", "gradient_checkpointing")}
    check_same_run(saved, requested)  # the defaults are what such a run used
    with pytest.raises(SoftpromptError, match="precision"):
        check_same_run(saved, {**requested, "precision": "bf16"})


def test_the_schedule_is_transformers_linear_one_but_for_its_first_warmup_step():
    """Why the loop keeps its own lr_lambda: transformers' "linear" schedule starts warm-up at a
    learning rate of 0, so its first optimizer step changes nothing; ours starts at 1/warmup.
    After warm-up the two are the same numbers."""
    import torch
    from transformers import get_scheduler

    from softprompt.training.schedule import lr_lambda

    warmup, total = 5, 40
    ours = lr_lambda(warmup, total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]
    assert theirs(0) == 0.0 and ours(0) == pytest.approx(1 / warmup)
    assert [ours(step) for step in range(warmup - 1)] == pytest.approx([theirs(step + 1) for step in range(warmup - 1)])
    assert [ours(step) for step in range(warmup, total + 3)] == pytest.approx(
        [theirs(step) for step in range(warmup, total + 3)]
    )


@pytest.mark.slow
def test_lr_scheduler_takes_transformers_schedules_and_resumes_them(tiny_llama_dir, sentiment_files, tmp_path):
    """train.lr_scheduler=cosine: the logged learning rates are transformers' cosine schedule; a
    run interrupted mid-way resumes to the same weights and rates; a misspelled name is refused."""
    from transformers import get_scheduler

    steps = ["train.max_steps=6", "train.eval_every=2", "train.lr=0.05", "train.lr_scheduler=cosine"]
    straight = tmp_path / "a"
    train(_config(tiny_llama_dir, sentiment_files, straight, *steps), progress=False)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    cosine = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=6)
    expected = []
    for _ in range(6):
        optimizer.step()
        cosine.step()
        expected.append(cosine.get_last_lr()[0])
    logged = [row["lr"] for row in map(json.loads, (straight / "log.jsonl").read_text().splitlines()) if "lr" in row]
    assert logged == pytest.approx(expected)
    with ctrl_c_at_step(4), pytest.raises(KeyboardInterrupt):
        train(_config(tiny_llama_dir, sentiment_files, tmp_path / "b", *steps), progress=False)
    train(_config(tiny_llama_dir, sentiment_files, tmp_path / "b", *steps), resume=True, progress=False)
    a, b = read_artifact(straight), read_artifact(tmp_path / "b")
    assert torch.equal(a.state["prompt_embeddings"], b.state["prompt_embeddings"])
    assert _log_without_timing(straight) == _log_without_timing(tmp_path / "b")
    with pytest.raises(SoftpromptError, match=r"train.lr_scheduler.*'cosin'.*did you mean 'cosine'"):
        _config(tiny_llama_dir, sentiment_files, tmp_path / "c", "train.lr_scheduler=cosin")


def test_the_progress_bar_shows_no_dev_score_before_the_first_evaluation():
    from softprompt.training.callbacks import ProgressBar
    from softprompt.training.checkpoint import Progress

    bar = ProgressBar(enabled=False)
    bar.on_train_begin(Progress(), 10)
    bar.on_step_end(Progress(step=1), {"loss": 0.5})
    assert bar.bar.postfix == "loss=0.5000"  # not dev=-inf
    bar.on_step_end(Progress(step=2, best_metric=0.75, best_step=2), {"loss": 0.25})
    assert bar.bar.postfix == "loss=0.2500, dev=0.7500"
    bar.on_train_end(Progress(step=2))
