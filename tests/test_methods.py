"""The method contract, parametrized over the registry, on a tiny causal LM and a tiny encoder:
only the method's parameters receive gradients, shapes are unchanged, save -> load reproduces the
outputs, zero-initialised methods start as the identity."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.config import load_config
from softprompt.data.splits import example_splits
from softprompt.errors import SoftpromptError
from softprompt.methods import METHODS
from softprompt.tasks import get_task
from softprompt.tasks.loading import load_classifier
from softprompt.training.driver import artifact_saver
from softprompt.training.run import artifact_meta

from .helpers import EXAMPLES

TRAINED = [name for name, spec in METHODS.items() if spec.trains]


def _config(backbone_dir, files, method, out, *extra):
    soft = "{soft:3} " if METHODS[method].uses_soft_tokens else ""
    encoder = json.loads((backbone_dir / "config.json").read_text())["model_type"] == "bert"
    label = " {mask}" if encoder else ""
    return load_config(
        overrides=[
            f"backbone={backbone_dir}",
            f"method={method}",
            f"data.train={files['train']}",
            f"data.dev={files['dev']}",
            f"out={out}",
            "verbalizer={positive: positive, negative: negative}",
            f"template='{soft}Review: {{text}} Sentiment:{label}'",
            "prompt.length=3",
            "prompt.init=vocab",
            *extra,
        ]
    )


def _build(backbone_dir, files, method, out, *extra):
    config = _config(backbone_dir, files, method, out, *extra)
    backbone = load_backbone(str(backbone_dir))
    splits = example_splits(config)
    return config, backbone, splits, get_task(config.task).build(config, backbone, splits)


def _batch(model):
    return model.task.collate([model.task.encode(e) for e in EXAMPLES], [0, 1, 0, 1])


def _backbone_output(backbone) -> torch.Tensor:
    ids = backbone.tokenizer(["a great movie", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = backbone.model(**ids)
    return out.logits if backbone.kind == "causal" else out.last_hidden_state


@pytest.fixture(params=["llama", "gemma3", "bert"])
def backbone_dir(request, tiny_llama_dir, tiny_gemma_chinese_dir, tiny_bert_dir):
    return {"llama": tiny_llama_dir, "gemma3": tiny_gemma_chinese_dir, "bert": tiny_bert_dir}[request.param]


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.slow
def test_only_the_method_parameters_receive_gradients(method, backbone_dir, sentiment_files, tmp_path):
    _, backbone, _, model = _build(backbone_dir, sentiment_files, method, tmp_path)
    scores = model(_batch(model))
    assert scores.shape == (len(EXAMPLES), 2)  # one log-probability per label
    torch.nn.functional.nll_loss(scores, torch.tensor([0, 1, 0, 1])).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable and all(p.grad is not None for p in model.trainable_parameters())
    leaked = [n for n, p in backbone.model.named_parameters() if id(p) not in trainable and p.grad is not None]
    assert leaked == []


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.slow
def test_save_then_load_reproduces_outputs(method, backbone_dir, sentiment_files, tmp_path):
    config, backbone, splits, model = _build(backbone_dir, sentiment_files, method, tmp_path)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every trainable parameter off its start
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
        expected = model(_batch(model))
    artifact_saver(tmp_path, model, artifact_meta(config, model, backbone, splits))(1, {"accuracy": 0.5})
    loaded, meta = load_classifier(tmp_path, load_backbone(str(backbone_dir)))
    with torch.no_grad():
        got = loaded(_batch(loaded))
    assert got.shape == expected.shape
    # Folded reparameterisations (ptuning, prefix MLP) recompute the same numbers in another order.
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert meta["trainable_parameters"] == sum(p.numel() for p in model.trainable_parameters())


@pytest.mark.parametrize("method", [m for m in TRAINED if METHODS[m].identity_at_start])
@pytest.mark.slow
def test_zero_initialised_methods_start_as_the_identity(method, backbone_dir, sentiment_files, tmp_path):
    backbone = load_backbone(str(backbone_dir))
    before = _backbone_output(backbone)
    config = _config(backbone_dir, sentiment_files, method, tmp_path)
    get_task(config.task).build(config, backbone, example_splits(config))
    after = _backbone_output(backbone)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize("extra", [["prefix_tuning.reparam=true"], ["ptuning.encoder=mlp"]])
@pytest.mark.slow
def test_reparameterisations_fold_away_at_save(extra, sentiment_files, tiny_llama_dir, tiny_backbone, tmp_path):
    method = extra[0].split(".")[0]
    config, backbone, splits, model = _build(tiny_llama_dir, sentiment_files, method, tmp_path, *extra)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
        expected = model(_batch(model))
    artifact_saver(tmp_path, model, artifact_meta(config, model, backbone, splits))(1, {"accuracy": 0.5})
    saved = sum(v.numel() for v in model.export_state().values())
    assert saved < sum(p.numel() for p in model.trainable_parameters())  # the MLP is not saved
    loaded, _ = load_classifier(tmp_path, tiny_backbone)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch(loaded)), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_lora_merge_gives_the_same_outputs(sentiment_files, tiny_llama_dir, tmp_path):
    config, backbone, splits, model = _build(tiny_llama_dir, sentiment_files, "lora", tmp_path, "lora.merge=true")
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
        expected = model(_batch(model))
    artifact_saver(tmp_path, model, artifact_meta(config, model, backbone, splits))(1, {"accuracy": 0.5})
    loaded, _ = load_classifier(tmp_path, load_backbone(str(tiny_llama_dir)))  # its own: LoRA is merged into it
    assert all(layer.merged for layer in loaded.method._layers)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch(loaded)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_loads_lora_and_ia3_artifacts(method, sentiment_files, tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, backbone, splits, model = _build(tiny_llama_dir, sentiment_files, method, tmp_path)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    artifact_saver(tmp_path, model, artifact_meta(config, model, backbone, splits))(1, {"accuracy": 0.5})
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == method.upper()
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, backbone.model(ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reparam", ["false", "true"])
@pytest.mark.slow
def test_peft_opens_prefix_tuning_artifacts_with_our_probabilities(
    reparam, sentiment_files, tiny_llama_dir, tiny_backbone, tmp_path
):
    """Prefix tuning is saved in peft's PREFIX_TUNING layout (the tiny model has grouped-query
    attention: 4 heads, 1 key/value head); PeftModel.from_pretrained opens it and its label
    probabilities are ours to 1e-5. The MLP of prefix_tuning.reparam is folded first."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, backbone, splits, model = _build(
        tiny_llama_dir, sentiment_files, "prefix_tuning", tmp_path, f"prefix_tuning.reparam={reparam}"
    )
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    artifact_saver(tmp_path, model, artifact_meta(config, model, backbone, splits))(1, {"accuracy": 0.5})
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PREFIX_TUNING" and adapter["num_virtual_tokens"] == 3
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path).eval()
    ours, _ = load_classifier(tmp_path, tiny_backbone)
    tokenizer = ours.backbone.tokenizer
    for example in EXAMPLES:
        ids = tokenizer(f"Review: {example.text} Sentiment:", add_special_tokens=False)["input_ids"]
        word_logps = []
        for candidate in ours.task.candidates:  # peft's log-probability of each verbalizer word
            with torch.no_grad():
                logits = theirs(input_ids=torch.tensor([ids + list(candidate.ids)])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            word_logps.append(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(candidate.ids)))
        with torch.no_grad():
            ours_scores = ours(ours.task.collate([ours.task.encode(example)]))[0]
        expected = torch.log_softmax(torch.stack(word_logps), -1).exp()
        torch.testing.assert_close(ours_scores.exp(), expected, atol=1e-5, rtol=1e-5)


def test_bitfit_adds_biases_to_bias_free_models_and_says_so(sentiment_files, tiny_llama_dir, tmp_path):
    *_, model = _build(tiny_llama_dir, sentiment_files, "bitfit", tmp_path)
    assert model.method.notes and "no bias terms" in model.method.notes[0]
    assert len(model.method.added_biases) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks


def test_full_top_layers_trains_only_those_blocks(sentiment_files, tiny_llama_dir, tmp_path):
    *_, model = _build(tiny_llama_dir, sentiment_files, "full", tmp_path, "full.layers=top:1")
    names = list(model.method._resident)
    assert names and all(n.startswith("model.layers.1.") for n in names)


def test_lora_top_layers_puts_updates_only_there(sentiment_files, tiny_llama_dir, tmp_path):
    options = ["lora.layers=top:1", "lora.target_modules=q_proj,v_proj,down_proj"]
    *_, model = _build(tiny_llama_dir, sentiment_files, "lora", tmp_path, *options)
    names = list(model.method._resident)
    assert len(names) == 6 and all(n.startswith("model.layers.1.") for n in names)
    with pytest.raises(SoftpromptError, match="has only 2 blocks"):
        _build(tiny_llama_dir, sentiment_files, "lora", tmp_path, "lora.layers=top:3", "lora.target_modules=q_proj")


def test_a_backbone_carries_one_layer_changing_method(sentiment_files, tiny_llama_dir, tmp_path):
    _, backbone, splits, _ = _build(tiny_llama_dir, sentiment_files, "lora", tmp_path)
    other = _config(tiny_llama_dir, sentiment_files, "adapter", tmp_path)
    with pytest.raises(SoftpromptError, match="already carries method lora"):
        get_task(other.task).build(other, backbone, splits)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=4", "unknown config key 'lora.rank' .lora has: r, alpha"),
        ("lorra.r=4", "unknown config key 'lorra'.*'lora'"),
        ("full.layers=bottom:2", "full.layers"),
        ("lora.layers=top:0", "lora.layers"),
        ("ptuning.encoder=gru", "ptuning.encoder"),
    ],
)
def test_bad_method_options_are_named(override, message):
    with pytest.raises(SoftpromptError, match=message):
        load_config(overrides=[override])


@pytest.mark.slow
def test_prefix_tuning_starts_as_its_init_tokens_written_in_front(tiny_backbone):
    """At init the prefixes are the backbone's own keys/values of the init tokens, and the text's
    positions continue after them: the same scores as writing those tokens before the template."""
    from softprompt.config import PromptConfig
    from softprompt.prompts import Template, Verbalizer
    from softprompt.tasks.classification import build_classifier

    backbone = tiny_backbone
    words = " great movie"
    length = len(backbone.tokenizer(words, add_special_tokens=False)["input_ids"])
    verbalizer = Verbalizer({"positive": "positive", "negative": "negative"})
    template = " Review: {text}\nSentiment:"
    written = build_classifier(backbone, "none", Template(words + template), verbalizer, PromptConfig(), 0, 128)
    prompt = PromptConfig(length=length, init="text:" + words)
    prefixed = build_classifier(backbone, "prefix_tuning", Template(template), verbalizer, prompt, 0, 128)
    example = EXAMPLES[0]
    assert written.task.encode(example).ids == (
        backbone.tokenizer(words, add_special_tokens=False)["input_ids"] + prefixed.task.encode(example).ids
    )  # the tokenization splits at the boundary, so the two inputs are the same tokens
    with torch.no_grad():
        torch.testing.assert_close(prefixed(_batch(prefixed)), written(_batch(written)), atol=1e-5, rtol=1e-4)
