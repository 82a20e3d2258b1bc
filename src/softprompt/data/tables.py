"""Data from tables rather than text files: a ``.parquet`` file, a folder written by
``datasets``' ``save_to_disk``, or a Hub dataset as ``hf:NAME[:CONFIG][@SPLIT]`` (read with
``datasets.load_dataset``, from the user's cache when offline, as backbones are).

Each yields numbered rows (``row 1`` is the first) for the same validation as a JSONL file's
lines. ``datasets`` (which brings ``pyarrow``) is an optional extra:
``pip install 'softprompt[datasets]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.hub import DATASET_PREFIX, parse_hub_dataset

EXTRA = "pip install 'softprompt[datasets]'"
# The split a data.* key reads from a dataset that has several, in order of preference.
SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}


def is_table(name: str | Path) -> bool:
    """Whether ``name`` names table data (parquet, a ``save_to_disk`` folder, ``hf:``) rather than a text file."""
    text = str(name)
    return text.startswith(DATASET_PREFIX) or text.lower().endswith(".parquet") or Path(text.partition("@")[0]).is_dir()


def is_dataframe(data: Any) -> bool:
    """Whether ``data`` is a pandas or polars DataFrame (a subclass too), known without
    importing either library."""
    return any(
        cls.__name__ == "DataFrame" and cls.__module__.partition(".")[0] in ("pandas", "polars")
        for cls in type(data).__mro__
    )


def dataframe_records(data: Any) -> list[dict[str, Any]] | None:
    """A pandas or polars DataFrame's rows as plain dicts, or None when ``data`` is not one.

    Iterating a DataFrame yields its column names, so it is read by rows here: missing values
    (NaN, ``pd.NA``, ``NaT``) become None, as a JSON null is, and numpy values Python ones.
    """
    if not is_dataframe(data):
        return None
    polars = callable(getattr(type(data), "to_dicts", None))  # looked up on the class: not a column
    rows = data.to_dicts() if polars else data.to_dict("records")
    return [{str(key): _plain(value) for key, value in row.items()} for row in rows]


def _plain(value: Any) -> Any:
    if type(value).__module__ == "numpy":  # a scalar, or an array in a list column
        value = value.tolist()
    if (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def table_rows(name: str | Path, key: str = "train") -> list[tuple[int, dict[str, Any]]]:
    """The numbered rows of table data given as ``data.<key>``.

    Raises:
        SoftpromptError: ``datasets`` missing, no such file/folder/dataset, a split that does
            not exist, or no rows.
    """
    text = str(name)
    if text.startswith(DATASET_PREFIX):
        table = _hub_split(text, key)
    elif text.lower().endswith(".parquet"):
        table = _parquet(Path(text))
    else:
        table = _saved(Path(text), key)
    rows = [(number, dict(row)) for number, row in enumerate(table, start=1)]
    if not rows:
        raise SoftpromptError(f"data file {text} is empty")
    return rows


def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise SoftpromptError(f"reading {what} needs the `datasets` package: {EXTRA}") from None
    datasets.disable_progress_bars()  # one-line output; the rows are few and local
    datasets.logging.set_verbosity_error()  # not "using the latest cached version" on every offline run
    return datasets


def _parquet(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SoftpromptError(f"data file {path} does not exist")
    datasets = _datasets(f"{path}")
    try:
        return datasets.Dataset.from_parquet(str(path), keep_in_memory=True).to_list()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise SoftpromptError(f"{path}: unreadable as parquet ({str(exc).splitlines()[0]})") from None


def _pick_split(splits: list[str], key: str, source: str, asked: str | None) -> str:
    """The split to read: the one asked for, the only one, or the one named like ``key``."""
    if asked is not None:
        if asked not in splits:
            raise SoftpromptError(f"{source}: no split '{asked}' (splits: {', '.join(splits)})")
        return asked
    if len(splits) == 1:
        return splits[0]
    for candidate in SPLIT_NAMES.get(key, (key,)):
        if candidate in splits:
            return candidate
    raise SoftpromptError(
        f"{source} has the splits {', '.join(splits)}; say which data.{key} reads, e.g. {source}@{splits[0]}"
    )


def _saved(path: Path, key: str) -> list[dict[str, Any]]:
    """A ``save_to_disk`` folder: a Dataset, or a DatasetDict (``FOLDER@SPLIT`` picks a split)."""
    folder, _, asked = str(path).partition("@") if not path.is_dir() else (str(path), "", "")
    if not Path(folder).is_dir():
        raise SoftpromptError(f"data folder {folder} does not exist")
    datasets = _datasets(folder)
    try:
        loaded = datasets.load_from_disk(folder, keep_in_memory=True)
    except FileNotFoundError:
        raise SoftpromptError(
            f"data file {folder} is a directory, not one written by datasets' save_to_disk; give a file "
            "(.jsonl, .csv, .tsv or .parquet) inside it"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = loaded[_pick_split(list(loaded), key, str(path), asked or None)]
    return loaded.to_list()


def _hub_split(text: str, key: str) -> list[dict[str, Any]]:
    name, config, asked = parse_hub_dataset(text)
    datasets = _datasets(text)
    try:
        loaded = datasets.load_dataset(name, config)
    except (ConnectionError, FileNotFoundError) as exc:
        raise SoftpromptError(
            f"{text}: the dataset {name} is not in the datasets cache and the Hub cannot be reached; load it once "
            f"where there is network (`datasets.load_dataset('{name}')`, with the same HF_HOME) or give a file "
            f"({type(exc).__name__})"
        ) from None
    except ValueError as exc:  # e.g. a config that does not exist
        raise SoftpromptError(f"{text}: {str(exc).splitlines()[0]}") from None
    return loaded[_pick_split(list(loaded), key, text, asked)].to_list()
