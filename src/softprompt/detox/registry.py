"""The steering methods of ``detox eval`` and ``softprompt generate``: :func:`register_steering`
(the one place a method's name is written), the :class:`SteeringSpec` it records with its
capability flags, and :func:`get_steering`.

This module imports neither torch nor the steering classes: the configs (``detox train kind=``,
``methods=``, ``detox=``) are checked against it before torch loads. How a method builds its
rows is registered beside the loading code, ``@builds(SPEC)`` in :mod:`softprompt.detox.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.errors import unknown_name


@dataclass(frozen=True)
class SteeringSpec:
    """A registered steering method and what it can do."""

    name: str
    description: str
    takes_argument: bool = False  # text or a path may follow the colon: name:<argument>
    needs_argument: bool = False  # ...and must: the artifact directory `detox train` made
    trains: bool = False  # `detox train kind=<name>` makes its artifact
    anti_expert: bool = False  # its artifact is an expert and an anti-expert prompt, not one prompt

    @property
    def usage(self) -> str:
        """How a config writes it: ``name:<dir>`` when it needs its artifact, else the name."""
        return f"{self.name}:<dir>" if self.needs_argument else self.name


STEERINGS: dict[str, SteeringSpec] = {}


def register_steering(
    name: str,
    description: str,
    *,
    takes_argument: bool = False,
    needs_argument: bool = False,
    trains: bool = False,
    anti_expert: bool = False,
) -> SteeringSpec:
    """Record a steering method; the order of registration is the order help and errors list."""
    spec = SteeringSpec(name, description, takes_argument or needs_argument, needs_argument, trains, anti_expert)
    STEERINGS[name] = spec
    return spec


def get_steering(name: str) -> SteeringSpec:
    """The registered steering method, or an error suggesting the closest name."""
    if name not in STEERINGS:
        raise unknown_name("detox method", name, STEERINGS)
    return STEERINGS[name]


def trained_kinds() -> list[str]:
    """The methods ``detox train`` makes artifacts for (its ``kind=``), in registration order."""
    return [name for name, spec in STEERINGS.items() if spec.trains]


PLAIN = register_steering("none", "the plain model, unchanged")
INSTRUCTION = register_steering(
    "instruction",
    "a polite instruction put before the prompt (the text after the colon, if given)",
    takes_argument=True,
)
SELF_DEBIAS = register_steering(
    "self_debias", "self-debiasing: tokens that toxic-description prefixes make likelier are scaled down"
)
SOFT_PROMPT = register_steering(
    "soft_prompt", "a soft prompt trained on ParaDetox's neutral paraphrases", needs_argument=True, trains=True
)
EXPERTS = register_steering(
    "experts",
    "DExperts with prompt experts: base + alpha * (expert - anti-expert)",
    needs_argument=True,
    trains=True,
    anti_expert=True,
)
