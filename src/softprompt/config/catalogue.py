"""Which methods and tasks exist, read from their registering decorators without importing them.

A method or task module imports torch, transformers and often peft, which takes seconds; the
command line and the config are checked before any of that loads, against this catalogue. It
reads the ``@register(...)`` and ``@register_task(...)`` lines of the source files (the name,
literal flags, the options class by its name), the way transformers finds its lazily imported
objects, so the decorator stays the one place a name is written; the options classes themselves
live in the torch-free :mod:`softprompt.config.method_options`. The registries
(:mod:`softprompt.methods.registry`, :mod:`softprompt.tasks.registry`) stay the truth once
imported; ``tests/test_cli_startup.py`` holds the catalogue equal to them.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import softprompt.config.method_options as method_options
from softprompt.errors import unknown_name

PACKAGE = Path(__file__).resolve().parents[1]  # the softprompt package's folder


@dataclass(frozen=True)
class Declared:
    """A class as its registering decorator declares it."""

    name: str
    module: str  # e.g. softprompt.methods.lora
    class_name: str  # e.g. Lora
    settings: dict[str, Any]  # the decorator's keyword arguments, defaults included; a class by its name


@functools.cache
def methods() -> dict[str, Declared]:
    """Every method by name, with ``register``'s settings (``trains``, ``uses_soft_tokens``,
    ``options``...)."""
    defaults = _keyword_defaults(PACKAGE / "methods" / "registry.py", "register")
    declared = sorted(_declarations("methods", "register", defaults), key=lambda d: d.settings["list_position"])
    return {d.name: d for d in declared}  # in the registry's listing order


@functools.cache
def tasks() -> dict[str, Declared]:
    """Every task by name."""
    return {d.name: d for d in _declarations("tasks", "register_task", {})}


def method_named(class_name: str) -> str:
    """The name the method class ``class_name`` registers (``PromptTuning`` -> its name)."""
    return next(d.name for d in methods().values() if d.class_name == class_name)


def check_method(name: str) -> Declared:
    """The declared method, or the registry's error for an unknown name (nearest name suggested)."""
    if name not in methods():
        raise unknown_name("method", name, methods())
    return methods()[name]


def check_task(name: str) -> Declared:
    """The declared task, or the registry's error for an unknown name."""
    if name not in tasks():
        raise unknown_name("task", name, tasks())
    return tasks()[name]


def option_sections() -> dict[str, type]:
    """Method name -> its config section's dataclass (``lora.r=16``), for the methods registered
    with ``options=``: the class of that name in :mod:`softprompt.config.method_options`."""
    return {
        name: getattr(method_options, d.settings["options"])
        for name, d in methods().items()
        if d.settings.get("options") is not None
    }


def _declarations(folder: str, decorator: str, defaults: dict[str, Any]) -> list[Declared]:
    found = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        for node in classes:
            for call in node.decorator_list:
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == decorator:
                    given = {k.arg: _value(k.value, path) for k in call.keywords}
                    found.append(Declared(_value(call.args[0], path), module, node.name, {**defaults, **given}))
    return found


def _value(node: ast.expr, path: Path) -> Any:
    """A literal, or a class given by its name (``options=LoraOptions`` -> ``"LoraOptions"``)."""
    if isinstance(node, ast.Name):
        return node.id
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise RuntimeError(
            f"{path}:{node.lineno}: a registering decorator's arguments must be literals or class names "
            "(softprompt.config.catalogue reads them without importing the module)"
        ) from None


def _keyword_defaults(path: Path, function: str) -> dict[str, Any]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    args = node.args
    return {a.arg: ast.literal_eval(d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
