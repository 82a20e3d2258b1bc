"""lm-evaluation-harness runs our artifacts through ``--model hf --model_args pretrained=...,peft=...``
and scores a task read from local files exactly as ``softprompt`` does (integration: skipped
when ``lm_eval`` is not installed; ``pip install lm_eval``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

import softprompt
from softprompt.cli import main
from softprompt.tasks.classification.model import label_probabilities

TEMPLATES = {"prompt_tuning": "{soft:4}Review: {text}\\nSentiment:", "lora": "Review: {text}\\nSentiment:"}
TASK = """task: softprompt_sentiment
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["positive", "negative"]
doc_to_target: "{{{{ ['positive', 'negative'].index(label) }}}}"
metric_list:
  - metric: acc
"""


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_lm_eval_scores_an_artifact_as_softprompt_does(method, tiny_llama_dir, sentiment_files, tmp_path):
    out = tmp_path / method
    data = [f"data.{split}={path}" for split, path in sentiment_files.items()]
    args = ["train", f"backbone={tiny_llama_dir}", f"method={method}", f"template={TEMPLATES[method]}", *data]
    args += ["verbalizer={positive: positive, negative: negative}", f"out={out}", "--quiet"]
    assert main([*args, "prompt.init=vocab", "train.batch_size=4", "train.max_steps=4", "train.eval_every=4"]) == 0
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "softprompt_sentiment.yaml").write_text(TASK.format(test=sentiment_files["test"]), encoding="utf-8")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--tasks", "softprompt_sentiment"]
    command += ["--model_args", f"pretrained={tiny_llama_dir},peft={out},dtype=float32", "--device", "cpu"]
    command += ["--include_path", str(tasks), "--batch_size", "4", "--output_path", str(tmp_path / "lm_eval")]
    done = subprocess.run(
        [*command, "--log_samples"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = (tmp_path / "lm_eval").rglob("results_*.json")
    harness_acc = json.loads(results.read_text())["results"]["softprompt_sentiment"]["acc,none"]
    [samples] = (tmp_path / "lm_eval").rglob("samples_softprompt_sentiment_*.jsonl")
    docs = [json.loads(line) for line in samples.read_text().splitlines()]
    logliks = [[float(choice[0]) for choice in doc["filtered_resps"]] for doc in docs]  # (loglik, greedy) as text

    model = softprompt.load(out)
    rows = [json.loads(line) for line in sentiment_files["test"].read_text().splitlines()]
    examples = model.task.from_records(rows, "test", model.meta)
    probabilities = label_probabilities(model.module, examples)  # [examples, labels], unrounded
    labels = model.module.task.labels
    ours_acc = sum(labels[int(p.argmax())] == row["label"] for p, row in zip(probabilities, rows, strict=True))
    assert harness_acc == pytest.approx(ours_acc / len(rows))
    # Per example: the harness's log-likelihood gap between the labels is ours (float32 rounding).
    positive, negative = labels.index("positive"), labels.index("negative")
    for (harness_positive, harness_negative), p in zip(logliks, probabilities.double().log(), strict=True):
        assert harness_positive - harness_negative == pytest.approx(float(p[positive] - p[negative]), abs=1e-4)
