"""Prompt caches kept in a folder (``serve --prompt-cache-dir``): read back instead of computed,
never mistaken for another prompt's or another backbone's, checked, bounded."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.cli import main
from softprompt.core.prompt_cache_folder import PromptCacheFolder
from softprompt.core.prompt_caches import PromptCaches, PromptCacheSettings
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.tasks.classification.mixed import MixedPromptClassifier, classify_mixed
from softprompt.tasks.classification.model import label_probabilities

from .helpers import EXAMPLES, classifier


@pytest.fixture
def models(tiny_backbone):
    return {
        "a": classifier(tiny_backbone, "{soft:3}Review: {text} Sentiment:", {"pos": "a", "neg": "b"}, seed=1),
        "b": classifier(tiny_backbone, "{soft:5}Text: {text} Long?", {"y": "b", "n": "a"}, seed=2),
        "c": classifier(tiny_backbone, "Q: {text}{soft:2} A:", {"x": "b", "y": "a"}, seed=3),
    }


def answers(models, store) -> torch.Tensor:
    requests = [(name, example) for example in EXAMPLES for name in models]
    return torch.stack(classify_mixed(MixedPromptClassifier(models, store), requests, batch_size=4))


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_a_store_reads_back_what_an_earlier_store_wrote_instead_of_computing_it(tiny_backbone, models, tmp_path, dtype):
    # A budget of 1 byte keeps one cache in memory: the other misses are read from the folder.
    first = PromptCaches(tiny_backbone, 1, dtype, PromptCacheFolder(tmp_path, tiny_backbone, dtype))
    computed = answers(models, first)
    assert first.folder.writes == 2 and first.folder.reads > 0  # "c" has no leading prompt: nothing to keep
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 2
    later = PromptCaches(tiny_backbone, None, dtype, PromptCacheFolder(tmp_path, tiny_backbone, dtype))
    read = answers(models, later)
    assert later.folder.reads == 2 and later.misses == 1 and later.folder.writes == 0  # the one miss: "c"
    assert torch.equal(read, computed)  # the same values, read instead of computed
    if dtype is None:
        alone = torch.stack([label_probabilities(m, EXAMPLES) for m in models.values()], dim=1).flatten(0, 1)
        assert torch.allclose(read, alone, atol=1e-5)


def test_another_prompt_dtype_or_backbone_never_finds_the_cache(tiny_backbone, tmp_path):
    folder = PromptCacheFolder(tmp_path, tiny_backbone)
    prompt = torch.randn(3, tiny_backbone.hidden_size)
    assert folder.path_of(prompt) == folder.path_of(prompt.clone())
    assert folder.path_of(prompt + 1e-6) != folder.path_of(prompt)
    assert folder.path_of(prompt[:2]) != folder.path_of(prompt)
    halves = PromptCacheFolder(tmp_path, tiny_backbone, torch.float16)
    assert halves.path_of(prompt) != folder.path_of(prompt)
    other = PromptCacheFolder(tmp_path, dataclasses.replace(tiny_backbone, fingerprint="other weights"))
    assert other.path_of(prompt) != folder.path_of(prompt)


def test_a_damaged_file_is_removed_and_its_cache_computed_again(tiny_backbone, models, tmp_path):
    store = PromptCaches(tiny_backbone, None, None, PromptCacheFolder(tmp_path, tiny_backbone))
    right = answers(models, store)
    files = sorted(tmp_path.glob("*/*.safetensors"))
    data = bytearray(files[0].read_bytes())
    data[-5] ^= 0xFF  # one value of the last tensor changed: the checksum no longer agrees
    files[0].write_bytes(bytes(data))
    files[1].write_bytes(files[1].read_bytes()[:100])  # cut short
    again = PromptCaches(tiny_backbone, None, None, PromptCacheFolder(tmp_path, tiny_backbone))
    assert torch.equal(answers(models, again), right)
    assert again.folder.reads == 0 and again.misses == 3 and again.folder.writes == 2  # both written anew
    assert all(PromptCacheFolder(tmp_path, tiny_backbone).read(p) is not None for p in _prompts(models))


def _prompts(models) -> list[torch.Tensor]:
    return [models["a"].method.soft_embeddings()[:3].float(), models["b"].method.soft_embeddings()[:5].float()]


def test_the_folder_keeps_to_its_budget_removing_the_least_recently_used(tiny_backbone, tmp_path):
    store = PromptCaches(tiny_backbone)
    prompts = [torch.randn(4, tiny_backbone.hidden_size, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    layers = store.own(list(range(6)), prompts.__getitem__)
    size = len(_one_file(tiny_backbone, tmp_path / "probe", prompts[0], layers[0]))
    folder = PromptCacheFolder(tmp_path / "kept", tiny_backbone, max_bytes=int(3.5 * size))
    for i in range(3):
        folder.write(prompts[i], layers[i])
        os.utime(folder.path_of(prompts[i]), (1000 + i, 1000 + i))  # written in this order, seconds apart
    assert folder.read(prompts[0]) is not None  # used now: the most recent
    folder.write(prompts[3], layers[3])  # past the budget: the least recently used (1) goes
    kept = [folder.path_of(p).exists() for p in prompts[:4]]
    assert kept == [True, False, True, True] and folder.bytes <= folder.max_bytes
    assert folder.bytes == sum(f.stat().st_size for f in (tmp_path / "kept").glob("*/*.safetensors"))


def _one_file(backbone, where, prompt, layers) -> bytes:
    PromptCacheFolder(where, backbone).write(prompt, layers)
    return next(where.glob("*/*.safetensors")).read_bytes()


@pytest.mark.slow
def test_a_restarted_server_reads_its_caches_from_the_folder(tiny_backbone, served_tasks, tmp_path):
    caches = PromptCacheSettings(folder=str(tmp_path / "kv"))
    first = Service(tiny_backbone, served_tasks, caches)  # warms every task at start: computed, written
    assert first.tasks.prompt_caches.misses == 0 and first.tasks.prompt_caches.folder.writes >= 1
    written = first.tasks.prompt_caches.folder.writes
    with TestClient(create_app(Service(tiny_backbone, served_tasks, caches), ServeSettings(max_wait_ms=1))) as client:
        texts = {"task": "sentiment", "texts": ["a great movie"]}
        assert client.post("/v1/classify", json=texts).status_code == 200
        metrics = client.get("/metrics").text
    assert f"softprompt_prompt_cache_folder_hits_total {float(written)}" in metrics
    assert "softprompt_prompt_cache_misses_total 0.0" in metrics


def test_an_unwritable_cache_folder_is_refused_in_one_line_before_the_backbone_loads(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    flags = ["--prompt-cache-dir", str(blocked / "kv")]
    assert main(["serve", "--artifacts", str(tmp_path), "--backbone", "nowhere", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prompt-cache-dir" in err and "give a writable folder" in err and len(err.splitlines()) == 1
