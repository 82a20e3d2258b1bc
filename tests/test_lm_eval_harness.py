"""lm-evaluation-harness runs our artifacts through ``--model hf --model_args pretrained=...,peft=...``
and scores a task read from local files exactly as ``softprompt`` does, and it evaluates a task
served by ``softprompt serve`` through its ``local-completions`` model (log-likelihood from
``echo``/``logprobs``, ``generate_until`` with ``stop``) as the server scores and writes it
directly, with text prompts and with lm-eval's default token-id prompts (integration: ``make test``
installs lm-eval; skipped only where it is missing: ``pip install 'softprompt[harness]'``)."""

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
@pytest.mark.slow
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


SERVED_TASKS = {
    "served_sentiment": TASK.replace("softprompt_sentiment", "served_sentiment"),
    "served_rewrite": """task: served_rewrite
dataset_path: json
dataset_kwargs:
  data_files:
    test: {pairs}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


@pytest.mark.parametrize("tokenized", [True, False])  # True: lm-eval's default, token-id prompts
@pytest.mark.slow
def test_lm_eval_local_completions_scores_a_served_task_as_the_server_does(
    tokenized, tiny_llama_dir, tiny_backbone, sentiment_files, tmp_path
):
    from softprompt.generation.scoring import score_tokens
    from softprompt.serving.app import GenerateRequest, ServeSettings, Service, create_app

    from .conftest import write_jsonl
    from .helpers import generate, live_server
    from .test_generation import PAIRS

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"text": t, "target": y} for t, y in PAIRS] * 2)
    served = tmp_path / "served"
    args = ["train", "task=generation", f"backbone={tiny_llama_dir}", f"data.train={pairs}", f"data.dev={pairs}"]
    args += ["template={soft:3}{text}", "prompt.init=vocab", "train.max_steps=2", f"out={served / 'rewrite'}"]
    assert main([*args, "--quiet"]) == 0
    service = Service(tiny_backbone, served)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in SERVED_TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(test=sentiment_files["test"], pairs=pairs), encoding="utf-8")
    with live_server(create_app(service, ServeSettings(max_wait_ms=1))) as url:
        model_args = f"model=rewrite,base_url={url}/v1/completions,tokenizer_backend=huggingface"
        model_args += f",tokenizer={tiny_llama_dir},tokenized_requests={tokenized},num_concurrent=1,max_retries=1"
        command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args]
        command += ["--tasks", ",".join(SERVED_TASKS), "--include_path", str(tasks)]
        command += ["--output_path", str(tmp_path / "lm_eval"), "--log_samples"]
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = (tmp_path / "lm_eval").rglob("results_*.json")
    results = json.loads(results.read_text())["results"]

    # Log-likelihood: each choice's summed log-probability after the soft prompt, scored directly.
    writer, tokenizer = service.tasks.writers["rewrite"], service.backbone.tokenizer
    rows = [json.loads(line) for line in sentiment_files["test"].read_text().splitlines()]
    right = 0
    for row in rows:
        context = f"Review: {row['text']}\nSentiment:"
        scores = {}
        for choice in ("positive", "negative"):
            whole = tokenizer(context + " " + choice)["input_ids"]
            before = len(tokenizer(context)["input_ids"])
            scored = score_tokens(service.backbone, writer.soft, whole[:before], whole[before:])
            scores[choice] = sum(scored.logprobs)
        right += max(scores, key=scores.get) == row["label"]
    assert results["served_sentiment"]["acc,none"] == pytest.approx(right / len(rows))

    # generate_until: the harness got the server's own greedy text, cut before the stop string.
    [samples] = (tmp_path / "lm_eval").rglob("samples_served_rewrite_*.jsonl")
    answers = {
        json.loads(line)["doc"]["text"]: json.loads(line)["resps"][0][0] for line in samples.read_text().splitlines()
    }
    assert any(answers.values()), "the tiny model wrote nothing before the stop string: nothing compared"
    for text, _ in PAIRS:
        own = generate(service, [GenerateRequest(task="rewrite", prompt=text, max_new_tokens=6, temperature=0)])[0][0]
        assert answers[text] == own.split("e")[0]
    expected = sum(answers[t].strip() == y for t, y in PAIRS) / len(PAIRS)
    assert results["served_rewrite"]["exact_match,none"] == pytest.approx(expected)
