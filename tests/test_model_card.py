"""Every artifact carries a model card (README.md) whose metadata the Hub's own library reads."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from softprompt.artifact.card import model_card
from softprompt.backbones.sources import hub_id
from softprompt.cli import main


@pytest.fixture
def run(base_args, tmp_path):
    out = tmp_path / "sentiment-run"
    assert main(["train", *base_args, f"out={out}", "train.max_steps=4", "train.eval_every=2"]) == 0
    return out


def test_a_trained_artifact_has_a_card_the_hub_library_reads(run):
    meta = json.loads((run / "task.json").read_text(encoding="utf-8"))
    card = ModelCard((run / "README.md").read_text(encoding="utf-8"))
    data = card.data
    # A local tiny backbone has no Hub id, so no base_model; the template's {soft:2} sits at the
    # end, not as a prefix, so peft cannot load it and the library is softprompt.
    assert data.base_model is None and data.library_name == "softprompt"
    assert "softprompt" in data.tags and "prompt-tuning" in data.tags
    assert data.pipeline_tag == "text-classification"
    results = {(r.metric_type, r.dataset_split): r.metric_value for r in data.eval_results}
    assert results[("accuracy", "test")] == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-4)
    assert data.model_name == "sentiment-run"
    body = card.text
    assert "Review: {text}\\nSentiment:{soft:2}" in body and "positive -> 'positive'" in body
    assert f"weights of step {meta['step']}" in body and 'softprompt.load("sentiment-run")' in body


def test_inspect_card_prints_it(run, capsys):
    assert main(["inspect", str(run), "--card"]) == 0
    assert capsys.readouterr().out == (run / "README.md").read_text(encoding="utf-8")


def test_a_peft_layout_on_a_hub_backbone_names_its_base_model_and_peft():
    meta = {
        "task": "classification",
        "method": "prompt_tuning",
        "template": "{soft:4}Review: {text}\nSentiment:",
        "verbalizer": {"positive": ["good"], "negative": ["bad"]},
        "backbone": {"name": "smollm2-135m", "hub_id": hub_id("smollm2-135m")},
        "data": {"dataset": "hf:stanfordnlp/sst2@train"},
        "metrics": {"test": {"accuracy": 0.75, "n": 8}, "zero_shot_test": {"accuracy": 0.5, "n": 8}},
        "config": {"seed": 3, "train": {"lr": 0.01, "batch_size": 8, "max_steps": 100, "max_length": 64}},
        "step": 40,
    }
    card = ModelCard(model_card(meta, peft_loadable=True, name="sst2-prompt"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert card.data.datasets == ["stanfordnlp/sst2"] and "peft" in card.data.tags
    assert 'PeftModel.from_pretrained(base, "sst2-prompt")' in card.text
    assert "| zero shot test | 0.5 |" in card.text and "GGUF weights, de-quantized" in card.text


def test_hub_ids_of_backbones():
    assert hub_id("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_id("/models/my-llama") == ""


def test_the_card_says_how_to_install_softprompt_from_a_clone():
    """softprompt is not on PyPI: the card's install line is one that works."""
    meta = {
        "task": "classification",
        "method": "prompt_tuning",
        "template": "{soft:4}Review: {text}\nSentiment:",
        "verbalizer": {"positive": ["good"], "negative": ["bad"]},
        "backbone": {"name": "tiny"},
        "versions": {"softprompt": "0.1.0"},
    }
    text = ModelCard(model_card(meta, peft_loadable=False, name="user/prompt")).text
    assert "pip install softprompt" not in text
    assert "install it from a clone of its repository, with `pip install .` in the clone" in text
    assert "`pip install dist/softprompt-*.whl` after `python -m build`" in text
    assert "made with softprompt 0.1.0" in text and 'softprompt predict user/prompt "your text"' in text


@pytest.mark.slow
def test_scores_on_a_sample_of_the_test_split_are_marked_as_such(base_args, tmp_path):
    """data.max_eval=3 scores a seeded sample: model-index records the split, the examples scored
    and how many the split holds, and the card's table says it is a sample."""
    out = tmp_path / "quick"
    assert main(["train", *base_args, f"out={out}", "train.max_steps=2", "train.eval_every=2", "data.max_eval=3"]) == 0
    meta = json.loads((out / "task.json").read_text(encoding="utf-8"))
    assert meta["data"]["samples"]["test"]["n"] == 3 and meta["data"]["samples"]["test"]["of"] > 3
    whole = meta["data"]["samples"]["test"]["of"]
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert result.dataset_split == "test" and result.dataset_args == {"examples": 3, "sample_of": whole}
    assert "sample" in result.metric_name and f"3 of {whole:,} test examples" in result.dataset_name
    assert f"| test (3 of {whole:,}, a sample) |" in card.text


@pytest.mark.slow
def test_scores_on_the_whole_test_split_record_how_many_examples(run):
    meta = json.loads((run / "task.json").read_text(encoding="utf-8"))
    card = ModelCard((run / "README.md").read_text(encoding="utf-8"))
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert "samples" not in meta["data"] and result.dataset_args == {"examples": meta["metrics"]["test"]["n"]}
    assert result.metric_name == "test accuracy" and f"| test ({meta['metrics']['test']['n']}) |" in card.text
