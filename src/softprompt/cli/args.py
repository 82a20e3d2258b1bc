"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse


def training_command(
    commands, name: str, help_text: str, run, resume: str = "continue from <out>/checkpoint"
) -> argparse.ArgumentParser:
    """A command that trains from a recipe: --config, --resume, --overwrite, --quiet, overrides."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    command.add_argument("--resume", action="store_true", help=resume)
    command.add_argument("--overwrite", action="store_true", help="replace an existing run in <out>")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.add_argument("overrides", nargs="*", metavar="key=value")
    command.set_defaults(run=run)
    return command
