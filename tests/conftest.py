"""Shared fixtures: tiny random Llama and BERT models built from configs (no weights, no network)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from .postgres_server import postgres_url  # noqa: F401 - a fixture for every test module

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request, monkeypatch):
    """Tests not marked ``gpu`` state CPU expectations (fp32 tolerances, "no CUDA here"): on a
    machine with a GPU they still run on the CPU, in this process and in the ones they start."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


SHARED_DATA = Path(os.environ.get("SOFTPROMPT_SHARED_DATA", Path(__file__).parents[1].parent / "shared" / "data"))


def _save_tokenizer(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        shutil.copy(item, dst / item.name)


def make_tiny_llama(out: Path, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (weights drawn with ``seed``) and the tiny BPE tokenizer to ``out``."""
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-bpe")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # large enough that a soft prompt visibly changes the output
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    _save_tokenizer(ASSETS / "tiny-bpe", out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the tiny byte-level BPE tokenizer, saved as an HF directory."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gemma_chinese_dir(tmp_path_factory) -> Path:
    """A 2-layer random Gemma 3 (the multilingual backbone's architecture) with a tiny Chinese tokenizer."""
    out = tmp_path_factory.mktemp("tiny-gemma-zh")
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-chinese")
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        sliding_window=16,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(out)
    _save_tokenizer(ASSETS / "tiny-chinese", out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT encoder with the tiny WordPiece tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-wordpiece")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    _save_tokenizer(ASSETS / "tiny-wordpiece", out)
    return out


POSITIVE = ["a great movie", "wonderful and superb", "a fine cast, great", "superb and great", "good fun"]
NEGATIVE = ["a dull film", "terrible and awful", "boring, badly acted", "awful and dull", "bad and boring"]


@pytest.fixture(scope="session")
def tiny_backbone(tiny_llama_dir):
    """The tiny Llama, loaded once for the session: a test that changes it must undo the change
    (``monkeypatch``)."""
    from softprompt.backbones import load_backbone

    return load_backbone(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def served_tasks(tmp_path_factory, tiny_llama_dir) -> Path:
    """A folder of two artifacts trained once for the session, as a server serves them: the
    classifier ``sentiment`` and the generation task ``polite``. Read it only; copy it to change it."""
    from .helpers import train_served_tasks

    return train_served_tasks(tmp_path_factory.mktemp("served-tasks"), tiny_llama_dir)


@pytest.fixture
def served_copy(served_tasks, tmp_path) -> Path:
    """A copy of ``served_tasks`` of the test's own, at ``tmp_path / "served"``."""
    root = tmp_path / "served"
    shutil.copytree(served_tasks, root)
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_files(tmp_path) -> dict[str, Path]:
    """Small train/dev/test JSONL files with labels positive/negative."""
    rows = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
    files = {}
    for split, reps in (("train", 4), ("dev", 1), ("test", 1)):
        files[split] = write_jsonl(tmp_path / f"{split}.jsonl", rows * reps)
    return files


@pytest.fixture
def base_args(tiny_llama_dir, sentiment_files):
    """Command-line settings of a quick run of the tiny model on ``sentiment_files``."""
    return [
        f"backbone={tiny_llama_dir}",
        f"data.train={sentiment_files['train']}",
        f"data.dev={sentiment_files['dev']}",
        f"data.test={sentiment_files['test']}",
        "verbalizer={positive: positive, negative: negative}",
        "template=Review: {text}\\nSentiment:{soft:2}",
        "prompt.init=vocab",
        "train.batch_size=4",
        "--quiet",
    ]
