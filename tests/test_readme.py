"""The README's shell commands and the generated configuration reference stay true."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.cli import build_parser, main
from softprompt.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONSTRAINTS = (ROOT / "constraints.txt").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def shell_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_is_a_guide_with_the_two_setup_commands():
    assert len(README.splitlines()) <= 250
    assert {"make demo", "make test"} <= set(shell_lines())


@pytest.mark.parametrize("line", [line for line in shell_lines() if line.startswith("make ")])
def test_make_targets_exist(line):
    assert re.search(rf"^{line.split()[1]}:", MAKEFILE, flags=re.M)


@pytest.mark.parametrize("line", [line for line in shell_lines() if line.startswith("pip install")])
def test_pinned_installs_match_what_make_installs(line):
    for pin in re.findall(r"[\w-]+==[\w.]+", line):
        assert pin in MAKEFILE or pin in CONSTRAINTS, f"{pin} differs from the Makefile's and constraints.txt's pins"


@pytest.mark.parametrize("line", [line for line in shell_lines() if line.startswith("softprompt ")])
def test_cli_commands_parse_and_their_recipes_load(line, capsys):
    argv = shlex.split(line)[1:]
    if argv[0] in ("ls", "--help"):  # needs no artifact: run it
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's --help
            code = exc.code
        assert code == 0 and capsys.readouterr().out.strip()
        return
    args, extra = build_parser().parse_known_args(argv)
    assert all("=" in item for item in extra)
    if getattr(args, "config", None):
        load_config(ROOT / args.config, [*args.overrides, *extra])


def test_configuration_reference_is_generated_from_the_code():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
