"""``softprompt retrain``: continue a served task's prompt on the feedback it received, guarded
against forgetting, and judge the new version with the gate.

Exit status: 0 when the gate passes; 3 when it fails (the new version is written all the same,
with ``lineage.gate.passed`` false, for inspection; one line says which figure failed); 2 for a
mistake in the input (no feedback, training data moved, ``out`` in use...) as for every command,
and for a loss that diverged (nothing written: 3 means a version was written and refused).
"""

from __future__ import annotations

import argparse
import sys

from softprompt.errors import SoftpromptError

GATE_FAILED = 3  # the exit status of a version the gate refused

HELP = (
    "continue a served task's prompt on its feedback (serve --capture DB), guarded against forgetting, "
    "and gate it: exit 0 when the gate passes, 3 when it fails (DIR is written, lineage.gate.passed=false)"
)
EPILOG = """\
The newest 20% of the task's feedback (retrain.holdout) is held out to test the new version;
the rest trains, mixed with as many rows of the artifact's own training data (retrain.replay=1;
0 turns replay off; retrain.guard=ewc for EWC instead). The gate: at least the parent's score on
the held-out feedback (accuracy; chrF for generation), and at most 0.5 accuracy points (1 chrF
point; retrain.max_dev_drop) below it on the parent's dev split.

exit status: 0 gate passed; 3 gate failed (DIR written for inspection); 2 a mistake in the input."""


def _retrain(args: argparse.Namespace) -> None:
    from softprompt.config.recipe import CommandLineValue, parse_overrides
    from softprompt.lifecycle.plan import plan_retrain

    settings = parse_overrides(args.overrides)
    out = settings.pop("out", None)
    if isinstance(out, dict):
        raise SoftpromptError("out is the folder of the new version: give out=DIR")
    out = out.as_text() if isinstance(out, CommandLineValue) else out
    plan = plan_retrain(args.artifact, args.db, out, args.task, settings, args.overwrite)  # before torch
    from softprompt.lifecycle.retrain import run_plan

    args.resume_hint = f"nothing was written to {plan.out}; run the command again"
    result = run_plan(plan, progress=not args.quiet)
    if not result.passed:
        print(f"{result.line}; wrote {result.out} with lineage.gate.passed=false, for inspection", file=sys.stderr)
        raise SystemExit(GATE_FAILED)
    print(f"{result.line}")
    print(f"wrote {result.out} (lineage in its task.json)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``retrain``."""
    command = commands.add_parser(
        "retrain", help=HELP, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_argument("artifact", help="the served artifact folder (its name is the task's name in the store)")
    command.add_argument("--db", required=True, help="the capture store: a file path (SQLite) or an SQLAlchemy URL")
    command.add_argument("--task", help="the task's name in the store (default: the artifact folder's name)")
    command.add_argument("--overwrite", action="store_true", help="replace what a non-empty out= folder holds")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.add_argument(
        "overrides", nargs="*", metavar="key=value", help="out=DIR (required), then settings over the artifact's"
    )
    command.set_defaults(run=_retrain)
