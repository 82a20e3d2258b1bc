"""Method registry: each method is one module registered with ``@register``.

Nothing outside this package branches on a method's name: the training loop, saving and
counting see only the :class:`~softprompt.methods.base.Method` interface, and a method's config
section (``lora.r=16``) is the options dataclass it registers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from softprompt.errors import unknown_name
from softprompt.methods.base import Method, MethodContext
from softprompt.seeding import seeded


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    description: str
    builder: Callable[[MethodContext], Method]
    trains: bool  # False for zero-/few-shot ('none')
    uses_soft_tokens: bool  # feeds the template's {soft} slots
    options: type | None  # its config section (a dataclass), or None
    default_lr: float  # the learning rate `compare` uses unless told otherwise
    identity_at_start: bool  # zero-initialised: the untrained method leaves the backbone's outputs unchanged
    changes_layers: bool  # it changes the backbone's own layers (a shared backbone cannot host it)

    def build(self, context: MethodContext) -> Method:
        """Attach the method to ``context.backbone``; the same seed gives the same initial weights,
        and the caller's random state is left as it was."""
        with seeded(context.seed):
            return self.builder(context)


METHODS: dict[str, MethodSpec] = {}


def register(
    name: str,
    description: str,
    *,
    trains: bool = True,
    uses_soft_tokens: bool = False,
    options: type | None = None,
    default_lr: float = 1e-3,
    identity_at_start: bool = False,
    changes_layers: bool = False,
):
    """Class decorator registering a method class (built from a :class:`MethodContext`).

    This is the one place a method's name is written: it becomes the class's ``name``.
    """

    def decorate(builder: type[Method]):
        builder.name = name
        METHODS[name] = MethodSpec(
            name, description, builder, trains, uses_soft_tokens, options, default_lr, identity_at_start, changes_layers
        )
        return builder

    return decorate


def get_method(name: str) -> MethodSpec:
    """The registered method, or an error suggesting the closest name."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


# Importing the modules registers them.
from softprompt.methods import (  # noqa: E402, F401
    adapter,
    bitfit,
    full,
    ia3,
    lora,
    none,
    prefix_tuning,
    progressive_prompts,
    prompt_tuning,
    ptuning,
)

# Listing order (`softprompt ls methods`, `compare`'s default): prompt methods first, full last.
_ORDER = [
    "none",
    "prompt_tuning",
    "prefix_tuning",
    "ptuning",
    "progressive_prompts",
    "lora",
    "ia3",
    "adapter",
    "bitfit",
    "full",
]
METHODS = {name: METHODS[name] for name in sorted(METHODS, key=lambda n: _ORDER.index(n) if n in _ORDER else 99)}

__all__ = ["METHODS", "Method", "MethodContext", "MethodSpec", "get_method", "register"]
