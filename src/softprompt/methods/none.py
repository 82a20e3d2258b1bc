"""``none``: no trainable parameters; the template and verbalizer alone (zero- or few-shot)."""

from __future__ import annotations

from softprompt.methods.base import Method, MethodContext
from softprompt.methods.registry import register


@register(
    "none",
    "no training: zero-shot (or few-shot with fewshot.k=K) with the template",
    trains=False,
    default_lr=0.0,
    list_position=0,
)
class NoMethod(Method):
    """The plain frozen backbone."""

    def __init__(self, context: MethodContext):
        super().__init__()
