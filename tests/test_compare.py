"""Every method through the CLI (train -> eval -> predict), and `softprompt compare` on tiny models."""

from __future__ import annotations

import json

import pytest

from softprompt.cli import main
from softprompt.cli.compare import parse_plan
from softprompt.errors import SoftpromptError
from softprompt.methods import METHODS

TRAINED = [name for name, spec in METHODS.items() if spec.trains]


def _data_args(backbone_dir, files):
    encoder = json.loads((backbone_dir / "config.json").read_text())["model_type"] == "bert"
    return [
        f"backbone={backbone_dir}",
        f"data.train={files['train']}",
        f"data.dev={files['dev']}",
        f"data.test={files['test']}",
        "verbalizer={positive: positive, negative: negative}",
        "template={soft:2}Review: {text}\\nSentiment:" + (" {mask}" if encoder else ""),
        "prompt.init=vocab",
        "train.batch_size=4",
    ]


@pytest.mark.parametrize("kind", ["causal", "encoder"])
@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.slow
def test_every_method_through_the_cli(method, kind, tiny_llama_dir, tiny_bert_dir, sentiment_files, tmp_path, capsys):
    backbone_dir = tiny_llama_dir if kind == "causal" else tiny_bert_dir
    args = _data_args(backbone_dir, sentiment_files)
    if not METHODS[method].uses_soft_tokens:
        args = [a.replace("{soft:2}", "") for a in args]
    out = tmp_path / "run"
    assert main(["train", *args, f"method={method}", f"out={out}", "train.max_steps=2", "--quiet"]) == 0
    assert "trainable parameters" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(sentiment_files["test"]), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10
    assert main(["predict", str(out), "a great movie"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in {"positive", "negative"}


@pytest.mark.slow
def test_compare_writes_table_json_png_and_keeps_going_after_a_failure(
    tiny_llama_dir, sentiment_files, tmp_path, capsys
):
    out = tmp_path / "cmp"
    args = [*_data_args(tiny_llama_dir, sentiment_files), "train.max_steps=2", "train.eval_every=2", f"out={out}"]
    # full.layers=top:5 fails inside its run (the tiny model has 2 blocks): a row with the reason.
    code = main(
        ["compare", *args, "methods=prompt_tuning,lora,full", "lrs=lora:0.01", "fewshot=2", "full.layers=top:5"]
    )
    assert code == 0
    rows = {r["name"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert rows["lora"]["lr"] == 0.01 and rows["prompt_tuning"]["lr"] == METHODS["prompt_tuning"].default_lr
    assert rows["prompt_tuning"]["status"] == "ok" and rows["prompt_tuning"]["trainable_parameters"] == 2 * 32
    assert rows["lora"]["median_step_seconds"] > 0 and rows["lora"]["peak_rss_mb"] > 0
    assert "only 2 blocks" in rows["full"]["status"]
    assert {"zero-shot", "few-shot (k=2)"} <= set(rows)
    tfidf = [r for r in rows.values() if r["name"].startswith("TF-IDF")]
    assert len(tfidf) == 1 and 0 <= tfidf[0]["test_metric"] <= 1
    table = (out / "compare.md").read_text()
    assert "| prompt_tuning | 0.01 |" in table and "only 2 blocks" in table
    assert (out / "compare.png").stat().st_size > 1000
    assert "| lora |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "item, message",
    [
        ("methods=lora,lorra", "unknown method 'lorra'"),
        ("lrs=lora=1", "method:rate"),
        ("methods=none", "does not train"),
        ("baselines=tfidf,zeroshot", "unknown 'zeroshot'"),
    ],
)
def test_compare_plan_errors(item, message):
    with pytest.raises(SoftpromptError, match=message):
        parse_plan([item])


def test_compare_plan_reads_its_keys_and_passes_the_rest():
    plan, rest = parse_plan(["methods=lora,full", "baselines=tfidf", "fewshot=0", "train.max_steps=5"])
    assert plan.methods == ["lora", "full"] and plan.baselines == ["tfidf"] and plan.fewshot == 0
    assert rest == ["train.max_steps=5"]
