"""LoRA, IA3 and prefix-tuning artifacts served beside soft prompts on one backbone: each row of a
mixed batch gets its own task's weights (methods.row_adapters) or prefixes (kept like a prompt's
cache), the backbone stays untouched, and every answer is what `softprompt predict` / the
artifact's own model gives (the tiny random Llama)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient
from peft.tuners.tuners_utils import BaseTunerLayer

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.generation.decode import decode
from softprompt.serving.app import GenerateRequest, ServeSettings, Service, create_app
from softprompt.serving.requests import ClassifyRequest
from softprompt.tasks.loading import load_model

from .conftest import NEGATIVE, POSITIVE, write_jsonl
from .helpers import generate
from .test_generation import PAIRS

TEXTS = ["a great movie", "dull and boring", "superb", "awful"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_llama_dir, served_tasks):
    """The session's soft-prompt tasks, and LoRA and IA3 classifiers and generation tasks."""
    root = tmp_path_factory.mktemp("adapted")
    folder = root / "served"
    shutil.copytree(served_tasks, folder)
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    reviews = write_jsonl(root / "reviews.jsonl", rows)
    pairs = write_jsonl(root / "pairs.jsonl", [{"text": t, "target": y} for t, y in PAIRS] * 2)
    common = [f"backbone={tiny_llama_dir}", "train.max_steps=3", "train.batch_size=4", "train.lr=0.05", "--quiet"]
    classify = [f"data.train={reviews}", f"data.dev={reviews}", "template=Review: {text} Sentiment:"]
    classify.append("verbalizer={positive: positive, negative: negative}")
    rewrite = ["task=generation", f"data.train={pairs}", f"data.dev={pairs}", "template=Toxic: {text} Polite:"]
    rewrite.append("gen.max_new_tokens=4")
    for name, method, task in [
        ("lora-cls", "lora", classify),
        ("ia3-cls", "ia3", classify),
        ("prefix-cls", "prefix_tuning", classify),
        ("lora-gen", "lora", rewrite),
        ("ia3-gen", "ia3", rewrite),
        ("prefix-gen", "prefix_tuning", rewrite),
    ]:
        assert main(["train", *task, f"method={method}", f"out={folder / name}", *common]) == 0
    bitfit = root / "refused" / "bitfit"
    assert main(["train", *classify, "method=bitfit", f"out={bitfit}", *common]) == 0
    return folder, bitfit


def predicted(path, texts, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", str(path), *texts]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_lora_ia3_and_prefix_classifiers_share_a_batch_with_a_soft_prompt_and_answer_as_predict(
    tiny_backbone, adapted, capsys
):
    folder, _ = adapted
    service = Service(tiny_backbone, folder)
    tasks = ["lora-cls", "sentiment", "ia3-cls", "prefix-cls"]
    served = service.classify([ClassifyRequest(task=task, texts=TEXTS) for task in tasks])  # one mixed batch
    assert not [m for m in tiny_backbone.model.modules() if isinstance(m, BaseTunerLayer)]  # nothing injected
    for task, answers in zip(tasks, served, strict=True):
        expected = predicted(folder / task, TEXTS, capsys)  # its own backbone, peft's layers injected
        for got, want in zip(answers, expected, strict=True):
            assert got["label"] == want["label"], task
            for label, p in want["scores"].items():
                assert got["scores"][label] == pytest.approx(p, abs=1e-4), task
    plain = service.tasks.mixed  # the adapters matter: without them the answers differ
    model = plain.tasks["lora-cls"]
    adapter, model.row_adapter = model.row_adapter, None
    try:
        bare = service.classify([ClassifyRequest(task="lora-cls", texts=TEXTS)])[0]
    finally:
        model.row_adapter = adapter
    changed = [abs(b["scores"]["positive"] - s["scores"]["positive"]) for b, s in zip(bare, served[0], strict=True)]
    assert max(changed) > 1e-3


def test_lora_ia3_and_prefix_generation_tasks_decode_as_their_own_models_in_one_batch(
    tiny_backbone, tiny_llama_dir, adapted
):
    folder, _ = adapted
    service = Service(tiny_backbone, folder)
    text = PAIRS[0][0]
    tasks = ("lora-gen", "polite", "ia3-gen", "prefix-gen")
    payloads = [GenerateRequest(task=task, prompt=text, max_new_tokens=4) for task in tasks]
    together = generate(service, payloads)
    assert together == [generate(service, [payload])[0] for payload in payloads]
    for task, answer in zip(("lora-gen", "ia3-gen", "prefix-gen"), together[::2] + together[3:], strict=True):
        own, _ = load_model(folder / task, load_backbone(str(tiny_llama_dir)))  # peft's layers in its backbone
        settings = own.decoding.__class__(**{**own.decoding.__dict__, "max_new_tokens": 4, "do_sample": False})
        expected = decode(own.backbone, own.method, [own.encode_prompt({"text": text})], settings)[0]
        assert answer[0].strip() == expected.strip(), task


def test_adapter_tasks_are_added_listed_and_methods_that_change_weights_refused(tiny_backbone, adapted):
    folder, bitfit = adapted
    settings = ServeSettings(max_wait_ms=1, artifacts_roots=(str(bitfit.parent),))
    with TestClient(create_app(Service(tiny_backbone, folder), settings)) as client:
        listed = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        assert listed["lora-cls"]["method"] == "lora" and listed["ia3-cls"]["method"] == "ia3"
        assert listed["lora-gen"]["kind"] == "generate"
        added = client.post("/v1/tasks/again", json={"path": str(folder / "ia3-cls")})
        assert added.status_code == 200 and added.json()["method"] == "ia3"
        both = client.post("/v1/classify", json={"task": "again", "texts": TEXTS[:2]}).json()["results"]
        alone = client.post("/v1/classify", json={"task": "ia3-cls", "texts": TEXTS[:2]}).json()["results"]
        assert [r["scores"] for r in both] == [r["scores"] for r in alone]
        refused = client.post("/v1/tasks/weights", json={"path": str(bitfit)})
        assert refused.status_code == 400 and "changes the backbone's own weights" in refused.json()["detail"]
        completion = client.post("/v1/completions", json={"model": "lora-gen", "prompt": "hi", "max_tokens": 3})
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] <= 3
        scored = {"model": "prefix-gen", "prompt": "hi", "max_tokens": 1, "logprobs": 1}
        refused = client.post("/v1/completions", json=scored)
        assert refused.status_code == 400 and "prefix-tuned" in refused.json()["error"]["message"]


def test_echoed_logprobs_of_a_lora_task_are_its_own_models(tiny_backbone, tiny_llama_dir, adapted):
    folder, _ = adapted
    settings = ServeSettings(max_wait_ms=1)
    with TestClient(create_app(Service(tiny_backbone, folder), settings)) as client:
        body = {"model": "lora-gen", "prompt": "you are", "max_tokens": 0, "echo": True, "logprobs": 1}
        answer = client.post("/v1/completions", json=body).json()["choices"][0]
    own, _ = load_model(folder / "lora-gen", load_backbone(str(tiny_llama_dir)))
    ids = own.backbone.tokenizer(answer["text"])["input_ids"]
    with torch.no_grad():
        logp = own.backbone.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [logp[i - 1, token].item() for i, token in enumerate(ids) if i > 0]
    assert answer["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
