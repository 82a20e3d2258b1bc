"""Contextual calibration: the prompt's own label bias, measured on content-free inputs and
divided out of every prediction, in train / build / predict / eval / serve."""

from __future__ import annotations

import json

import pytest
import torch

import softprompt
from softprompt.cli import main
from softprompt.data.records import Example
from softprompt.tasks.classification.calibration import content_free_inputs
from softprompt.tasks.classification.model import label_probabilities

# Four words say "positive", one says "negative": summed over its words, the positive label
# starts far ahead whatever the text (a bias planted in the verbalizer).
PLANTED = {"positive": ["great", "good", "fine", "nice"], "negative": "bad"}
TEXTS = ["a great movie", "dull and boring", "it was fine", "terrible", "I laughed", "so long"]


def _model(tiny_llama_dir, **settings):
    return softprompt.build(
        backbone=str(tiny_llama_dir),
        method="none",
        template="Review: {text}\nSentiment:",
        verbalizer=PLANTED,
        **settings,
    )


def test_calibration_divides_out_the_planted_bias_exactly_as_computed_by_hand(tiny_llama_dir):
    plain = _model(tiny_llama_dir).module
    examples = [Example({"text": t}) for t in TEXTS]
    p = label_probabilities(plain, examples).double()
    positive = plain.task.labels.index("positive")
    assert (p.argmax(-1) == positive).float().mean() >= 0.8  # the bias decides nearly every input
    # By hand: the mean label probabilities of the content-free inputs, divided out, renormalised.
    free = [Example({"text": t}) for t in ("N/A", "", plain.task.tokenizer.mask_token or "[MASK]")]
    p_cf = label_probabilities(plain, free).double().mean(0)
    expected = (p / p_cf) / (p / p_cf).sum(-1, keepdim=True)

    calibrated = _model(tiny_llama_dir, calibrate="contextual")
    assert content_free_inputs(calibrated.module) == ["N/A", "", plain.task.tokenizer.mask_token or "[MASK]"]
    got = label_probabilities(calibrated.module, examples).double()
    assert torch.allclose(got, expected, atol=1e-5)
    # What the content-free inputs looked like on average is now no preference at all.
    mean_free = (label_probabilities(calibrated.module, free).double()).log().mean(0)
    assert torch.allclose(mean_free.softmax(-1), torch.full((2,), 0.5, dtype=torch.float64), atol=0.1)
    assert calibrated.meta["calibration"]["method"] == "contextual"
    assert calibrated.meta["calibration"]["log_bias"]["positive"] == pytest.approx(float(p_cf[0].log()), abs=1e-5)


@pytest.mark.slow
def test_a_calibrated_artifact_predicts_evaluates_and_serves_calibrated(
    tiny_llama_dir, tiny_backbone, sentiment_files, tmp_path, capsys
):
    from softprompt.serving.service import Service

    out = tmp_path / "prompts" / "calibrated"
    data = [f"data.{split}={path}" for split, path in sentiment_files.items()]
    verbalizer = "verbalizer={positive: [great, good, fine, nice], negative: bad}"
    args = ["train", f"backbone={tiny_llama_dir}", "method=none", "calibrate=contextual", verbalizer, *data]
    assert main([*args, "template=Review: {text}\\nSentiment:", f"out={out}", "--quiet"]) == 0
    meta = json.loads((out / "task.json").read_text())
    assert set(meta["calibration"]["log_bias"]) == {"positive", "negative"}
    assert "calibration" in meta["config"] or meta["config"]["calibrate"] == "contextual"
    in_memory = _model(tiny_llama_dir, calibrate="contextual").predict(TEXTS)
    capsys.readouterr()
    assert main(["predict", str(out), *TEXTS]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for got, want in zip(predicted, in_memory, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    service = Service(tiny_backbone, out.parent)
    from softprompt.tasks.classification.mixed import classify_mixed

    served = classify_mixed(service.tasks.mixed, [("calibrated", Example({"text": t})) for t in TEXTS])
    for row, want in zip(served, in_memory, strict=True):
        labels = service.tasks.classifiers["calibrated"].task.labels
        assert dict(zip(labels, row.tolist(), strict=True)) == pytest.approx(want["scores"], abs=1e-5)
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == meta["metrics"]["test"]["accuracy"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["calibrate=always"], "config field 'calibrate': 'always' is not one of none, contextual"),
        (["task=generation", "calibrate=contextual"], "task=generation has no label probabilities to calibrate"),
    ],
)
def test_bad_calibration_settings_are_one_line(base_args, tmp_path, capsys, settings, message):
    assert main(["train", *base_args, f"out={tmp_path / 'run'}", *settings]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
