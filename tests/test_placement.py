"""Devices and precision: one placement decides them; bf16 trains on a CPU; bad settings fail in one line."""

from __future__ import annotations

import json

import pytest
import torch

import softprompt
from softprompt.backbones import load_backbone
from softprompt.backbones.placement import resolve_placement
from softprompt.errors import SoftpromptError

from .conftest import NEGATIVE, POSITIVE

ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
VERBALIZER = {"positive": "great", "negative": "bad"}


def test_auto_is_float32_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto picks it")
    placement = resolve_placement()
    assert (placement.device.type, placement.dtype) == ("cpu", torch.float32)


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [
        ("cpu", "fp16", "precision=fp16 needs a GPU"),
        ("cpu", "fp8", "precision 'fp8' is not one of auto, fp32, bf16, fp16"),
        ("tpu", "auto", "device 'tpu' is not one of"),
    ],
)
def test_bad_device_or_precision_is_one_line(device, precision, message):
    with pytest.raises(SoftpromptError, match=message):
        resolve_placement(device, precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so(tiny_llama_dir):
    with pytest.raises(SoftpromptError, match="this machine has no CUDA GPU"):
        load_backbone(str(tiny_llama_dir), device="cuda")


@pytest.mark.parametrize("method", ["prompt_tuning", "lora", "bitfit"])
@pytest.mark.slow
def test_bf16_on_cpu_trains_and_reloads_the_same_outputs(tiny_llama_dir, tmp_path, method):
    soft = "{soft:4}" if method == "prompt_tuning" else ""
    result = softprompt.train(
        train_data=ROWS * 4,
        dev_data=ROWS,
        backbone=str(tiny_llama_dir),
        method=method,
        precision="bf16",
        template=soft + "Review: {text}\nSentiment:",
        verbalizer=VERBALIZER,
        train={"max_steps": 8, "eval_every": 4, "lr": 0.05},
        out=str(tmp_path / "run"),
        progress=False,
    )
    module = result.model.module
    assert module.backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16  # the frozen part
    assert {p.dtype for p in module.trainable_parameters()} == {torch.float32}  # what the optimizer updates
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").open() if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    texts = ["a great movie", "a dull film"]
    again = softprompt.load(tmp_path / "run", precision="bf16")
    assert again.module.backbone.placement.precision == "bf16"
    assert again.predict(texts) == result.model.predict(texts)


def test_a_float32_artifact_loads_in_bf16_and_agrees(tiny_llama_dir, tmp_path):
    result = softprompt.train(
        train_data=ROWS * 4,
        dev_data=ROWS,
        backbone=str(tiny_llama_dir),
        template="{soft:4}Review: {text}\nSentiment:",
        verbalizer=VERBALIZER,
        train={"max_steps": 6, "eval_every": 6, "lr": 0.05},
        out=str(tmp_path / "run"),
        progress=False,
    )
    texts = [row["text"] for row in ROWS]
    full = result.model.predict(texts)
    half = softprompt.load(tmp_path / "run", precision="bf16").predict(texts)
    # The fingerprint is taken before the cast, so the artifact is accepted; bf16 rounds the
    # scores (about 3 significant digits) but keeps the labels of this well-separated toy set.
    assert [p["label"] for p in half] == [p["label"] for p in full]
    for a, b in zip(half, full, strict=True):
        assert abs(a["scores"]["positive"] - b["scores"]["positive"]) < 0.05


def test_packed_rows_equal_padded_rows_in_bf16_with_eager_attention(tiny_llama_dir):
    """On a CPU in bf16 the backbone loads with eager attention, which adds the packing mask to
    its scores: the mask must be additive there, or packed rows would see each other."""
    from softprompt.tasks.classification.model import label_probabilities

    from .helpers import EXAMPLES, classifier

    backbone = load_backbone(str(tiny_llama_dir), device="cpu", precision="bf16")
    assert backbone.model.config._attn_implementation == "eager"
    model = classifier(backbone, "{soft:3}Review: {text} Sentiment:", {"pos": "a", "neg": "b"}, seed=1)
    packed = label_probabilities(model, EXAMPLES)
    model.task.pack = False
    assert torch.allclose(packed, label_probabilities(model, EXAMPLES), atol=1e-3)


def test_quantize_needs_cuda_and_names_its_values(tiny_llama_dir, tmp_path):
    for quantize, message in (("4bit", "quantize=4bit needs a CUDA GPU"), ("3bit", "quantize '3bit' is not one of")):
        with pytest.raises(SoftpromptError, match=message):
            load_backbone(str(tiny_llama_dir), device="cpu", quantize=quantize)
    with pytest.raises(SoftpromptError, match="quantize=8bit needs a CUDA GPU"):
        softprompt.train(
            train_data=ROWS, backbone=str(tiny_llama_dir), quantize="8bit", out=str(tmp_path / "q"), progress=False
        )
    assert not (tmp_path / "q").exists()


def test_the_fingerprint_does_not_depend_on_the_precision(tiny_llama_dir):
    prints = {load_backbone(str(tiny_llama_dir), "cpu", p).fingerprint for p in ("fp32", "bf16")}
    assert len(prints) == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [("precision=fp16", "fp16 is for inference"), ("device=cuda:0", "no CUDA GPU"), ("train.grad_accum=0", "")],
)
def test_bad_compute_settings_fail_in_one_line_and_write_nothing(base_args, tmp_path, capsys, setting, message):
    from softprompt.cli import main

    if setting.startswith("device") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "never"
    assert main(["train", *base_args, setting, f"out={out}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and "Traceback" not in error
    assert not out.exists()


def test_torchs_default_threads_on_a_busy_machine_are_warned_about(monkeypatch):
    from softprompt.backbones.placement import busy_machine_warning

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    message = busy_machine_warning(0, load=1.6)
    assert message is not None and "load 1.6" in message and "threads=1" in message
    assert busy_machine_warning(0, load=0.4) is None  # an idle machine
    assert busy_machine_warning(1, load=3.0) is None  # the user chose the threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert busy_machine_warning(0, load=3.0) is None  # one thread already


def test_decoding_on_a_cpu_runs_in_float32_and_gives_the_bf16_weights_back_exactly(tiny_llama_dir):
    """A bf16 backbone decodes in float32 on a CPU (faster there: benchmarks/decode_precision.py):
    its forward passes compute what a float32 model of the same (bf16-rounded) weights computes,
    and afterwards every weight and buffer is the same bf16 tensor it was, computing as before."""
    half = load_backbone(str(tiny_llama_dir), device="cpu", precision="bf16")
    full = load_backbone(str(tiny_llama_dir), device="cpu", precision="fp32")
    for tensor in [*full.model.parameters(), *full.model.buffers()]:
        tensor.data = tensor.data.bfloat16().float()  # what the bf16 backbone holds (rotary frequencies too)
    tensors = dict(half.model.named_parameters()) | dict(half.model.named_buffers())
    before = {name: (tensor, tensor.detach().clone()) for name, tensor in tensors.items()}
    ids = half.tokenizer(["a great movie, truly"], return_tensors="pt")["input_ids"]
    logits_before = half.model(input_ids=ids).logits
    with half.decoding():
        assert half.placement.dtype == torch.float32
        assert {p.dtype for p in half.model.parameters()} == {torch.float32}
        with half.decoding():  # nested: still float32, and not cast back when the inner one ends
            pass
        logits = half.model(input_ids=ids).logits
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, full.model(input_ids=ids).logits, atol=1e-5)
    assert half.placement.dtype == torch.bfloat16
    for name, tensor in (dict(half.model.named_parameters()) | dict(half.model.named_buffers())).items():
        same, value = before[name]
        assert tensor is same and tensor.dtype == value.dtype and torch.equal(tensor, value), name
    assert torch.equal(half.model(input_ids=ids).logits, logits_before)  # bf16 and autocast, as before


def test_decoding_gives_the_weights_back_when_it_fails_and_leaves_float32_alone(tiny_llama_dir):
    half = load_backbone(str(tiny_llama_dir), device="cpu", precision="bf16")
    with pytest.raises(RuntimeError, match="inside"), half.decoding():
        raise RuntimeError("inside")
    assert half.placement.dtype == torch.bfloat16 and half._holders == 0
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    full = load_backbone(str(tiny_llama_dir), device="cpu", precision="fp32")
    weight = full.model.get_input_embeddings().weight
    with full.decoding():
        assert full.model.get_input_embeddings().weight is weight and full._held is None  # nothing to do


def test_detox_sampling_and_its_perplexity_run_in_float32_on_a_bf16_backbone(tiny_llama_dir, monkeypatch):
    from softprompt.core import forward as core
    from softprompt.generation import running, sampling
    from softprompt.generation.rows import Steering

    half = load_backbone(str(tiny_llama_dir), device="cpu", precision="bf16")
    seen = []
    original = core.next_token_logits

    def spy(backbone, *args, **kwargs):
        seen.append(backbone.model.get_input_embeddings().weight.dtype)
        return original(backbone, *args, **kwargs)

    monkeypatch.setattr(core, "next_token_logits", spy)
    out = running.sample_continuations(half, Steering(), ["So I said"], 2, 3, 0.9, [1])
    sampling.continuation_nll(half, ["So I said"], out.tokens)
    assert seen and set(seen) == {torch.float32}
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.slow
def test_a_bf16_generation_run_decodes_its_test_split_in_float32(tiny_llama_dir, tmp_path, monkeypatch):
    from softprompt.generation import decode as decoding

    seen = []
    original = decoding.decode_batch

    def spy(backbone, method, prompts, settings):
        seen.append(backbone.model.get_input_embeddings().weight.dtype)
        return original(backbone, method, prompts, settings)

    monkeypatch.setattr(decoding, "decode_batch", spy)
    pairs = [{"text": "you are a stupid cat", "target": "you are a cat"}]
    pairs += [{"text": "what a dumb idea", "target": "what an idea"}]
    result = softprompt.train(
        task="generation",
        backbone=str(tiny_llama_dir),
        precision="bf16",
        train_data=pairs * 4,
        dev_data=pairs,
        test_data=pairs,
        out=str(tmp_path / "run"),
        progress=False,
        prompt={"init": "vocab", "length": 2},
        train={"max_steps": 2, "batch_size": 4},
        gen={"max_new_tokens": 3},
    )
    assert seen and set(seen) == {torch.float32}  # the test split was decoded in float32
    assert "test" in result.metrics and result.model.module.backbone.placement.precision == "bf16"
    assert result.model.module.backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
