"""Turn a method spec (``experts:runs/x``) into a :class:`~softprompt.detox.steering.Steering`,
loading and checking the prompts it needs.

Each method of :mod:`softprompt.detox.registry` has one builder here, recorded with
``@builds(SPEC)``: the registry holds names and flags torch-free, and this module, which may
import torch, holds how each builds its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from softprompt.backbones import Backbone
from softprompt.detox.config import DEFAULT_INSTRUCTION
from softprompt.detox.registry import EXPERTS, INSTRUCTION, PLAIN, SELF_DEBIAS, SOFT_PROMPT, SteeringSpec, get_steering
from softprompt.detox.steering import (
    ExpertSteering,
    SelfDebiasSteering,
    Steering,
    Variant,
)
from softprompt.detox.training import EXPERTS_FILE
from softprompt.errors import SoftpromptError
from softprompt.tasks.lm import load_lm_prompt


@dataclass(frozen=True)
class Knobs:
    """The methods' own settings (``SteeredSampling``'s fields of the same names)."""

    instruction: str = DEFAULT_INSTRUCTION  # instruction's prefix when none follows the colon
    alpha: float = 2.0  # experts: base + alpha * (expert - anti-expert)
    decay: float = 50.0  # self_debias: the decay constant lambda
    filter_p: float = 0.9  # experts: the base-model nucleus the experts re-rank


Builder = Callable[[str, Backbone, Knobs], Steering]
BUILDERS: dict[str, Builder] = {}


def builds(spec: SteeringSpec) -> Callable[[Builder], Builder]:
    """Decorator recording the function that builds ``spec``'s steering from its argument (the
    text after the colon, ``""`` when none), the backbone and the :class:`Knobs`."""

    def record(builder: Builder) -> Builder:
        BUILDERS[spec.name] = builder
        return builder

    return record


@builds(PLAIN)
def plain_steering(argument: str, backbone: Backbone, knobs: Knobs) -> Steering:
    """The plain model: one bare row."""
    return Steering(PLAIN.name)


@builds(INSTRUCTION)
def instruction_steering(argument: str, backbone: Backbone, knobs: Knobs) -> Steering:
    """The instruction (the argument, else ``knobs.instruction``) before each prompt."""
    return Steering(INSTRUCTION.name, [Variant(text_prefix=argument or knobs.instruction)])


@builds(SELF_DEBIAS)
def self_debias_steering(argument: str, backbone: Backbone, knobs: Knobs) -> Steering:
    """Self-debiasing with the six Perspective-attribute prefixes."""
    return SelfDebiasSteering(SELF_DEBIAS.name, decay=knobs.decay)


@builds(SOFT_PROMPT)
def soft_prompt_steering(argument: str, backbone: Backbone, knobs: Knobs) -> Steering:
    """The soft prompt saved in the artifact directory ``argument``."""
    return Steering(SOFT_PROMPT.name, [Variant(soft=load_lm_prompt(argument, backbone))])


@builds(EXPERTS)
def experts_steering(argument: str, backbone: Backbone, knobs: Knobs) -> Steering:
    """The expert and anti-expert prompts ``detox train`` saved under the directory ``argument``."""
    directory = Path(argument)
    if not (directory / EXPERTS_FILE).is_file():
        raise SoftpromptError(
            f"{directory} holds no experts ({EXPERTS_FILE} missing); train them with "
            f"`softprompt detox train kind={EXPERTS.name} out={directory} data=...`"
        )
    expert = load_lm_prompt(directory / "expert", backbone)
    anti_expert = load_lm_prompt(directory / "anti_expert", backbone)
    return ExpertSteering(EXPERTS.name, expert, anti_expert, knobs.alpha, knobs.filter_p)


def build_steering(
    name: str,
    argument: str,
    backbone: Backbone,
    instruction: str = DEFAULT_INSTRUCTION,
    alpha: float = 2.0,
    decay: float = 50.0,
    filter_p: float = 0.9,
) -> Steering:
    """The steering of method ``name`` (see :mod:`softprompt.detox.registry`); ``argument`` is the
    artifact directory of a method that needs one, or the text of ``instruction`` (optional);
    ``filter_p`` is the base-model nucleus the experts re-rank."""
    spec = get_steering(name)
    return BUILDERS[spec.name](argument, backbone, Knobs(instruction, alpha, decay, filter_p))
