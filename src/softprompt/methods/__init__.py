"""Method registry: each method is one module registered with ``@register``.

Nothing outside this package branches on a method's name: the training loop, saving and
counting see only the :class:`~softprompt.methods.base.Method` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from softprompt.errors import unknown_name
from softprompt.methods.base import Method, MethodContext


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    description: str
    build: Callable[[MethodContext], Method]
    trains: bool  # False for zero-/few-shot ('none')
    uses_soft_tokens: bool  # feeds the template's {soft} slots


METHODS: dict[str, MethodSpec] = {}


def register(name: str, description: str, trains: bool = True, uses_soft_tokens: bool = False):
    """Class decorator registering a method builder (a callable taking a MethodContext)."""

    def decorate(builder: Callable[[MethodContext], Method]):
        METHODS[name] = MethodSpec(name, description, builder, trains, uses_soft_tokens)
        return builder

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method, or an error suggesting the closest name."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


# Importing the modules registers them.
from softprompt.methods import none, prompt_tuning  # noqa: E402, F401

__all__ = ["METHODS", "Method", "MethodContext", "MethodSpec", "get_method", "register"]
