"""The shell commands of the README and docs/, and the generated configuration reference, stay true."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.cli import build_parser, main, parse_args
from softprompt.config import load_config
from softprompt.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONSTRAINTS = (ROOT / "constraints.txt").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


DOCS = sorted((ROOT / "docs").glob("*.md"))


def shell_lines(text: str = README) -> list[str]:
    """The lines of the ``bash`` fenced blocks, backslash continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def softprompt_commands() -> list[tuple[str, str]]:
    """(where, command) for every ``softprompt ...`` line of the README and docs/*.md."""
    sources = [("README.md", README)] + [(f"docs/{p.name}", p.read_text(encoding="utf-8")) for p in DOCS]
    return [(where, line) for where, text in sources for line in shell_lines(text) if line.startswith("softprompt ")]


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


def _check_recipe(args) -> None:
    """What a training command would check before loading any data or model: the recipe and its
    overrides load, and the task accepts them (template against method, verbalizer...)."""
    from softprompt.cli.compare import parse_plan

    config_path = ROOT / args.config if getattr(args, "config", None) else None
    if config_path is not None and not config_path.is_file():
        return  # a recipe the reader writes (tasks.yaml): parse-only
    overrides = list(args.overrides)
    methods = [None]
    if args.command == "compare":
        plan, overrides = parse_plan(overrides)
        methods = plan.methods
    for method in methods:
        config = load_config(config_path, overrides + ([f"method={method}"] if method else []))
        get_task(config.task).check(config)


@pytest.mark.parametrize(("where", "line"), softprompt_commands())
def test_every_documented_command_parses_and_its_recipe_checks(where, line):
    """Commands that need files absent here (artifacts, runs/, ../shared/data) are parsed only:
    argparse plus, for ``train`` and ``compare``, the recipe with its overrides and the task's
    cheap checks (``TaskSpec.check``), none of which reads data or loads a backbone."""
    argv = shlex.split(line, comments=True)[1:]
    if argv == ["--help"]:  # argparse exits; test_cli_commands_parse_and_their_recipes_load runs it
        return
    args = parse_args(argv)
    if args.command in ("train", "compare"):
        _check_recipe(args)


def test_method_lora_on_the_demo_recipe_drops_the_soft_slots(capsys):
    from softprompt.tasks.classification import resolve_prompting

    main(["ls", "methods"])  # the CLI's output set-up: library notes print as lines
    capsys.readouterr()
    config = load_config(ROOT / "configs" / "sentiment_prompt.yaml", ["method=lora"])
    template, _ = resolve_prompting(config, announce=True)
    assert template.source == "Review: {text}\nSentiment:" and template.num_soft == 0
    note = "note: method=lora has no soft tokens; the template is used without its soft slots"
    assert capsys.readouterr().out == f"{note}: 'Review: {{text}}\\nSentiment:'\n"


@pytest.mark.slow
def test_configuration_reference_is_generated_from_the_code():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
