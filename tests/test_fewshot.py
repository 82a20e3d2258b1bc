"""Few-shot demonstrations: balanced, random and similar (KATE) selection, their order, and the
artifact that chooses after loading exactly as the run did."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from softprompt.cli import main
from softprompt.config import FewshotConfig
from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.tasks import fewshot
from softprompt.tasks.classification.model import label_probabilities
from softprompt.tasks.fewshot import Demo, choose_demonstrations, fixed_demonstrations
from softprompt.tasks.loading import load_model

from .conftest import write_jsonl

POOL = [Demo(f"text {i}", f"block {i}", "pos" if i % 2 else "neg") for i in range(10)]


def test_balanced_draws_the_labels_in_turn_and_every_draw_follows_the_seed():
    balanced = fixed_demonstrations(POOL, 4, "balanced", seed=0, labels=["pos", "neg"])
    blocks = balanced.split("\n\n")[:-1]
    assert len(blocks) == 4 and balanced.endswith("\n\n")
    labels = [POOL[int(b.split()[1])].label for b in blocks]
    assert sorted(labels) == ["neg", "neg", "pos", "pos"]
    assert balanced == fixed_demonstrations(POOL, 4, "balanced", seed=0, labels=["pos", "neg"])
    random_draw = fixed_demonstrations(POOL, 4, "random", seed=0, labels=["pos", "neg"])
    assert random_draw == fixed_demonstrations(POOL, 4, "random", seed=0)
    assert {random_draw, fixed_demonstrations(POOL, 4, "random", seed=1)} != {random_draw}
    assert fixed_demonstrations(POOL, 0, "random", seed=0) == ""


def _planted_embedding(monkeypatch):
    """Text i sits at angle i/10 on a circle, so nearness is |i - j|: known by hand."""

    def embed(texts, name):
        angles = np.array([float(t.split()[-1]) / 10 for t in texts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    monkeypatch.setattr(fewshot, "embed", embed)


@pytest.mark.parametrize(
    ("order", "expected"),
    # The input "text 3.4" is nearest to 3 (0.4 away), then 4 (0.6), then 2 (1.4).
    [("nearest_last", ["block 2", "block 4", "block 3"]), ("nearest_first", ["block 3", "block 4", "block 2"])],
)
def test_similar_chooses_the_nearest_rows_but_never_the_input_itself(monkeypatch, order, expected):
    _planted_embedding(monkeypatch)
    config = FewshotConfig(k=3, select="similar", order=order)
    fixed, chooser = choose_demonstrations(POOL, config, seed=0, fields=["text"])
    assert fixed == "" and chooser is not None
    assert chooser.for_input({"text": "text 3.4"}).split("\n\n")[:-1] == expected
    # "text 3" is in the pool: its neighbours are 2 and 4, then 1 or 5 (equally near), never itself.
    itself = set(chooser.for_input({"text": "text 3"}).split("\n\n")[:-1])
    assert {"block 2", "block 4"} < itself and len(itself - {"block 2", "block 4"} - {"block 1", "block 5"}) == 0


def test_similar_shuffles_by_seed_and_input_and_draws_its_pool_by_seed(monkeypatch):
    _planted_embedding(monkeypatch)
    config = FewshotConfig(k=4, select="similar", order="shuffled")
    chooser = choose_demonstrations(POOL, config, seed=0, fields=["text"])[1]
    first = chooser.for_input({"text": "text 5.2"})
    assert first == chooser.for_input({"text": "text 5.2"})
    assert sorted(first.split("\n\n")[:-1]) == ["block 4", "block 5", "block 6", "block 7"]
    small = choose_demonstrations(POOL, FewshotConfig(k=2, select="similar", pool=3), seed=0, fields=["text"])[1]
    assert (
        len(small.pool) == 3
        and small.pool
        == choose_demonstrations(POOL, FewshotConfig(k=2, select="similar", pool=3), seed=0, fields=["text"])[1].pool
    )


@pytest.mark.slow
def test_similar_demonstrations_train_predict_evaluate_and_serve_from_the_artifact(
    tiny_llama_dir, tiny_bert_dir, tiny_backbone, sentiment_files, tmp_path, capsys
):
    from softprompt.serving.service import Service
    from softprompt.tasks.classification.mixed import classify_mixed

    out = tmp_path / "prompts" / "kate"
    data = [f"data.{split}={path}" for split, path in sentiment_files.items()]
    settings = ["fewshot.k=2", "fewshot.select=similar", f"fewshot.embedder={tiny_bert_dir}"]
    args = ["train", f"backbone={tiny_llama_dir}", "method=none", "verbalizer={positive: positive, negative: negative}"]
    assert main([*args, *data, *settings, "template=Review: {text}\\nSentiment:", f"out={out}", "--quiet"]) == 0
    meta = json.loads((out / "task.json").read_text())
    record = meta["fewshot"]
    assert (record["select"], record["k"], record["order"]) == ("similar", 2, "nearest_last")
    train_rows = [json.loads(line) for line in sentiment_files["train"].read_text().splitlines()]
    assert len(record["pool"]) == len(train_rows)
    assert f"the 2 nearest of {len(train_rows)} training rows" in (out / "README.md").read_text()
    model, _ = load_model(out)
    chooser = model.task.chooser
    texts = ["a warm and funny film", "dull, slow and far too long"]
    for text in texts:
        # By hand: the two pool rows with the highest cosine under the same embedder.
        vectors = fewshot.embed([d["query"] for d in record["pool"]], str(tiny_bert_dir))
        likeness = vectors @ fewshot.embed([text], str(tiny_bert_dir))[0]
        nearest = [record["pool"][i]["block"] for i in np.argsort(-likeness, kind="stable")[:2]]
        assert chooser.for_input({"text": text}) == "".join(b + "\n\n" for b in reversed(nearest))
    expected = label_probabilities(model, [Example({"text": t}) for t in texts])
    capsys.readouterr()
    assert main(["predict", str(out), *texts]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    labels = model.task.labels
    for got, want in zip(predicted, expected, strict=True):
        assert [got["scores"][label] for label in labels] == pytest.approx(want.tolist(), abs=1e-5)
    service = Service(tiny_backbone, out.parent)
    served = classify_mixed(service.tasks.mixed, [("kate", Example({"text": t})) for t in texts])
    assert np.allclose(np.stack([row.numpy() for row in served]), expected.numpy(), atol=1e-5)
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == meta["metrics"]["test"]["accuracy"]


@pytest.mark.slow
def test_similar_demonstrations_for_generation_are_chosen_per_input(tiny_llama_dir, tiny_bert_dir, tmp_path):
    from softprompt.cli import main as cli

    pairs = [("you are a stupid cat", "you are a cat"), ("what a dumb idea", "what an idea"), ("shut up", "hush")]
    rows = [{"text": text, "target": target} for text, target in pairs]
    pair_files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows) for split in ("train", "dev", "test")}
    out = tmp_path / "gen"
    args = ["train", "task=generation", f"backbone={tiny_llama_dir}", "method=none", "gen.max_new_tokens=3"]
    data = [f"data.{split}={path}" for split, path in pair_files.items()]
    settings = ["fewshot.k=1", "fewshot.select=similar", f"fewshot.embedder={tiny_bert_dir}"]
    assert cli([*args, *data, *settings, "template=Toxic: {text}\\nPolite:", f"out={out}", "--quiet"]) == 0
    model, _ = load_model(out)
    assert model.chooser is not None and model.demonstrations == ""
    pool = {d["query"]: d["block"] for d in json.loads((out / "task.json").read_text())["fewshot"]["pool"]}
    for query in pool:
        shown = model.demonstrations_for({"text": query})
        assert shown.endswith("\n\n") and shown[:-2] in pool.values() and shown[:-2] != pool[query]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["fewshot.select=nearest"], "'fewshot.select': 'nearest' is not one of balanced, random, similar"),
        (["fewshot.order=nearest_last"], "config field 'fewshot.order': nearest_last orders by likeness"),
        (["fewshot.k=2", "fewshot.select=similar", "calibrate=contextual"], "contextual calibration estimates"),
        (["fewshot.select=similar", "fewshot.pool=0"], "config field 'fewshot.pool': must be >= 1"),
    ],
)
def test_bad_fewshot_settings_are_one_line(base_args, tmp_path, capsys, settings, message):
    assert main(["train", *base_args, "method=none", f"out={tmp_path / 'run'}", *settings]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_python_api_builds_saves_and_loads_a_model_with_similar_demonstrations(
    tiny_llama_dir, tiny_bert_dir, tmp_path
):
    import softprompt

    records = [{"text": "a warm funny film", "label": "positive"}, {"text": "dull and slow", "label": "negative"}]
    records += [{"text": "a lovely warm story", "label": "positive"}, {"text": "slow, dull, long", "label": "negative"}]
    model = softprompt.build(
        backbone=str(tiny_llama_dir),
        method="none",
        template="Review: {text}\nSentiment:",
        verbalizer={"positive": "positive", "negative": "negative"},
        fewshot={"k": 1, "select": "similar", "embedder": str(tiny_bert_dir)},
        train_data=records,
    )
    texts = ["warm and funny", "too slow"]
    in_memory = model.predict(texts)
    chooser = model.module.task.chooser
    assert chooser is not None and len(chooser.pool) == 4
    model.save(tmp_path / "kate")
    loaded = softprompt.load(tmp_path / "kate")
    assert loaded.module.task.chooser.record() == chooser.record()
    for got, want in zip(loaded.predict(texts), in_memory, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


# What the round-robin draw gave before fewshot.select existed (the code at da75935), for 11 rows
# labelled neg when i % 3 == 0: the default must keep giving exactly these demonstrations.
DRAWN_BEFORE = {
    (0, 1): [10],
    (0, 3): [5, 10, 9],
    (0, 4): [9, 10, 3, 5],
    (0, 12): [7, 8, 2, 1, 10, 9, 0, 5, 3, 4, 6],
    (1, 4): [7, 3, 2, 9],
    (7, 3): [6, 4, 2],
    (7, 12): [2, 0, 5, 3, 8, 1, 10, 6, 4, 9, 7],
}


@pytest.mark.parametrize(("seed", "k"), sorted(DRAWN_BEFORE))
def test_the_default_draw_is_the_one_from_before(seed, k):
    uneven = [Demo(f"text {i}", f"block {i}", "pos" if i % 3 else "neg") for i in range(11)]
    expected = "".join(f"block {i}\n\n" for i in DRAWN_BEFORE[seed, k])
    assert fixed_demonstrations(uneven, k, "balanced", seed, labels=["pos", "neg"]) == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"k": 11}, "fewshot.k=11 is more than the 10 training examples; give fewshot.k of at most 10"),
        (
            {"k": 5, "select": "similar", "pool": 4},
            "fewshot.k=5 is more than the 4 training examples that fewshot.pool=4 keeps; give fewshot.k of at most 4",
        ),
    ],
)
def test_more_demonstrations_than_training_rows_are_refused_as_such(settings, message):
    with pytest.raises(SoftpromptError, match=re.escape(message)):
        choose_demonstrations(POOL, FewshotConfig(**settings), seed=0, fields=["text"], labels=["pos", "neg"])
    assert choose_demonstrations(POOL, FewshotConfig(k=10), seed=0, fields=["text"])[0].count("block") == 10
