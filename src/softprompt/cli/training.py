"""``softprompt train`` and ``softprompt compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from softprompt.cli.args import training_command


def _train(args: argparse.Namespace) -> None:
    from softprompt.config import load_config

    config = load_config(args.config, args.overrides)  # checked before torch is imported
    from softprompt.tasks import get_task
    from softprompt.training.checkpoint import CHECKPOINT
    from softprompt.training.processes import processes
    from softprompt.training.resume import saved_config
    from softprompt.training.run import train

    saved = saved_config(Path(config.out)) if args.resume else None
    if saved is not None:  # settings not given again are the saved run's; given ones must agree
        config = load_config(args.config, args.overrides, base=saved)
    args.checkpoint = Path(config.out) / CHECKPOINT  # what Ctrl-C can promise
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, extend=args.extend)
    if not processes().main:  # under `accelerate launch`, the main process reports
        return
    for note in result.notes:
        print(f"note: {note}")
    trained = bool(result.trainable_parameters)
    for line in get_task(config.task).summary(result.metrics, result.best_step, trained, config.method):
        print(line)
    share = 100 * result.trainable_parameters / result.backbone_parameters
    print(
        f"artifact: {result.out} ({result.artifact_bytes / 1024:.1f} KB; {result.trainable_parameters:,} "
        f"trainable parameters = {share:.4f}% of {result.backbone_parameters / 1e6:.1f}M)"
    )
    minutes, seconds = divmod(round(result.seconds), 60)
    print(f"time: {minutes} min {seconds} s")


def _compare(args: argparse.Namespace) -> None:
    from softprompt.cli.compare import REPORT, compare, markdown

    rows, out = compare(args.config, args.overrides, progress=(lambda line: None) if args.quiet else print)
    context = json.loads((out / f"{REPORT}.json").read_text(encoding="utf-8"))["context"]
    print("\n" + markdown(rows, context))
    print(f"wrote {out / REPORT}.md, .json and .png")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``compare``."""
    train = training_command(commands, "train", "train a prompt (key=value overrides, e.g. train.lr=3e-3)", _train)
    train.add_argument("--extend", action="store_true", help="with --resume: allow a larger train.max_steps")
    comp = commands.add_parser(
        "compare",
        help="train several methods on the same data and budget, with baselines "
        "(methods=a,b,... lrs=lora:1e-3,... fewshot=K, then key=value overrides)",
    )
    comp.add_argument("--config", help="YAML recipe shared by all methods")
    comp.add_argument("--quiet", action="store_true", help="no line per finished run, only the table")
    comp.add_argument("overrides", nargs="*", metavar="key=value")
    comp.set_defaults(run=_compare)
