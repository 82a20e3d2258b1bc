"""Fuzzing the readers and the template parser: whatever the input, the outcome is a result or
one ``SoftpromptError`` with a one-line message, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.data.conll import read_conll
from softprompt.data.records import examples_from_records, read_examples
from softprompt.errors import SoftpromptError
from softprompt.prompts import Template, Verbalizer

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30), st.binary(max_size=10)
)
records = st.dictionaries(st.sampled_from(["text", "label", "title", "", "extra"]), values, max_size=5)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
text_lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.builds(json.dumps, st.dictionaries(st.sampled_from(["text", "label", "x"]), json_values, max_size=3)),
        st.just("text,label"),
        st.just("a\tb\tc"),
        st.just('"unclosed'),
        st.just("x" * 5_000),
    ),
    max_size=8,
)


def _outcome(call) -> None:
    try:
        call()
    except SoftpromptError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(str(exc))


def _file(suffix: str, content: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)  # noqa: SIM115 (closed below)
    handle.write(content)
    handle.close()
    return Path(handle.name)


@FUZZ
@given(st.sampled_from([".jsonl", ".csv", ".tsv"]), st.one_of(st.binary(max_size=300), text_lines))
@pytest.mark.slow
def test_data_files(suffix, content):
    data = content if isinstance(content, bytes) else "\n".join(content).encode("utf-8", "surrogatepass")
    path = _file(suffix, data)
    try:
        _outcome(lambda: read_examples(path, "text", "label"))
        _outcome(lambda: read_examples(path, "text", None, fields=["title"]))
    finally:
        path.unlink()


@FUZZ
@given(st.one_of(st.binary(max_size=300), text_lines))
@pytest.mark.slow
def test_conll_files(content):
    data = content if isinstance(content, bytes) else "\n".join(content).encode("utf-8", "surrogatepass")
    path = _file(".txt", data)
    try:
        _outcome(lambda: read_conll(path))
    finally:
        path.unlink()


@FUZZ
@given(st.lists(records, max_size=6))
@pytest.mark.slow
def test_in_memory_records(rows):
    _outcome(lambda: examples_from_records(rows, "train_data"))


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("{}:soft12mask text_label ")), max_size=40) | st.text(max_size=40))
def test_template_parser(source):
    _outcome(lambda: Template(source))


@FUZZ
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.lists(st.text(max_size=8))), max_size=4))
def test_verbalizer(mapping):
    _outcome(lambda: Verbalizer(mapping))
