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
from softprompt.serving.writing import writer_cache_key
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


def test_echoed_logprobs_of_lora_and_prefix_tasks_are_their_own_models(tiny_backbone, tiny_llama_dir, adapted):
    folder, _ = adapted
    settings = ServeSettings(max_wait_ms=1)
    with TestClient(create_app(Service(tiny_backbone, folder), settings)) as client:
        answers = {}
        for task in ("lora-gen", "prefix-gen"):
            body = {"model": task, "prompt": "you are", "max_tokens": 0, "echo": True, "logprobs": 1}
            answers[task] = client.post("/v1/completions", json=body).json()["choices"][0]
    own, _ = load_model(folder / "lora-gen", load_backbone(str(tiny_llama_dir)))  # peft's layers injected
    ids = own.backbone.tokenizer(answers["lora-gen"]["text"])["input_ids"]
    with torch.no_grad():
        logp = own.backbone.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [logp[i - 1, token].item() for i, token in enumerate(ids) if i > 0]
    assert answers["lora-gen"]["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    # The prefix-tuned task: its own model continues its prefix (keys and values: no position
    # predicts the first token, as without a prompt).
    own, _ = load_model(folder / "prefix-gen", load_backbone(str(tiny_llama_dir)))
    ids = own.backbone.tokenizer(answers["prefix-gen"]["text"])["input_ids"]
    n = own.method.prefix_length()
    with torch.no_grad():
        logits = own.backbone.model(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, n + len(ids), dtype=torch.long),
            position_ids=torch.arange(n, n + len(ids)).unsqueeze(0),
            past_key_values=own.method.prefix_cache(1),
        ).logits[0]
    logp = logits.float().log_softmax(-1)
    expected = [logp[i - 1, token].item() for i, token in enumerate(ids) if i > 0]
    served = answers["prefix-gen"]["logprobs"]["token_logprobs"]
    assert served[0] is None and served[1:] == pytest.approx(expected, abs=1e-4)


def test_long_prompts_read_in_chunks_decode_as_read_whole_for_every_adapter_kind(tiny_backbone, adapted):
    """A token budget of 6 per step: every prompt here is read a chunk per step, beside rows that
    decode; soft prompts come from the prompt caches. Each answer is the one read whole."""
    import concurrent.futures

    folder, _ = adapted
    service = Service(tiny_backbone, folder)
    text = " ".join(PAIRS[0][0] for _ in range(3))
    tasks = ("lora-gen", "polite", "ia3-gen", "prefix-gen", None)
    payloads = [GenerateRequest(task=task, prompt=text, max_new_tokens=5, temperature=0) for task in tasks]
    expected = [generate(service, [payload])[0][0] for payload in payloads]
    app = create_app(service, ServeSettings(max_wait_ms=1, token_budget=6))
    with TestClient(app) as client, concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        answers = list(pool.map(lambda p: client.post("/v1/generate", json=p.model_dump()), payloads))
    assert [a.status_code for a in answers] == [200] * len(payloads)
    assert [a.json()["completions"][0] for a in answers] == expected
    assert len(service.backbone.tokenizer(text)["input_ids"]) > 6  # so each was read in chunks
    caches = service.tasks.prompt_caches
    assert writer_cache_key("polite") in caches and caches.hits >= 1  # its soft prompt was read from there
