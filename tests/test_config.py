import re

import pytest

from softprompt.config import load_config
from softprompt.config.recipe import parse_overrides
from softprompt.errors import SoftpromptError


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        overrides=[
            "train.lr=3e-3",
            "train.batch_size=8",
            "prompt.init=text:a b",
            "verbalizer={pos: good, neg: [bad, awful]}",
            "data.max_train=none",
        ]
    )
    assert cfg.train.lr == pytest.approx(0.003) and cfg.train.batch_size == 8
    assert cfg.prompt.init == "text:a b"
    assert cfg.verbalizer == {"pos": "good", "neg": ["bad", "awful"]}
    assert cfg.data.max_train is None


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\ntrain:\n  lr: 0.1\n  max_steps: 7\n")
    cfg = load_config(path, ["train.lr=0.2"])
    assert (cfg.seed, cfg.train.lr, cfg.train.max_steps) == (3, 0.2, 7)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.lr=1", "unknown config key 'trian' (did you mean 'train'?)"),
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.lr=abc", "config field 'train.lr': expected float"),
        ("train.batch_size=0", "config field 'train.batch_size': must be >= 1"),
        ("prompt.init=zeros", "config field 'prompt.init'"),
        ("train=3", "is a section"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(SoftpromptError, match=re.escape(message)):
        load_config(overrides=[override])


def test_override_without_equals():
    with pytest.raises(SoftpromptError, match="expected key=value"):
        parse_overrides(["train.lr"])


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(SoftpromptError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SoftpromptError, match=r"bad.yaml line \d+: invalid YAML"):
        load_config(bad)
