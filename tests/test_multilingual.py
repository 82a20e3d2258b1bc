"""Chinese sentiment (a soft prompt, or the top blocks fine-tuned), on a tiny Gemma 3 with a tiny
Chinese tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.config import load_config
from softprompt.tasks.classification import resolve_prompting

from .conftest import write_jsonl

POSITIVE = ["这本书写得很好，值得一读", "物流很快，很满意", "包装完好，推荐购买", "不错，喜欢"]
NEGATIVE = ["质量太差了，非常失望", "服务态度不好", "东西不好用，不推荐", "垃圾，讨厌"]
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture
def chinese_files(tmp_path):
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    return {split: write_jsonl(tmp_path / f"{split}.jsonl", rows * reps) for split, reps in (("train", 4), ("dev", 1))}


@pytest.mark.parametrize(
    ("template", "method_args", "lr"),
    [
        ("评论：{text}\\n这条评论是{soft:4}", ["method=prompt_tuning"], "0.05"),
        ("评论：{text}\\n这条评论是", ["method=full", "full.layers=top:1"], "0.003"),
    ],
    ids=["soft_prompt", "full_top_blocks"],
)
@pytest.mark.slow
def test_chinese_template_trains_and_predicts(
    tiny_gemma_chinese_dir, chinese_files, tmp_path, capsys, template, method_args, lr
):
    out = tmp_path / "run"
    args = [
        "train",
        *method_args,
        f"backbone={tiny_gemma_chinese_dir}",
        f"data.train={chinese_files['train']}",
        f"data.dev={chinese_files['dev']}",
        f"data.test={chinese_files['dev']}",
        f"template={template}",
        "verbalizer={pos: 正面, neg: 负面}",
        "train.max_steps=30",
        "train.eval_every=10",
        f"train.lr={lr}",
        "train.batch_size=8",
        "train.patience=0",
        f"out={out}",
        "--quiet",
    ]
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5  # it learns from the Chinese prompt
    capsys.readouterr()
    assert main(["predict", str(out), POSITIVE[0], NEGATIVE[0]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == [POSITIVE[0], NEGATIVE[0]]
    assert set(lines[0]["scores"]) == {"pos", "neg"}
    meta = json.loads((out / "task.json").read_text(encoding="utf-8"))
    assert meta["verbalizer"] == {"pos": ["正面"], "neg": ["负面"]}


@pytest.mark.parametrize(
    ("recipe", "method", "soft"),
    [
        ("chinese_sentiment", "prompt_tuning", True),
        ("chinese_sentiment_top6", "full", False),
        ("chinese_sentiment_lora", "lora", False),
    ],
)
def test_chinese_recipes_read_and_render(recipe, method, soft):
    config = load_config(CONFIGS / f"{recipe}.yaml")
    template, verbalizer = resolve_prompting(config)
    assert config.backbone == "gemma3-270m" and config.dataset == "chinese-reviews" and config.method == method
    assert (template.num_soft > 0) == soft and template.render({"text": "很好"}).startswith("评论")
    assert verbalizer.labels == ["pos", "neg"]
