"""Fuzzing the Python API (``build``, ``train``, ``load``, ``Model.predict``, ``Model.evaluate``)
and the command line's ``key=value`` overrides: whatever the arguments, the outcome is a result or
one ``SoftpromptError`` with a one-line message (on the command line: exit status 2 and one
``error:`` line on stderr, no traceback), never another exception.

Every example runs on the tiny random Llama of ``conftest.py`` and stays cheap: runs that pass the
checks train one step on a handful of rows, and settings that only make a run longer (many steps,
long prompts, wide adapters) are drawn small or invalid, never large and valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import re
import tempfile
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import softprompt
from softprompt.cli import main
from softprompt.config import RunConfig, method_sections
from softprompt.errors import SoftpromptError

from .conftest import NEGATIVE, POSITIVE

ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
VERBALIZER = {"positive": "great", "negative": "bad"}
TEMPLATE = "{soft:2}Review: {text}\nSentiment:"


def _config_keys() -> list[str]:
    """Every dotted key a recipe accepts: top-level fields, section fields, method sections."""
    keys = []
    for name, hint in typing.get_type_hints(RunConfig).items():
        if name == "options":
            continue
        if dataclasses.is_dataclass(hint):
            keys += [f"{name}.{f.name}" for f in dataclasses.fields(hint)]
        else:
            keys.append(name)
    for name, options in method_sections().items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(options)]
    return keys


KEYS = _config_keys()
NEAR_MISSES = ["trian.lr", "lora", "train", "train.", ".lr", "prompt.length.x", "Seed"]
# Settings whose large valid values only make an example slow (or big): drawn small or invalid.
COSTLY = {
    "train.max_steps",
    "train.epochs",
    "train.eval_every",
    "train.patience",
    "prompt.length",
    "fewshot.k",
    "gen.max_new_tokens",
    "gen.num_beams",
    "lora.r",
    "adapter.bottleneck",
    "prefix_tuning.hidden",
    "ptuning.hidden",
    "train.batch_size",  # a batch draws that many rows (repeating the data), however few there are
    "train.grad_accum",
    "threads",  # a large valid count would change this test process's own thread pool
}
# Settings that name where files are written, or a backbone to load (a Hub id would go online).
FIXED = {"out", "backbone"}
ODD_TEXT = [
    "",
    " ",
    "\n",
    "none",
    "null",
    "nan",
    "-inf",
    "\ud800",
    "x" * 2000,
    "{text}",
    "{soft}{text}",
    "{soft:0}{text}",
    "{soft:-1}{text}",
    "{mask}{text}",
    "{label}",
    "{text}{title}",
    "{",
    "}",
    "{{text}}",
    "top:0",
    "top:-1",
    "top:x",
    "top:1",
    "text:",
    "text:great",
    "from:",
    "from:/no/such/artifact",
    "labels",
    "random",
    "vocab",
    "lstm",
    "mlp",
    "cpu",
    "cuda",
    "cuda:7",
    "mps",
    "meta",
    "fp32",
    "bf16",
    "fp16",
    "4bit",
    "lora",
    "prompt_tuning",
    "prefix_tuning",
    "ptuning",
    "ia3",
    "adapter",
    "bitfit",
    "full",
    "classification",
    "ner",
    "generation",
    "no-such-dataset",  # never a real one: a run on a built-in dataset reads and scores all of it
    "q_proj,v_proj",
    "no_such_module",
    "all-linear",
]
HUGE = [2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400, -(10**400)]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from(HUGE),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5]),
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
)
keys_of_dicts = st.one_of(
    st.text(max_size=8), st.sampled_from(["positive", "negative", "text", "label"]), st.integers()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys_of_dicts, inner, max_size=3),
    max_leaves=6,
)
cheap_numbers = st.one_of(
    st.integers(-3, 2), st.sampled_from([-(10**400), -(2**64)]), st.floats(max_value=2.0), st.text(max_size=6)
)


@st.composite
def setting(draw) -> list[tuple[str, object]]:
    """One (dotted key, value): a real key or a near miss, a value of any shape; a method's own
    key comes with ``method=<it>`` half the time, so that the method reads it."""
    key = draw(st.sampled_from(KEYS) | st.sampled_from(KEYS) | st.text(max_size=10) | st.sampled_from(NEAR_MISSES))
    if key in FIXED:
        return [("seed", draw(values))]
    pair = (key, draw(cheap_numbers if key in COSTLY else values))
    if key == "threads" and draw(st.booleans()):  # past the limit: refused before torch sees it
        pair = (key, draw(st.sampled_from(HUGE)))
    section = key.partition(".")[0]
    if section in method_sections() and draw(st.booleans()):
        return [("method", section), pair]
    return [pair]


def settings_list(min_size: int = 0, max_size: int = 3):
    return st.lists(setting(), min_size=min_size, max_size=max_size).map(
        lambda lists: [pair for pairs in lists for pair in pairs]
    )


def nested(pairs: list[tuple[str, object]]) -> dict:
    """``[("train.lr", 1)]`` -> ``{"train": {"lr": 1}}`` (a later pair wins over an earlier one)."""
    out: dict = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[leaf] = value
    return out


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def outcome(call):
    """The result of ``call()``, or None after a one-line SoftpromptError; anything else fails."""
    try:
        return call()
    except SoftpromptError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1, repr(message)
        return None


@contextlib.contextmanager
def same_threads():
    """Put back torch's thread count, which a run's ``threads=`` setting changes."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def base_settings(backbone: Path, out: str) -> dict:
    return {
        "backbone": str(backbone),
        "template": TEMPLATE,
        "verbalizer": VERBALIZER,
        "prompt": {"init": "vocab"},
        "train": {"max_steps": 1, "eval_every": 1, "batch_size": 4},
        "out": out,
    }


# ---- the config a call describes (no model) ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(settings_list(max_size=4), st.one_of(st.none(), values))
@pytest.mark.slow
def test_config_from_settings_and_any_config_argument(pairs, config):
    """``load_config(base=...)`` is what ``build``/``train`` turn ``config`` and ``**settings`` into."""
    settings_ = nested(pairs)
    outcome(lambda: softprompt.load_config(base=settings_))
    if isinstance(config, dict):
        outcome(lambda: softprompt.load_config(base=merged(config, settings_)))


# ---- build, predict, evaluate ------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(pairs=settings_list(min_size=1), train_data=st.one_of(st.none(), st.just(ROWS), values))
@pytest.mark.slow
def test_build_with_any_settings(tiny_llama_dir, pairs, train_data):
    with same_threads():
        model = outcome(
            lambda: softprompt.build(
                **merged(base_settings(tiny_llama_dir, "unused"), nested(pairs)), train_data=train_data
            )
        )
    if model is not None:
        outcome(lambda: model.predict(["a great movie", ""]))


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    return softprompt.build(backbone=str(tiny_llama_dir), template=TEMPLATE, verbalizer=VERBALIZER)


texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(ODD_TEXT),
    st.lists(st.one_of(st.text(max_size=20), st.sampled_from(ODD_TEXT)), max_size=4),
    values,
    st.binary(max_size=8),
)
batch_sizes = st.one_of(st.integers(-2, 40), st.sampled_from(HUGE), st.floats(), st.none(), st.text(max_size=3))
records = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from(ROWS),
            st.dictionaries(st.sampled_from(["text", "label", "title", ""]), values, max_size=3),
            values,
        ),
        max_size=4,
    ),
    values,
)


@settings(max_examples=120, deadline=None)
@given(texts=texts, batch_size=batch_sizes)
@pytest.mark.slow
def test_predict_with_any_texts(tiny_model, texts, batch_size):
    result = outcome(lambda: tiny_model.predict(texts, batch_size=batch_size))
    if result is not None:
        assert len(result) == (1 if isinstance(texts, str) else len(list(texts)))


@settings(max_examples=80, deadline=None)
@given(examples=records, batch_size=batch_sizes)
def test_evaluate_with_any_records(tiny_model, examples, batch_size):
    outcome(lambda: tiny_model.evaluate(examples, batch_size=batch_size))


# ---- train -------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    pairs=settings_list(min_size=1),
    data=st.fixed_dictionaries(
        {}, optional={name: st.just(ROWS) | records for name in ("train_data", "dev_data", "test_data")}
    ),
    flags=st.fixed_dictionaries({}, optional={"resume": values, "overwrite": values, "extend": values}),
)
@pytest.mark.slow
def test_train_with_any_settings(tiny_llama_dir, pairs, data, flags):
    with tempfile.TemporaryDirectory() as tmp, same_threads():
        run = merged(base_settings(tiny_llama_dir, str(Path(tmp) / "run")), nested(pairs))
        data = {"train_data": ROWS, **data}
        result = outcome(lambda: softprompt.train(**run, **data, **flags, progress=False))
        event("trained" if result is not None else "refused")
        if result is not None:
            assert result.model is not None and (result.out / "task.json").is_file()


# ---- load --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_artifact(tiny_model, tmp_path_factory) -> Path:
    return tiny_model.save(tmp_path_factory.mktemp("fuzz-artifact") / "model")


@settings(max_examples=100, deadline=None)
@given(
    where=st.one_of(st.just("artifact"), st.sampled_from(["artifact", "file", "parent", "missing"]), values),
    backbone=st.one_of(st.none(), st.none(), values),
    device=st.one_of(st.just("cpu"), st.just("auto"), values),
    precision=st.one_of(st.just("auto"), st.just("fp32"), values),
)
@pytest.mark.slow
def test_load_with_any_arguments(saved_artifact, where, backbone, device, precision):
    places = {
        "artifact": saved_artifact,
        "file": saved_artifact / "task.json",
        "parent": saved_artifact.parent,
        "missing": saved_artifact / "missing",
    }
    artifact = places.get(where, where) if isinstance(where, str) else where
    outcome(lambda: softprompt.load(artifact, backbone, device=device, precision=precision))


RECORD_KEYS = ["task", "method", "template", "verbalizer", "max_length", "backbone", "config", "data", "demonstrations"]


@settings(max_examples=80, deadline=None)
@given(
    key=st.one_of(st.sampled_from(RECORD_KEYS), st.sampled_from(KEYS).map(lambda k: f"config.{k}")),
    value=values,
)
@pytest.mark.slow
def test_load_with_a_damaged_record(saved_artifact, key, value):
    """``task.json`` edited by hand: one of its fields (or its run config's) replaced by any value."""
    with tempfile.TemporaryDirectory() as tmp, same_threads():
        model = outcome(lambda: softprompt.load(damaged_copy(saved_artifact, Path(tmp), key, value)))
        if model is not None:
            outcome(lambda: model.predict(["a great movie"]))


def damaged_copy(artifact: Path, tmp: Path, key: str, value: object) -> Path:
    """A copy of ``artifact`` whose ``task.json`` has ``value`` at the dotted ``key``."""
    folder = tmp / "model"
    folder.mkdir()
    for item in artifact.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    meta = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    *parents, leaf = key.split(".")
    node = meta
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    (folder / "task.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


# ---- the command line's key=value overrides ----------------------------------------------------


override_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
    st.sampled_from(["[1, 2]", "{a: 1}", "{positive: [great, 1], negative: null}", "'quoted'", "1e999", ".nan"]),
    st.sampled_from([str(n) for n in HUGE]),
    st.integers(-3, 3).map(str),
    st.floats().map(str),
)


@st.composite
def override(draw) -> str:
    key = draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.sampled_from(["", ".", "a..b", "train."])))
    if key in FIXED:
        key = "seed"
    value = draw(cheap_numbers.map(str) if key in COSTLY else override_values)
    return f"{key}={value}"


@pytest.fixture(scope="module")
def recipe(tiny_llama_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-cli")
    rows = "".join(json.dumps(r) + "\n" for r in ROWS)
    (folder / "train.jsonl").write_text(rows * 2, encoding="utf-8")
    (folder / "dev.jsonl").write_text(rows, encoding="utf-8")
    base = base_settings(tiny_llama_dir, str(folder / "run"))
    base["data"] = {"train": str(folder / "train.jsonl"), "dev": str(folder / "dev.jsonl")}
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(base), encoding="utf-8")  # JSON is YAML
    return path


@settings(max_examples=100, deadline=None)
@given(st.lists(override(), min_size=1, max_size=3))
@pytest.mark.slow
def test_cli_train_with_any_overrides(recipe, overrides):
    out, err = io.StringIO(), io.StringIO()
    with same_threads(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["train", "--config", str(recipe), "--quiet", "--overwrite", *overrides])
        except SystemExit as exc:  # argparse: an override that looks like an option
            status = exc.code
    lines = err.getvalue().strip().splitlines()
    event(f"exit status {status}")
    assert "Traceback" not in err.getvalue()
    if status == 0:
        return
    assert status == 2, (status, err.getvalue())
    # Ours: `error: <one line>`; argparse's (an override that looks like an option): usage, then its error.
    assert lines and re.match(r"(softprompt[ a-z]*: )?error: ", lines[-1]), err.getvalue()
    assert len(lines) == 1 or lines[-1].startswith("softprompt"), err.getvalue()


# ---- inputs the fuzzing found, kept as plain tests -------------------------------------------------


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ({0: None}, "config key 0 is not a name; keys are text, such as 'seed' or 'lr'"),
        ({"train": {1: 2}}, "config key 1 in section 'train' is not a name; keys are text, such as 'seed' or 'lr'"),
        ({"train": {"lr": 10**400}}, "config field 'train.lr': expected float, got 1000000000"),
    ],
)
def test_found_config_values(base, message):
    with pytest.raises(SoftpromptError) as caught:
        softprompt.load_config(base=base)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"seed": 10**30}, "config field 'seed': must be from 0 to 2**32 - 1, got 1000000000000000000000000000000"),
        ({"seed": -1}, "config field 'seed': must be from 0 to 2**32 - 1, got -1"),
        ({"gen": {"seed": 2**64}}, "config field 'gen.seed': must be from 0 to 2**63 - 1, got 18446744073709551616"),
        (
            {"method": "adapter", "adapter": {"bottleneck": -1}},
            "config field 'adapter.bottleneck': must be >= 1, got -1",
        ),
        (
            {"method": "ptuning", "ptuning": {"hidden": 1}},
            "config field 'ptuning.hidden': must be >= 2 with encoder=lstm",
        ),
        ({"prefix_tuning": {"hidden": 0}}, "config field 'prefix_tuning.hidden': must be >= 1, got 0"),
        (
            {"verbalizer": {"positive": datetime.date(2020, 1, 1), "negative": "bad"}},  # YAML reads 2020-01-01 so
            "verbalizer label 'positive': expected a word or a list of words, got a date",
        ),
    ],
)
def test_found_build_settings(tiny_llama_dir, settings_, message):
    with pytest.raises(SoftpromptError) as caught:
        softprompt.build(**merged(base_settings(tiny_llama_dir, "unused"), settings_), train_data=ROWS)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("batch_size", [0, None, -1, 2.0])
def test_found_batch_sizes(tiny_model, batch_size):
    """0 and None raised ValueError/TypeError; -1 returned uninitialised scores without a word."""
    shown = repr(batch_size)
    for call in (lambda: tiny_model.predict("", batch_size=batch_size), lambda: tiny_model.evaluate(ROWS, batch_size)):
        with pytest.raises(SoftpromptError, match=f"^batch_size must be a whole number >= 1, got {shown}$"):
            call()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"artifact": None}, "artifact must be the path of an artifact directory, got a NoneType"),
        (
            {"backbone": "smollm2-135m"},
            "backbone must be a Backbone from softprompt.load_backbone (or None), got a str",
        ),
        ({"device": None}, "device 'None' is not one of auto, cpu, cuda, cuda:N, mps"),
        ({"device": ["cpu"]}, "device '['cpu']' is not one of auto, cpu, cuda, cuda:N, mps"),
        ({"device": 2**63}, "device '9223372036854775808' is not one of auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_found_load_arguments(saved_artifact, arguments, message):
    arguments = {"artifact": saved_artifact, **arguments}
    with pytest.raises(SoftpromptError) as caught:
        softprompt.load(arguments.pop("artifact"), **arguments)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("method", [None], "is [None] (list), not text"),  # TypeError: unhashable type: 'list'
        ("demonstrations", True, "is True (bool), not text"),  # TypeError: bool + str
        ("config", True, "is True (bool), not a mapping"),  # TypeError: 'bool' object is not iterable
        ("verbalizer", True, "is True (bool), not a mapping"),  # TypeError: 'bool' object is not iterable
        ("backbone", None, "is None (NoneType), not a mapping"),  # TypeError: not subscriptable
        ("backbone", {}, "is missing, not text"),  # KeyError: 'name'
        ("max_length", None, "is None (NoneType), not a whole number"),  # TypeError: int - None
        ("template", None, "is None (NoneType), not text"),  # TypeError: expected string
    ],
)
def test_found_damaged_records(saved_artifact, tmp_path, key, value, shown):
    folder = damaged_copy(saved_artifact, tmp_path, key, value)
    field = "backbone.name" if key == "backbone" and value == {} else key
    with pytest.raises(SoftpromptError) as caught:
        softprompt.load(folder)
    assert str(caught.value) == (
        f"artifact {folder}: task.json field '{field}' {shown}; restore the file or train again"
    )


def test_found_override_with_a_control_character(recipe, capsys):
    """`seed=<backspace>`: PyYAML's reader error has no `problem`; reading it raised AttributeError."""
    assert main(["train", "--config", str(recipe), "--quiet", "seed=\x08"]) == 2
    assert capsys.readouterr().err == (
        "error: config field 'seed': cannot read '\\x08' (unacceptable character #x0008: special characters are not "
        "allowed)\n"
    )


def test_found_override_key_with_a_form_feed(recipe, capsys):
    """A form feed (or any other character that ends a line) in a message is shown escaped."""
    assert main(["train", "--config", str(recipe), "--quiet", "\x0c="]) == 2
    assert capsys.readouterr().err == "error: unknown config key '\\x0c'\n"


@pytest.mark.slow
def test_found_in_memory_data_with_a_dev_file_setting(tiny_llama_dir, tmp_path):
    """train_data replaces the config's files: data.dev=... beside it raised KeyError: 'dev'."""
    run = base_settings(tiny_llama_dir, str(tmp_path / "run"))
    result = softprompt.train(**merged(run, {"data": {"dev": "[]"}}), train_data=ROWS, progress=False)
    assert result.model is not None and any("held out" in note for note in result.notes)


def test_found_lone_surrogates(tiny_model):
    """A lone surrogate reached the tokenizer, which raised TypeError."""
    with pytest.raises(SoftpromptError) as caught:
        tiny_model.predict("\ud800")
    assert str(caught.value) == (
        "texts item 0: not valid Unicode (a lone surrogate '\\ud800' at character 1); texts must be UTF-8"
    )
    with pytest.raises(SoftpromptError) as caught:
        tiny_model.evaluate([*ROWS, {"text": "fine \udcff", "label": "positive"}])
    assert str(caught.value) == (
        "examples item 11, 'text': not valid Unicode (a lone surrogate '\\udcff' at character 6); texts must be UTF-8"
    )


def test_found_list_values_in_records(tiny_model):
    """Lists as text and label (shown as text, as before): the Unicode check raised KeyError: 'label'."""
    outcome(lambda: tiny_model.evaluate([{"text": [], "label": []}]))


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        # ValueError: Overflow when unpacking long (torch.set_num_threads)
        ({"threads": 2**31}, "config field 'threads': must be at most 1024, got 2147483648"),
        # TypeError: randint(): ... Overflow when unpacking long long
        (
            {"template": "{soft:99999999999999999999}{text}"},
            "the template's {soft} slots ask for 99999999999999999999 soft tokens, more than train.max_length=256",
        ),
        # MemoryError (or the machine's memory filled) allocating the prompt
        ({"template": "{text}", "prompt": {"length": 10**12}}, "prompt.length ask for 1000000000000 soft tokens"),
    ],
)
def test_found_huge_settings(tiny_llama_dir, tmp_path, settings_, message):
    run = merged(base_settings(tiny_llama_dir, str(tmp_path / "run")), settings_)
    with same_threads(), pytest.raises(SoftpromptError) as caught:
        softprompt.train(**run, train_data=ROWS, progress=False)
    assert str(caught.value).startswith(message), str(caught.value)
