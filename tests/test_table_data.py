"""Data as parquet files, `datasets` save_to_disk folders, Hub datasets (``hf:``) read offline
from a cache that `datasets` itself wrote, and `datasets` objects from Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

import softprompt  # noqa: E402
from softprompt.cli import main  # noqa: E402
from softprompt.data.tables import table_rows  # noqa: E402
from softprompt.errors import SoftpromptError  # noqa: E402

from .conftest import NEGATIVE, POSITIVE  # noqa: E402

ROWS = [{"text": t, "label": "positive"} for t in POSITIVE] + [{"text": t, "label": "negative"} for t in NEGATIVE]
COMMON = [
    "verbalizer={positive: positive, negative: negative}",
    "template=Review: {text}\\nSentiment:{soft:2}",
    "prompt.init=vocab",
    "train.batch_size=4",
    "train.max_steps=2",
    "train.eval_every=2",
    "--quiet",
]


def _dataset_dict() -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS * 4),
            "validation": datasets.Dataset.from_list(ROWS),
            "test": datasets.Dataset.from_list(ROWS[:6]),
        }
    )


def test_parquet_files_train_and_evaluate(tiny_llama_dir, tmp_path, capsys):
    files = {}
    for split, dataset in _dataset_dict().items():
        files[split] = tmp_path / f"{split}.parquet"
        dataset.to_parquet(str(files[split]))
    out = tmp_path / "run"
    data = [f"data.train={files['train']}", f"data.dev={files['validation']}", f"data.test={files['test']}"]
    assert main(["train", f"backbone={tiny_llama_dir}", f"out={out}", *data, *COMMON]) == 0
    meta = json.loads((out / "task.json").read_text())
    assert meta["metrics"]["test"]["n"] == 6 and meta["data"]["train"] == str(files["train"])
    assert main(["eval", str(out)]) == 0  # its own test split, read again from the parquet file
    assert '"n": 6' in capsys.readouterr().out


def test_a_save_to_disk_folder_picks_the_split_each_key_reads(tmp_path):
    folder = tmp_path / "reviews"
    _dataset_dict().save_to_disk(str(folder))
    assert len(table_rows(folder, "train")) == len(ROWS) * 4
    assert len(table_rows(folder, "dev")) == len(ROWS)  # "validation"
    assert len(table_rows(f"{folder}@test", "train")) == 6
    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    assert table_rows(single, "test")[0] == (1, ROWS[0])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: datasets.Dataset.from_list([{"review": "x", "label": "positive"}]).to_parquet(
                str(d / "t.parquet")
            ),
            "t.parquet row 1: no column 'text' (columns: label, review); set data.text_field=<column>",
        ),
        (
            lambda d: _dataset_dict().save_to_disk(str(d / "t")),
            "t@nope: no split 'nope' (splits: train, validation, test)",
        ),
        (lambda d: (d / "t").mkdir(), "is a directory, not one written by datasets' save_to_disk"),
    ],
)
def test_bad_table_data_is_one_line(tiny_llama_dir, tmp_path, capsys, make, message):
    make(tmp_path)
    name = "t.parquet" if "parquet" in message else ("t@nope" if "@nope" in message else "t")
    out = tmp_path / "run"
    assert main(["train", f"backbone={tiny_llama_dir}", f"out={out}", f"data.train={tmp_path / name}", *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not out.exists()


def test_datasets_objects_from_python(tiny_llama_dir, tmp_path):
    settings = {"backbone": str(tiny_llama_dir), "verbalizer": {"positive": "positive", "negative": "negative"}}
    settings |= {"template": "Review: {text}\nSentiment:{soft:2}", "prompt": {"init": "vocab"}}
    settings |= {"train": {"batch_size": 4, "max_steps": 2, "eval_every": 2}, "out": str(tmp_path / "py")}
    # A DatasetDict: train trains, validation is dev, test is scored.
    result = softprompt.train(train_data=_dataset_dict(), progress=False, **settings)
    assert result.metrics["test"]["n"] == 6 and result.metrics["dev"]["n"] == len(ROWS)
    # A Dataset is a list of records; the model evaluates one too.
    assert result.model.evaluate(datasets.Dataset.from_list(ROWS[:4]))["n"] == 4
    with pytest.raises(SoftpromptError, match="the DatasetDict has no 'train' split"):
        softprompt.train(train_data=datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}), **settings)


def _cache_hub_dataset(home: Path, repo_id: str, source: Path) -> None:
    """Fill ``home``'s datasets cache as loading ``repo_id`` once online leaves it: datasets'
    own parquet builder prepares the arrow files, in the folder named as for that repository."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    staging = home / "staging"
    files = {split: str(source / f"{split}.parquet") for split in ("train", "validation", "test")}
    name = repo_id.split("/")[1]
    Parquet(
        cache_dir=str(staging), dataset_name=name, config_name="default", data_files=files, hash="0"
    ).download_and_prepare()
    built = staging / name
    [config] = [p for p in built.iterdir() if p.is_dir()]  # "default-<hash of the data files>"
    config.rename(built / "default")
    shutil.move(str(built), str(home / "datasets" / repo_id.replace("/", "___")))


@pytest.mark.slow
def test_hf_datasets_train_offline_from_the_cache(tiny_llama_dir, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for split, dataset in _dataset_dict().items():
        dataset.to_parquet(str(source / f"{split}.parquet"))
    home = tmp_path / "hf-home"
    (home / "datasets").mkdir(parents=True)
    _cache_hub_dataset(home, "tiny-org/reviews", source)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "softprompt", "train", f"backbone={tiny_llama_dir}", *args, *COMMON]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)

    out = tmp_path / "run"
    done = run(
        f"out={out}",
        "data.train=hf:tiny-org/reviews",
        "data.dev=hf:tiny-org/reviews",
        "data.test=hf:tiny-org/reviews@test",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "task.json").read_text())
    assert meta["metrics"]["test"]["n"] == 6 and meta["metrics"]["dev"]["n"] == len(ROWS)
    card = (out / "README.md").read_text()
    assert "datasets:\n- tiny-org/reviews" in card
    for args, message in [
        (
            ("data.train=hf:tiny-org/reviews@nope",),
            "hf:tiny-org/reviews@nope: no split 'nope' (splits: train, validation, test)",
        ),
        (
            ("data.train=hf:nobody/absent",),
            "the dataset nobody/absent is not in the datasets cache and the Hub cannot be reached",
        ),
    ]:
        failed = run(f"out={tmp_path / 'bad'}", *args)
        assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr[-2000:]
        assert message in failed.stderr


def test_table_data_without_the_datasets_package_names_the_extra(base_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: importing it fails
    out = tmp_path / "run"
    data = tmp_path / "train.parquet"
    data.write_bytes(b"PAR1")
    assert main(["train", *base_args, f"data.train={data}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the `datasets` package: pip install 'softprompt[datasets]'" in err
    assert not out.exists()
