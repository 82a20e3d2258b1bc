"""Training under `accelerate launch` with 2 CPU processes (gloo): data parallel (DDP) and the
frozen backbone sharded with FSDP, each against a 1-process run of the same global batch; and the
launch configs the loop refuses."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt.artifact import read_artifact
from softprompt.errors import SoftpromptError
from softprompt.training.sharding import Sharding, requested_sharding

LAUNCH_TIMEOUT = 600  # seconds: a collective that one process never joins would hang, not fail


def _settings(tiny_llama_dir, files, *extra: str) -> list[str]:
    return [
        "train",
        f"backbone={tiny_llama_dir}",
        f"data.train={files['train']}",
        f"data.dev={files['dev']}",
        "verbalizer={positive: positive, negative: negative}",
        "template={soft:3}Review: {text} Sentiment:",
        "prompt.init=vocab",
        "train.batch_size=4",
        "train.max_steps=4",
        "train.eval_every=4",
        "train.lr=0.05",
        "threads=1",
        *extra,
    ]


def _launch_two(settings: list[str], out: Path, *launch_options: str) -> subprocess.CompletedProcess:
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate launcher is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1", *launch_options]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    command = [*launch, "-m", "softprompt", *settings, f"out={out}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _run_one(settings: list[str], out: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "softprompt", *settings, f"out={out}"], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def _assert_same_run(one: Path, two: Path) -> None:
    """The same trained state (float32 rounding apart) and the same loss at every step."""
    a, b = read_artifact(one).state, read_artifact(two).state
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert _losses(one) == pytest.approx(_losses(two), abs=1e-5)


@pytest.mark.slow
def test_two_processes_under_accelerate_match_one_with_the_same_global_batch(tiny_llama_dir, sentiment_files, tmp_path):
    # Each process takes half of every batch of 4 and accelerate's DDP averages the gradients:
    # the prompt must end where a 1-process run ends.
    settings = _settings(tiny_llama_dir, sentiment_files, "--quiet")
    two = _launch_two(settings, tmp_path / "two", "--multi_gpu")
    assert two.returncode == 0, two.stderr[-2000:]
    _run_one(settings, tmp_path / "one")
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def _fsdp_matches_one(settings: list[str], tmp_path: Path, *fsdp_options: str) -> list[dict]:
    """Train under a 2-process FSDP launch and in one process; both must shard the tiny model's
    2 blocks (in each process) and end alike. Returns the two runs' test metrics."""
    two = _launch_two(settings, tmp_path / "two", "--use_fsdp", *fsdp_options)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("FSDP: the frozen weights of 2 blocks are sharded across 2 processes") == 2
    _run_one(settings, tmp_path / "one")
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    return [json.loads((tmp_path / name / "task.json").read_text())["metrics"]["test"] for name in ("one", "two")]


@pytest.mark.parametrize(
    ("method", "fsdp_options"),
    [
        ("prompt_tuning", ["--fsdp_version", "2", "--fsdp_reshard_after_forward", "true"]),
        # FSDP1 settings are honoured too; LoRA's matrices sit inside the sharded blocks, kept whole
        ("lora", ["--fsdp_version", "1", "--fsdp_sharding_strategy", "SHARD_GRAD_OP"]),
    ],
)
@pytest.mark.slow
def test_fsdp_launch_shards_the_frozen_blocks_and_trains_as_one_process(
    tiny_llama_dir, sentiment_files, tmp_path, method, fsdp_options
):
    # The test split makes both processes run the final evaluation together (its forward
    # passes gather the sharded blocks), which is where a main-only pass would hang.
    settings = _settings(tiny_llama_dir, sentiment_files, f"method={method}", f"data.test={sentiment_files['test']}")
    if method == "lora":
        settings = [s for s in settings if not s.startswith(("template=", "prompt.init"))]
        settings.append("template=Review: {text} Sentiment:")
    # the tiny Llama's 2 decoder blocks, named by the model's _no_split_modules
    tested = _fsdp_matches_one(settings, tmp_path, *fsdp_options)
    assert tested[0]["accuracy"] == tested[1]["accuracy"]


@pytest.mark.slow
def test_fsdp_launch_trains_a_tagger_on_an_encoder_as_one_process(tiny_bert_dir, tmp_path):
    # BERT lists its embeddings module among the blocks to keep whole: it must stay unsharded
    # (soft prompts call the embedding layer directly), only the 2 encoder layers are sharded.
    from .test_ner import SENTENCES, write_conll

    files = {split: write_conll(tmp_path / f"{split}.txt", SENTENCES * n) for split, n in (("train", 4), ("dev", 1))}
    settings = ["train", "task=ner", f"backbone={tiny_bert_dir}", "method=prompt_tuning"]
    settings += [f"data.train={files['train']}", f"data.dev={files['dev']}", f"data.test={files['dev']}"]
    settings += ["prompt.length=3", "prompt.init=vocab", "train.batch_size=4", "train.max_steps=3"]
    settings += ["train.eval_every=3", "train.lr=0.05", "threads=1"]
    tested = _fsdp_matches_one(settings, tmp_path, "--fsdp_version", "2")
    assert tested[0]["f1"] == tested[1]["f1"]


def _fsdp_env(monkeypatch, **settings: str) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def test_the_fsdp_settings_of_the_launch_config_are_read(monkeypatch):
    assert requested_sharding() is None  # no launch config: nothing sharded
    _fsdp_env(monkeypatch, FSDP_VERSION="2", FSDP_RESHARD_AFTER_FORWARD="false")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")
    assert requested_sharding() == Sharding(reshard_after_forward=False, block_names=("LlamaDecoderLayer",))
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert requested_sharding() is None  # plain data parallel
    # `accelerate config` saves FSDP1's strategy as fsdp_reshard_after_forward; the launcher
    # then sets FSDP_SHARDING_STRATEGY to its FULL_SHARD default
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "SHARD_GRAD_OP")
    assert requested_sharding().reshard_after_forward is False
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "HYBRID_SHARD")
    with pytest.raises(SoftpromptError, match="fsdp_sharding_strategy HYBRID_SHARD"):
        requested_sharding()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launch configs are not supported"),
        ({"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params is not supported"),
        ({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "use FULL_SHARD, SHARD_GRAD_OP or NO_SHARD"),
    ],
)
def test_launch_configs_the_loop_cannot_honour_are_refused_in_one_line(monkeypatch, settings, message):
    _fsdp_env(monkeypatch, **settings)
    with pytest.raises(SoftpromptError, match=message) as refused:
        requested_sharding()
    assert "\n" not in str(refused.value)


def test_commands_that_do_not_shard_refuse_an_fsdp_launch_before_writing(monkeypatch, tiny_llama_dir, tmp_path, capsys):
    from softprompt.cli import main

    _fsdp_env(monkeypatch, FSDP_VERSION="2")
    out = tmp_path / "detox"
    assert main(["detox", "train", f"backbone={tiny_llama_dir}", "data=missing.tsv", f"out={out}"]) == 2
    assert "softprompt detox train does not shard the backbone with FSDP" in capsys.readouterr().err
    assert not out.exists()
    # softprompt train refuses what it cannot honour under FSDP before loading anything
    assert main(["train", f"backbone={tiny_llama_dir}", "train.gradient_checkpointing=true", f"out={out}"]) == 2
    assert "'train.gradient_checkpointing': not supported with FSDP yet" in capsys.readouterr().err
    assert not out.exists()


def test_a_command_that_does_not_shard_refuses_an_fsdp_launch(monkeypatch, tmp_path):
    from softprompt.config import TrainConfig
    from softprompt.training.loop import fit

    _fsdp_env(monkeypatch, FSDP_VERSION="2")
    with pytest.raises(SoftpromptError, match="launch it without the FSDP config"):
        fit(None, [], TrainConfig(), 0, tmp_path, lambda step, dev: None, dict)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow
def test_fsdp_launch_trains_a_generation_task_as_one_process(tiny_llama_dir, tmp_path):
    # Text to text: the loss runs its leading soft block inline under FSDP, and the final test
    # pass decodes with transformers' generate on both processes together.
    from .conftest import write_jsonl
    from .test_generation import PAIRS

    rows = [{"text": text, "target": target} for text, target in PAIRS]
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows * n) for split, n in (("train", 2), ("dev", 1))}
    settings = [
        "train",
        "task=generation",
        f"backbone={tiny_llama_dir}",
        f"data.train={files['train']}",
        f"data.dev={files['dev']}",
        f"data.test={files['dev']}",
        "prompt.init=vocab",
        "prompt.length=3",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.lr=0.05",
        "gen.max_new_tokens=4",
        "threads=1",
    ]
    tested = _fsdp_matches_one(settings, tmp_path, "--fsdp_version", "2")
    assert tested[0]["examples"] == tested[1]["examples"]  # the same decoded outputs


def test_sharding_needs_blocks_with_frozen_weights(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from softprompt.training.sharding import _blocks, shard_frozen_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    # nested classes: the outer blocks only
    assert [type(b).__name__ for b in _blocks(model, ("LlamaDecoderLayer", "LlamaMLP"))] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(SoftpromptError, match="nothing frozen is left to shard"):  # method=full
        shard_frozen_blocks(model, model.parameters(), Sharding(reshard_after_forward=True))
    with pytest.raises(SoftpromptError, match="set fsdp_transformer_layer_cls_to_wrap"):
        shard_frozen_blocks(model, [], Sharding(reshard_after_forward=True, block_names=("GPT2Block",)))


def test_sharding_wraps_the_blocks_and_keeps_trained_weights_whole(tiny_llama_dir):
    # One process (a process group of size 1): every block is wrapped, its frozen weights become
    # sharded tensors, the trained ones (here the first block's q_proj) stay plain parameters,
    # and a backbone sharded once is refused a second time.
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from softprompt.training.sharding import shard_frozen_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trained = model.model.layers[0].self_attn.q_proj.weight
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)
    try:
        assert shard_frozen_blocks(model, [trained], Sharding(reshard_after_forward=True)) == 2
        assert all(isinstance(layer, FSDPModule) for layer in model.model.layers)
        assert not isinstance(model.model.layers[0].self_attn.q_proj.weight, DTensor)
        assert isinstance(model.model.layers[0].self_attn.k_proj.weight, DTensor)
        with pytest.raises(SoftpromptError, match="sharded by an earlier run"):
            shard_frozen_blocks(model, [trained], Sharding(reshard_after_forward=True))
    finally:
        dist.destroy_process_group()
