"""Methods: each is one module registered with ``@register`` (see :mod:`.registry`).

Nothing outside this package branches on a method's name: the training loop, saving and
counting see only the :class:`~softprompt.methods.base.Method` interface, and a method's config
section (``lora.r=16``) is the options dataclass it registers.
"""

from __future__ import annotations

# Importing the modules registers them.
from softprompt.methods import (  # noqa: F401
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
from softprompt.methods.base import Method, MethodContext
from softprompt.methods.registry import (
    METHODS,
    MethodSpec,
    get_method,
    register,
    soft_token_method,
    untrained_method,
)

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "MethodSpec",
    "get_method",
    "register",
    "soft_token_method",
    "untrained_method",
]
