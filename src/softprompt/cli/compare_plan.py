"""What ``softprompt compare`` compares: the methods, learning rates, baselines and few-shot
size taken out of its ``key=value`` overrides, checked before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.config import catalogue
from softprompt.errors import SoftpromptError

DEFAULT_FEWSHOT = 4
PLAN_KEYS = ("methods", "lrs", "baselines", "fewshot")  # what parse_plan takes out of the overrides


@dataclass
class Plan:
    """What to compare, from the command line."""

    methods: list[str]
    lrs: dict[str, float]
    fewshot: int
    baselines: list[str] | None  # None: every baseline of the task


def parse_plan(overrides: list[str]) -> tuple[Plan, list[str]]:
    """Take ``methods=``, ``lrs=``, ``baselines=`` and ``fewshot=`` out of the overrides; return
    the rest. Method names are checked against the catalogue (no torch); the default, every method
    that trains, comes in the registry's listing order."""
    plan = Plan([], {}, DEFAULT_FEWSHOT, None)
    given = False
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in PLAN_KEYS:
            rest.append(item)
        elif key == "methods":
            plan.methods, given = [m.strip() for m in value.split(",") if m.strip()], True
            for name in plan.methods:
                if not catalogue.check_method(name).settings["trains"]:
                    raise SoftpromptError(f"methods: '{name}' does not train; zero-/few-shot rows are always added")
        elif key == "lrs":
            plan.lrs = _parse_lrs(value)
        elif key == "baselines":
            plan.baselines = [b.strip() for b in value.split(",") if b.strip() and b.strip() != "none"]
            _check_baselines(plan.baselines)
        else:  # fewshot
            if not value.isdigit():
                raise SoftpromptError(f"fewshot: expected a number of demonstrations, got '{value}'")
            plan.fewshot = int(value)
    if not given:
        from softprompt.methods import METHODS

        plan.methods = [m for m, s in METHODS.items() if s.trains]
    if not plan.methods:
        raise SoftpromptError("methods: give at least one, e.g. methods=prompt_tuning,lora")
    return plan, rest


def _check_baselines(names: list[str]) -> None:
    from softprompt.tasks import task_specs

    known = list(dict.fromkeys(b for spec in task_specs().values() for b in spec.baseline_names))
    unknown = [b for b in names if b not in known]
    if unknown:
        raise SoftpromptError(f"baselines: unknown '{unknown[0]}'; choose from {', '.join(known)} or none")


def _parse_lrs(value: str) -> dict[str, float]:
    lrs = {}
    for pair in filter(None, value.split(",")):
        name, sep, number = pair.partition(":")
        if not sep:
            raise SoftpromptError(f"lrs: expected method:rate pairs (lrs=lora:1e-3,full:3e-5), got '{pair}'")
        catalogue.check_method(name.strip())
        try:
            lrs[name.strip()] = float(number)
        except ValueError:
            raise SoftpromptError(f"lrs: expected method:rate pairs (lrs=lora:1e-3,full:3e-5), got '{pair}'") from None
    return lrs
