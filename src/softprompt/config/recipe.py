"""Reading recipes: YAML files and ``key=value`` command-line overrides, turned into config
dataclasses with values coerced to the annotated types and unknown keys refused with a
near-match suggestion."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError, did_you_mean


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (plain
    PyYAML keeps the last one silently, so a recipe's earlier setting would vanish)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if repeated:
                raise DuplicateKey(seen[key], key, key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names a key twice."""

    def __init__(self, first_line: int, key: Any, mark: yaml.Mark):
        super().__init__(None, None, f"key '{key}' is given twice (also on line {first_line + 1}); keep one", mark)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # safe: a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong, in a few words: a parser's ``problem``, else (a reader's error about a control
    character, which has none) the first line of its message."""
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


class CommandLineValue(str):
    """A value typed on the command line, parsed only once its field's type is known: text fields
    keep it verbatim (with ``\\n`` and ``\\t`` as newline and tab), other fields read it as YAML."""

    def as_text(self) -> str:
        text = str(self)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        return text.replace("\\n", "\n").replace("\\t", "\t")

    def as_yaml(self, key: str) -> Any:
        try:
            return safe_load(str(self)) if self else ""
        except yaml.YAMLError as exc:
            raise SoftpromptError(f"config field '{key}': cannot read {str(self)!r} ({yaml_problem(exc)})") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=3e-3", "seed=1"]`` into a nested dict of :class:`CommandLineValue`."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        try:  # undecodable command-line bytes reach Python as lone surrogates
            pair.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = pair.encode("utf-8", "backslashreplace").decode("utf-8")
            raise SoftpromptError(f"'{shown}': not UTF-8 at character {exc.start}; settings must be UTF-8") from None
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SoftpromptError(f"expected key=value, got '{pair}'")
        value = CommandLineValue(raw)
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SoftpromptError(f"'{key}': '{part}' is not a section")
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (dicts merge, other values replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "verbalizer":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise SoftpromptError(f"config file {path} does not exist")
    try:
        data = safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        if isinstance(exc, DuplicateKey):
            raise SoftpromptError(f"{path}{where}: {exc.problem}") from None
        raise SoftpromptError(f"{path}{where}: invalid YAML ({yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise SoftpromptError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` to ``annotation`` (int, float, bool, str, dict, Optional of those)."""
    if isinstance(value, CommandLineValue):
        text_field = annotation is str or str in typing.get_args(annotation)
        if text_field and value.lower() not in ("none", "null"):
            return value.as_text()
        value = value.as_yaml(key)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise SoftpromptError(f"config field '{key}': expected a mapping, got {value!r}")
        return value
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
                return ",".join(map(str, value))  # the comma lists (report_to, methods...) written as a YAML list
            return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        name = getattr(annotation, "__name__", str(annotation))
        raise SoftpromptError(f"config field '{key}': expected {name}, got {value!r:.60}") from None
    return value


def check_key(key: Any, prefix: str = "") -> None:
    """Refuse a config key that is not text (``{0: ...}`` from Python, ``1: x`` in YAML)."""
    if not isinstance(key, str):
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        raise SoftpromptError(f"config key {key!r}{where} is not a name; keys are text, such as 'seed' or 'lr'")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations, once per class (resolving them is most of the time of
    building a config, which a server does for each of thousands of artifacts)."""
    return typing.get_type_hints(cls)


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        check_key(key, prefix)
        full = f"{prefix}{key}"
        if key not in names:
            hint = did_you_mean(key, names).replace(" '", f" '{prefix}", 1)
            if not hint and prefix:  # a small section: list what it has
                hint = f" ({prefix.rstrip('.')} has: {', '.join(names)})"
            raise SoftpromptError(f"unknown config key '{full}'{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise SoftpromptError(f"config field '{full}' is a section; use {full}.<key>=value")
            # Keys not given keep the section's own defaults (which may differ from the class's).
            default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else None
            given = {**dataclasses.asdict(default), **value} if default is not None else value
            kwargs[key] = build(annotation, given, prefix=f"{full}.")
        elif value is None and not _optional(annotation) and fields[key].default is not dataclasses.MISSING:
            continue  # None (out=None from Python, `out: null`) means the default, not the text "None"
        else:
            kwargs[key] = _coerce(value, annotation, full)
    return cls(**kwargs)


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )
