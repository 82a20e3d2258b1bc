"""Users get compatible ranges (pyproject.toml); make and CI get exact pins (constraints.txt) inside them."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    listed = [Requirement(line) for line in project["dependencies"] + extras["dev"]]
    # dev names some of the project's own extras (softprompt[datasets,...]): their requirements count
    own = [r for r in listed if canonicalize_name(r.name) == "softprompt"]
    included = [Requirement(line) for r in own for extra in sorted(r.extras) for line in extras[extra]]
    return [r for r in listed if r not in own] + included


def test_every_requirement_is_a_range_not_an_exact_pin():
    for requirement in _requirements():
        assert not any(spec.operator == "==" for spec in requirement.specifier), requirement


def test_the_pins_lie_inside_the_declared_ranges():
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} not in {requirement}"
        )


def test_the_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    install = makefile[makefile.index("install:") : makefile.index("demo:")]
    assert install.count("$(PINNED)") == 2 and "--constraint constraints.txt" in makefile
    assert install.index("torch") < install.index('-e ".[dev]"')  # the CPU wheel first
