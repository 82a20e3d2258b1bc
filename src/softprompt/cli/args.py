"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from softprompt.backbones.placement import DEVICE_HELP, PRECISION_HELP, set_threads

THREADS_HELP = "torch CPU threads (0 = torch's default, one per core; use fewer on a busy machine)"


def compute_flags(command: argparse.ArgumentParser) -> None:
    """--threads, --device and --precision, for a command that loads a backbone."""
    command.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    command.add_argument("--device", default="auto", help=DEVICE_HELP)
    command.add_argument("--precision", default="auto", help=PRECISION_HELP)


def use_threads(args: argparse.Namespace) -> None:
    """Apply --threads to this process."""
    set_threads(args.threads, "--threads")


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
