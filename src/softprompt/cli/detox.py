"""The ``softprompt detox`` commands (train, eval, validate-scorer) and ``softprompt generate``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from softprompt.cli.args import input_texts
from softprompt.config import load_dataclass
from softprompt.config.compute import THREADS_HELP, check_threads
from softprompt.detox.config import DetoxEvalConfig, DetoxTrainConfig, GenerateConfig, ValidateConfig
from softprompt.errors import SoftpromptError

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _train(args: argparse.Namespace) -> None:
    config = load_dataclass(DetoxTrainConfig, args.config, args.overrides)
    from softprompt.detox.training import train_detox

    results = train_detox(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    for role in ("soft_prompt", "expert", "anti_expert"):
        if role in results:
            dev = results[role]
            print(f"{role}: dev loss {dev['loss']:.4f} per token (n={dev['n']} sentences)")
    print(f"artifacts: {config.out}  (time {results['seconds'] / 60:.1f} min)")


def _eval(args: argparse.Namespace) -> None:
    config = load_dataclass(DetoxEvalConfig, args.config, args.overrides)
    from softprompt.detox.evaluation import detox_eval
    from softprompt.detox.report import markdown_table

    results = detox_eval(config, overwrite=args.overwrite, progress=not args.quiet)
    print(markdown_table(results))
    print(f"written: {Path(config.out) / 'results.md'}, results.json, results.png")


def _validate(args: argparse.Namespace) -> None:
    config = load_dataclass(ValidateConfig, None, args.overrides)
    from softprompt.atomic import atomic_write_json
    from softprompt.detox.validation import validate_scorers, validation_table

    report = validate_scorers(config.data, config.scorer)
    print(validation_table(report))
    if config.out:
        atomic_write_json(Path(config.out), report)


def _generate(args: argparse.Namespace) -> None:
    overrides = [item for item in args.overrides if OVERRIDE.match(item)]
    if args.threads is not None:  # the flag predict, eval and serve take; it wins over threads=
        check_threads(args.threads, "--threads")
        overrides.append(f"threads={args.threads}")
    texts = [item for item in args.overrides if not OVERRIDE.match(item)]
    if texts and Path(texts[0], "task.json").is_file():  # a trained artifact writes for each text
        from softprompt.cli.models import generate_from_artifact

        generate_from_artifact(texts[0], texts[1:], overrides)
        return
    if texts or not sys.stdin.isatty():
        texts = input_texts(texts)
    if not texts:
        raise SoftpromptError("no prompt: give texts as arguments or one per line on stdin")
    config = load_dataclass(GenerateConfig, args.config, overrides)
    from softprompt.detox.generate import generate

    for text, continuations in zip(texts, generate(texts, config), strict=True):
        if args.json:
            print(json.dumps({"prompt": text, "continuations": continuations}, ensure_ascii=False), flush=True)
        else:
            for continuation in continuations:
                print(f"{text}{continuation}", flush=True)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``detox`` and ``generate`` on the main parser's subcommands."""
    detox = commands.add_parser("detox", help="measure and reduce toxic continuations (train, eval, validate-scorer)")
    sub = detox.add_subparsers(dest="detox_command", required=True)
    train = sub.add_parser("train", help="train the soft_prompt (kind=soft_prompt) or experts (kind=experts) prompts")
    train.add_argument("--config", help="YAML file of settings")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoints in out")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in out")
    train.add_argument("--quiet", action="store_true")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(
        run=_train, resume_hint="the last checkpoints are intact; continue with `softprompt detox train ... --resume`"
    )
    ev = sub.add_parser("eval", help="sample, score and compare methods (resumes an interrupted run in out)")
    ev.add_argument("--config", help="YAML file of settings (configs/detox_rtp.yaml)")
    ev.add_argument("--overwrite", action="store_true", help="discard generations already in out")
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.set_defaults(
        run=_eval,
        resume_hint="the generations so far are kept; the same `softprompt detox eval ... out=` command resumes",
    )
    val = sub.add_parser("validate-scorer", help="AUROC / Spearman of scorers against stored Perspective scores")
    val.add_argument("overrides", nargs="*", metavar="key=value")
    val.set_defaults(run=_validate)

    gen = commands.add_parser(
        "generate",
        help="generate ARTIFACT text...: write with a generation artifact (JSON lines); generate text...: continue "
        "prompts with the plain or detoxified model",
    )
    gen.add_argument("--config", help="YAML file of settings")
    gen.add_argument("--json", action="store_true", help="one JSON line per prompt")
    gen.add_argument("--threads", type=int, help=f"{THREADS_HELP}; the same as threads=N")
    gen.add_argument("overrides", nargs="*", metavar="key=value or text")
    gen.set_defaults(run=_generate, free_text=True)
