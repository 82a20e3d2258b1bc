"""On a CUDA GPU in bf16 (marked ``gpu``; skipped without CUDA; ``benchmarks/gpu.py`` runs them):
train -> save -> load -> predict for a tiny model of each kind, mixed batches, sampling, the server."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import softprompt
from softprompt.backbones import load_backbone

from .conftest import NEGATIVE, POSITIVE
from .helpers import EXAMPLES, classifier
from .test_ner import SENTENCES, write_conll

# SOFTPROMPT_GPU_TEST_DEVICE=cpu runs these on the CPU (in bf16) to check the tests themselves.
DEVICE = os.environ.get("SOFTPROMPT_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
CUDA = {"device": DEVICE, "precision": "bf16"}


def _trained(backbone_dir, tmp_path, out: str | None = None, **settings):
    return softprompt.train(
        train_data=ROWS * 4,
        dev_data=ROWS,
        backbone=str(backbone_dir),
        verbalizer={"positive": "great", "negative": "bad"},
        train={"max_steps": 8, "eval_every": 4, "lr": 0.05},
        out=out or str(tmp_path / "run"),
        progress=False,
        **CUDA,
        **settings,
    )


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "lora", "ia3", "bitfit", "full"])
def test_a_causal_classifier_round_trips_in_bf16_on_cuda(tiny_llama_dir, tmp_path, method):
    soft = "{soft:4}" if method == "prompt_tuning" else ""
    result = _trained(tiny_llama_dir, tmp_path, method=method, template=soft + "Review: {text}\nSentiment:")
    module = result.model.module
    where = torch.device(DEVICE).type
    assert module.backbone.model.get_input_embeddings().weight.device.type == where
    assert all(p.device.type == where and p.dtype == torch.float32 for p in module.trainable_parameters())
    texts = [row["text"] for row in ROWS]
    again = softprompt.load(tmp_path / "run", **CUDA)
    assert again.predict(texts) == result.model.predict(texts)


def test_an_encoder_classifier_round_trips_on_cuda(tiny_bert_dir, tmp_path):
    result = _trained(tiny_bert_dir, tmp_path, template="{soft:2}{text} it was {mask}.")
    texts = [row["text"] for row in ROWS]
    assert softprompt.load(tmp_path / "run", **CUDA).predict(texts) == result.model.predict(texts)


def test_a_tagger_trains_and_tags_on_cuda(tiny_bert_dir, tmp_path):
    train = write_conll(tmp_path / "train.txt", SENTENCES * 3)
    result = softprompt.train(
        task="ner",
        backbone=str(tiny_bert_dir),
        data={"train": str(train), "dev": str(train)},
        train={"max_steps": 6, "eval_every": 6, "lr": 0.05, "batch_size": 4},
        out=str(tmp_path / "ner"),
        progress=False,
        **CUDA,
    )
    tagged = softprompt.load(tmp_path / "ner", **CUDA).predict(["angela merkel visited paris"])
    assert tagged == result.model.predict(["angela merkel visited paris"])


def test_mixed_batches_on_cuda_equal_each_task_alone(tiny_llama_dir):
    from softprompt.tasks.classification.mixed import MixedPromptClassifier, classify_mixed
    from softprompt.tasks.classification.model import label_probabilities

    backbone = load_backbone(str(tiny_llama_dir), **CUDA)
    models = {
        "front": classifier(backbone, "{soft:3}Review: {text} Sentiment:", {"pos": "a", "neg": "b"}, seed=1),
        "middle": classifier(backbone, "Q: {text}{soft:2} A:", {"x": "b", "y": "a"}, seed=3),
        "multi": classifier(backbone, "{soft:4}W: {text} A:", seed=4),
    }
    requests = [(name, example) for example in EXAMPLES for name in models]
    got = classify_mixed(MixedPromptClassifier(models), requests, batch_size=5)
    for name, model in models.items():
        together = torch.stack([p for (task, _), p in zip(requests, got, strict=True) if task == name])
        # bf16 rounds differently in a different batch shape: a looser tolerance than on the CPU.
        assert torch.allclose(label_probabilities(model, EXAMPLES), together, atol=2e-2), name


def test_sampling_on_cuda_is_seeded_like_on_the_cpu(tiny_llama_dir):
    from softprompt.detox.steering import Steering
    from softprompt.generation.running import sample_continuations

    backbone = load_backbone(str(tiny_llama_dir), **CUDA)
    runs = [
        sample_continuations(backbone, Steering("none"), ["So I said", "Then"], 2, 5, 0.9, [7, 8]).tokens
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and all(len(rows) == 2 for rows in runs[0])


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "lora"])
def test_a_generation_task_trains_and_writes_in_bf16_on_cuda(tiny_llama_dir, tmp_path, method):
    rows = [{"text": t, "target": t.upper()} for t in POSITIVE + NEGATIVE]
    result = softprompt.train(
        task="generation",
        train_data=rows * 2,
        dev_data=rows,
        backbone=str(tiny_llama_dir),
        method=method,
        train={"max_steps": 4, "eval_every": 2},
        gen={"max_new_tokens": 5},
        out=str(tmp_path / "gen"),
        progress=False,
        **CUDA,
    )
    texts = [row["text"] for row in rows[:3]]
    written = result.model.generate(texts)
    assert len(written) == 3 and written == softprompt.load(tmp_path / "gen", **CUDA).generate(texts)
    assert len(result.model.generate(texts, num_beams=2)) == 3


def test_the_server_classifies_on_cuda(tiny_llama_dir, tmp_path):
    from fastapi.testclient import TestClient

    from softprompt.serving.app import ServeSettings, Service, create_app

    prompts = tmp_path / "prompts"
    _trained(tiny_llama_dir, tmp_path, template="{soft:4}Review: {text}\nSentiment:", out=str(prompts / "sentiment"))
    service = Service(load_backbone(str(tiny_llama_dir), **CUDA), prompts)
    with TestClient(create_app(service, ServeSettings())) as client:
        answer = client.post("/v1/classify", json={"task": "sentiment", "texts": ["a great movie"]})
        written = client.post("/v1/generate", json={"prompt": "So I said", "max_new_tokens": 4, "seed": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["label"] in ("positive", "negative")
    assert written.status_code == 200, written.text


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_a_prompt_or_lora_trains_on_a_4bit_backbone(tiny_llama_dir, tmp_path, method):
    soft = "{soft:4}" if method == "prompt_tuning" else ""
    result = _trained(
        tiny_llama_dir, tmp_path, method=method, quantize="4bit", template=soft + "Review: {text}\nSentiment:"
    )
    assert result.model.module.backbone.quantized
    texts = [row["text"] for row in ROWS]
    assert softprompt.load(tmp_path / "run", **CUDA).predict(texts)  # the artifact also loads unquantized
