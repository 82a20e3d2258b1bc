"""``softprompt ls``: what backbones, datasets, methods and tasks exist."""

from __future__ import annotations

import argparse
import dataclasses


def _options_line(spec) -> str:
    """``options: lora.r=8 lora.alpha=16 ...`` for a method with a config section."""
    if spec.options is None:
        return ""
    return "options: " + " ".join(f"{spec.name}.{f.name}={f.default}" for f in dataclasses.fields(spec.options))


def _ls(args: argparse.Namespace) -> None:
    from softprompt.backbones.sources import BACKBONES
    from softprompt.datasets import builtin_specs
    from softprompt.methods import METHODS
    from softprompt.tasks import task_specs

    if args.what == "backbones":
        rows = [(s.name, s.kind, s.description) for s in BACKBONES.values()]
        rows.append(("<path>", "auto", "any local Hugging Face model directory or .gguf file"))
    elif args.what == "datasets":
        rows = [
            (s.name, "/".join(map(str, s.verbalizer)) if s.verbalizer else f"task={s.task}", s.description)
            for s in builtin_specs().values()
        ]
    elif args.what == "tasks":
        rows = [(s.name, s.metric_label, s.description) for s in task_specs().values()]
    else:
        rows = [
            (s.name, f"lr {s.default_lr:g}" if s.trains else "no training", s.description, _options_line(s))
            for s in METHODS.values()
        ]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]}")
        if len(row) > 3 and row[3]:
            print(f"{'':<{width[0] + width[1] + 4}}{row[3]}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``ls``."""
    ls = commands.add_parser("ls", help="list backbones, datasets, methods or tasks")
    ls.add_argument("what", choices=["backbones", "datasets", "methods", "tasks"])
    ls.set_defaults(run=_ls)
