"""The detox registries: every steering method registered torch-free has a builder, its flags
agree with what parsing accepts, and every toxicity scorer's written form parses back."""

from __future__ import annotations

import pytest

from softprompt.detox.loading import BUILDERS
from softprompt.detox.registry import STEERINGS, get_steering, trained_kinds
from softprompt.detox.steering import parse_method
from softprompt.errors import SoftpromptError
from softprompt.tasks.generation.toxicity import SCORERS, get_scorer, parse_scorer_names


@pytest.mark.parametrize("name", list(STEERINGS))
def test_each_steering_method_has_a_builder_and_parses_by_its_flags(name):
    spec = get_steering(name)
    assert name in BUILDERS
    assert not spec.needs_argument or spec.takes_argument
    if spec.takes_argument:
        assert parse_method(f"{name}:x") == (name, "x")
    else:
        with pytest.raises(SoftpromptError, match="takes no argument"):
            parse_method(f"{name}:x")
    if spec.needs_argument:
        with pytest.raises(SoftpromptError, match="needs its artifact"):
            parse_method(name)
    else:
        assert parse_method(name) == (name, "")


def test_detox_train_makes_the_artifacts_of_the_methods_that_need_one():
    assert trained_kinds() and all(get_steering(kind).needs_argument for kind in trained_kinds())


def test_unknown_steering_method_suggests_the_closest():
    with pytest.raises(SoftpromptError, match="unknown detox method 'self_debais' \\(did you mean 'self_debias'"):
        get_steering("self_debais")


@pytest.mark.parametrize("name", list(SCORERS))
def test_each_scorer_parses_as_written(name):
    spec = SCORERS[name]
    written = f"{name}:some/dir" if spec.takes_argument else name
    assert get_scorer(written) == (spec, "some/dir" if spec.takes_argument else "")
    assert parse_scorer_names(f" {written} ,") == [written]
    wrong = name if spec.takes_argument else f"{name}:x"  # the argument missing, or one too many
    with pytest.raises(SoftpromptError, match="unknown scorer"):
        parse_scorer_names(wrong)
