"""The method registry: :func:`register` (the one place a method's name is written), the
:class:`MethodSpec` it records, and :func:`get_method`. Method modules import this module, and
the package's ``__init__`` imports every method module, so importing :mod:`softprompt.methods`
(or anything in it) fills the registry.
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
    sequential: bool = False  # learns a task sequence: a new prompt per task, earlier ones frozen (continual)
    list_position: int = 100  # where it is listed (`softprompt ls methods`, `compare`'s default): lower first
    # Its weights can also be applied per batch row without changing the backbone
    # (methods.row_adapters): LoRA, IA3. Loaded that way with load_model(..., apart=True).
    per_row: bool = False

    @property
    def shares_backbone(self) -> bool:
        """Its artifacts can be served side by side on one loaded backbone with other tasks'."""
        return not self.changes_layers or self.per_row

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
    sequential: bool = False,
    list_position: int = 100,
    per_row: bool = False,
):
    """Class decorator registering a method class (built from a :class:`MethodContext`).

    This is the one place a method's name is written: it becomes the class's ``name``. Give the
    arguments as literals and ``options`` as a class of :mod:`softprompt.config.method_options`:
    :mod:`softprompt.config.catalogue` reads them from the source, without importing the method.
    """

    def decorate(builder: type[Method]):
        builder.name = name
        builder.changes_layers = changes_layers  # one flag: the spec's, readable on the instance
        METHODS[name] = MethodSpec(
            name,
            description,
            builder,
            trains,
            uses_soft_tokens,
            options,
            default_lr,
            identity_at_start,
            changes_layers,
            sequential,
            list_position,
            per_row,
        )
        # Listed in position order whatever order the modules were imported in.
        ordered = sorted(METHODS.values(), key=lambda spec: spec.list_position)
        METHODS.clear()
        METHODS.update({spec.name: spec for spec in ordered})
        return builder

    return decorate


def untrained_method() -> str:
    """The registered method that trains nothing (zero- and few-shot prompting)."""
    return next(name for name, spec in METHODS.items() if not spec.trains)


def soft_token_method() -> str:
    """The first listed method that trains soft tokens in the template's slots (prompt tuning):
    what a template resolves as when its soft slots must be kept (``compare``'s shared template)."""
    return next(name for name, spec in METHODS.items() if spec.uses_soft_tokens and spec.trains)


def get_method(name: str) -> MethodSpec:
    """The registered method, or an error suggesting the closest name."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]
