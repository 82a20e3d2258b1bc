"""The GPU check: the ``gpu``-marked tests, then ours against peft on a ~1B Llama in bf16.

The model is Llama-3.2-1B's architecture (16 layers, hidden 2048, 1.24B parameters) built from
its config with random weights: speed does not depend on weight values, and nothing can be
downloaded on the GPU machine. Texts are Rotten Tomatoes reviews and the tokenizer SmolLM2's,
both prepared here and carried there. In one run: training steps/s and peak GPU memory (ours vs
peft PROMPT_TUNING, batch 16, 20 soft tokens), mixed 8-task inference texts/s (ours vs peft
switching adapters), and the achieved FLOP/s of our training step as a share of a bf16 matmul's.

Here (a machine with the bundled packages and pip):

    python benchmarks/gpu.py --prepare .gpu    # .gpu/ is git-ignored: tokenizer, texts, wheels

On the GPU machine (the device tool's ``run`` with ``carry=[".gpu"]``), as one command:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl &&
    PYTHONPATH=/tmp/site:src python3 benchmarks/gpu.py --assets .gpu --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
# What the GPU machine's image lacks (or holds at other versions) for the tests and benchmarks.
WHEELS = [
    "transformers==5.23.0",
    "huggingface-hub==2.4.0",
    "peft==0.21.2",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "pydantic==2.13.4",
    "pydantic-core==2.46.4",
    "annotated-types==0.7.0",
    "typing-inspection==0.4.2",
    "annotated-doc==0.0.7",
    "nltk==3.10.4",  # rouge-score's stemmer (text-to-text metrics)
]
# Published as source archives only: their (pure-Python) wheels are built here.
SOURCE_ONLY = ["seqeval==1.2.2", "rouge-score==0.1.2"]
LLAMA_1B = {  # Llama-3.2-1B's shape
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def prepare(assets: Path) -> None:
    """Tokenizer, texts and wheels for the GPU machine, into ``assets``."""
    sys.path.insert(0, str(HERE))
    from softprompt.backbones.sources import resolve
    from train_speed import load_examples

    assets.mkdir(parents=True, exist_ok=True)
    _, _, directory = resolve("smollm2-135m")
    (assets / "tokenizer").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            shutil.copy(directory / name, assets / "tokenizer" / name)
    for split, count in (("train", 16 * 40), ("test", 1000)):
        rows = [{"text": e.text, "label": e.label} for e in load_examples(count, None, split)]
        (assets / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    wheels = assets / "wheels"
    platform = ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
    target = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", *platform]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", *target, "-d", str(wheels), *WHEELS], check=True
    )
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), *SOURCE_ONLY], check=True)
    print(f"prepared {assets}: carry it to the GPU machine")


def build_llama(assets: Path, out: Path) -> Path:
    """A random Llama-3.2-1B-shaped model in bf16 with the carried tokenizer, saved to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).to(torch.bfloat16)
    model.save_pretrained(out)
    for item in (assets / "tokenizer").iterdir():
        shutil.copy(item, out / item.name)
    return out


def _run(command: list[str], log: Path) -> tuple[int, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr, encoding="utf-8")
    print(f"{' '.join(command[:3])}... exit {done.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
    return done.returncode, done.stdout


def check(assets: Path, out: Path) -> None:
    """Run the tests and both benchmarks; print the table and write ``gpu.json`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    code, text = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], out / "tests.log")
    tests = text.strip().splitlines()[-1] if text.strip() else "no output"
    model = build_llama(assets, Path("/tmp/llama-1b-random"))
    common = ["--backbone", str(model), "--device", "cuda", "--precision", "bf16", "--threads", "8"]
    train_json, mixed_json = out / "train_speed_gpu.json", out / "mixed_inference_gpu.json"
    train = [
        "--rounds",
        "1",
        "--steps",
        "20",
        "--warmup",
        "3",
        "--batch",
        "16",
        "--soft",
        "20",
        "--out",
        str(train_json),
    ]
    train_script = [sys.executable, str(HERE / "train_speed.py"), "--texts", str(assets / "train.jsonl")]
    _run([*train_script, *common, *train], out / "train_speed.log")
    mixed = ["--tasks", "8", "--texts", "1000", "--batch", "32", "--rounds", "3", "--out", str(mixed_json)]
    mixed_script = [sys.executable, str(HERE / "mixed_inference.py"), "--texts-file", str(assets / "test.jsonl")]
    _run([*mixed_script, *common, *mixed], out / "mixed_inference.log")
    report = {"tests": tests, "tests_exit": code}
    for name, path in (("train", train_json), ("mixed", mixed_json)):
        report[name] = json.loads(path.read_text()) if path.is_file() else None
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(f"\ngpu tests: {tests}\n")
    print("| measure | ours | peft | ours / peft | target |\n|---|---|---|---|---|")
    if report["train"]:
        ours, peft = report["train"]["summary"]["ours"], report["train"]["summary"]["peft"]
        print(
            f"| training steps/s | {ours['steps_per_second']:.2f} | {peft['steps_per_second']:.2f} | "
            f"{report['train']['speedup']:.2f}x | >= 1.5x |"
        )
        print(
            f"| peak GPU memory (MB) | {ours['peak_memory_mb']:,.0f} | {peft['peak_memory_mb']:,.0f} | "
            f"{report['train']['memory_ratio']:.2f} | <= 1 |"
        )
        print(f"| our step's FLOP/s / bf16 matmul FLOP/s | {ours['efficiency']:.2f} | | | reported |")
    if report["mixed"]:
        rate = report["mixed"]["texts_per_second"]
        speedup = report["mixed"]["speedup"]
        print(f"| mixed 8-task texts/s | {rate['ours']:.0f} | {rate['peft']:.0f} | {speedup:.2f}x | >= 3x |")
    print(f"\nwrote {out / 'gpu.json'} (logs beside it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="write the carried assets to this folder (here)")
    parser.add_argument("--assets", type=Path, default=ROOT / ".gpu", help="the carried assets (there)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results" / "gpu")))
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
    else:
        check(args.assets, args.out)


if __name__ == "__main__":
    main()
