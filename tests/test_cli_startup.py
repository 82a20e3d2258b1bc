"""The command line and the configs are read and checked before torch and transformers load.

Structural checks (what a fresh process has imported), not timings: ``benchmarks/cli_startup.py``
measures the seconds.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.config import catalogue, load_config
from softprompt.errors import SoftpromptError

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: the test process itself has long imported torch.
PROBE = r"""
import contextlib, io, json, sys
import softprompt.cli as cli

def subcommands(parser, prefix=()):
    for action in parser._actions:
        if getattr(action, "choices", None) and hasattr(action, "_name_parser_map"):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from subcommands(sub, (*prefix, name))

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exc:
            status = exc.code
    return status, err.getvalue().strip()

helped = [" ".join(c) for c in subcommands(cli.build_parser()) if run([*c, "--help"])[0] == 0]
bad = [
    ["train", "--config", "configs/sentiment_prompt.yaml", "calibrate=contextal"],
    ["train", "--config", "configs/chinese_sentiment_lora.yaml", "lora.layers=top:0"],
    ["compare", "--config", "configs/sentiment_prompt.yaml", "methods=lora,lorra"],
    ["continual", "--config", "configs/continual_en.yaml", "strategy=replay"],
    ["multitask", "tasks=[{dataset: rotten-tomatoes}]", "method=lora"],
    ["detox", "train", "data=x.tsv", "kind=expert"],
    ["detox", "eval", "prompts=x.jsonl", "samples=0"],
    ["generate", "top_p=2", "a prompt"],
    ["predict", "./no-such-run", "a text"],
    ["eval", "./no-such-run", "--max-examples", "5"],
    ["export", "./no-such-run", "--out", "x.safetensors"],
]
errors = [run(argv) for argv in bad]
print(json.dumps({
    "helped": helped,
    "errors": errors,
    "heavy": sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_help_and_bad_configs_need_neither_torch_nor_transformers(probe):
    assert probe["heavy"] == [], f"imported before the command ran: {probe['heavy']}"


def test_every_command_answers_help(probe):
    assert {"train", "compare", "eval", "predict", "generate", "export", "serve", "detox eval"} <= set(probe["helped"])


def test_each_mistake_is_one_line_with_status_2(probe):
    for status, err in probe["errors"]:
        assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    messages = [err for _, err in probe["errors"]]
    assert "'contextal' is not one of none, contextual" in messages[0]
    assert "lora.layers" in messages[1]
    assert "unknown method 'lorra'" in messages[2]
    assert "./no-such-run: no such folder" in messages[-1]


def test_load_config_checks_names_from_the_catalogue():
    with pytest.raises(SoftpromptError, match="unknown method 'lroa' \\(did you mean 'lora'\\?\\)"):
        load_config(None, ["method=lroa"])
    with pytest.raises(SoftpromptError, match="unknown task 'clasification'"):
        load_config(None, ["task=clasification"])
    with pytest.raises(SoftpromptError, match="unknown config key 'lroa'"):
        load_config(None, ["lroa.r=4"])


def test_the_catalogue_matches_the_registries():
    """The catalogue reads the decorators without importing; the registries are what importing
    them made: every name, class, options class and flag must agree."""
    from softprompt.methods import METHODS
    from softprompt.tasks import TASKS

    assert sorted(catalogue.methods()) == sorted(METHODS)
    for name, spec in METHODS.items():
        declared = catalogue.methods()[name]
        assert (declared.module, declared.class_name) == (spec.builder.__module__, spec.builder.__name__)
        assert catalogue.option_sections().get(name) is spec.options
        for flag in ("trains", "uses_soft_tokens", "default_lr", "identity_at_start", "changes_layers", "sequential"):
            assert declared.settings[flag] == getattr(spec, flag), (name, flag)
    assert sorted(catalogue.tasks()) == sorted(TASKS)
    for name, spec in TASKS.items():
        declared = catalogue.tasks()[name]
        assert (declared.module, declared.class_name) == (type(spec).__module__, type(spec).__name__)


def test_the_server_does_not_import_scikit_learn():
    """scikit-learn (and the pandas and pyarrow it brings, about 100 MB) is for evaluation: a
    server importing the classification task for its prediction profiles does not need it."""
    code = "import sys, softprompt.serving.app; print(sorted(m for m in ('sklearn', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
