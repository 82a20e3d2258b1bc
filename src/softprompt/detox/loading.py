"""Turn a method spec (``experts:runs/x``) into a :class:`~softprompt.detox.steering.Steering`,
loading and checking the prompts it needs."""

from __future__ import annotations

from pathlib import Path

from softprompt.backbones import Backbone
from softprompt.detox.config import DEFAULT_INSTRUCTION
from softprompt.detox.steering import (
    ExpertSteering,
    SelfDebiasSteering,
    Steering,
    Variant,
)
from softprompt.detox.training import EXPERTS_FILE
from softprompt.errors import SoftpromptError
from softprompt.tasks.lm import load_lm_prompt


def build_steering(
    name: str,
    argument: str,
    backbone: Backbone,
    instruction: str = DEFAULT_INSTRUCTION,
    alpha: float = 2.0,
    decay: float = 50.0,
    filter_p: float = 0.9,
) -> Steering:
    """The steering of method ``name`` (see ``methods.METHOD_NAMES``); ``argument`` is the artifact
    directory of ``soft_prompt`` / ``experts``, or the text of ``instruction`` (optional);
    ``filter_p`` is the base-model nucleus the experts re-rank."""
    if name == "none":
        return Steering("none")
    if name == "instruction":
        return Steering("instruction", [Variant(text_prefix=argument or instruction)])
    if name == "self_debias":
        return SelfDebiasSteering("self_debias", decay=decay)
    if name == "soft_prompt":
        return Steering("soft_prompt", [Variant(soft=load_lm_prompt(argument, backbone))])
    directory = Path(argument)
    if not (directory / EXPERTS_FILE).is_file():
        raise SoftpromptError(
            f"{directory} holds no experts ({EXPERTS_FILE} missing); train them with "
            f"`softprompt detox train kind=experts out={directory} data=...`"
        )
    expert = load_lm_prompt(directory / "expert", backbone)
    anti_expert = load_lm_prompt(directory / "anti_expert", backbone)
    return ExpertSteering("experts", expert, anti_expert, alpha, filter_p)
