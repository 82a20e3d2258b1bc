"""softprompt: train, apply and serve tiny learned prompts on frozen language models.

User mistakes surface as ``error: <one line>`` with exit status 2 and no traceback; Ctrl-C exits
with 130 and leaves the last checkpoint intact.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from softprompt.cli import detox, feedback, listing, loop, many, models, retrain, training
from softprompt.errors import SoftpromptError, TrainingDiverged, command_line


def build_parser() -> argparse.ArgumentParser:
    """The ``softprompt`` argument parser: one module per command group registers its commands."""
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (listing, training, models, many, feedback, retrain, loop, detox):
        group.add_commands(commands)
    return parser


class _PrintHandler(logging.Handler):
    """Library messages (``logging``) printed as plain lines on the current stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def _setup_output() -> None:
    """What the command (not the library) decides: softprompt's messages shown, the libraries'
    progress bars and warnings quieted."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    log = logging.getLogger("softprompt")
    if not any(isinstance(h, _PrintHandler) for h in log.handlers):
        log.addHandler(_PrintHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


def _quiet_libraries() -> None:
    """transformers' warnings and the Hub's progress bars off, without importing either (seconds
    that `--help` and a mistyped setting should not wait for): a library not loaded yet reads the
    settings from the environment when it loads (a value the user set there is kept); one already
    loaded (``main`` called in a Python process) is told directly."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _interrupt_hint(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind, said truthfully."""
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and not checkpoint.is_file():
        return "stopped before the first checkpoint: there is nothing to resume; run the command again"
    return getattr(args, "resume_hint", "the last checkpoint is intact; continue with `softprompt train ... --resume`")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it (argparse exits with status 2 on a mistake)."""
    parser = build_parser()
    # key=value overrides may stand between options (`out=x --resume train.lr=1e-3`).
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "texts", None), list) and not hasattr(args, "overrides"):
        # predict/tag: texts may follow options (`predict ART --device cpu "a text"`)
        if any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.texts += extra
    elif extra:
        free_text = getattr(args, "free_text", False)  # generate: prompts stand among the overrides
        if not hasattr(args, "overrides") or any(
            item.startswith("-") or ("=" not in item and not free_text) for item in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``softprompt`` command; returns the exit status.

    Nothing heavy is imported before the command line is parsed, and each command reads and checks
    its config before it imports torch: ``--help`` and a mistyped setting answer at once.
    """
    args = parse_args(argv)
    _setup_output()
    try:
        with command_line():
            args.run(args)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except SoftpromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_interrupt_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a file the user named cannot be written or read: say which, no traceback
        print(
            f"error: {exc.filename or ''}: {exc.strerror or exc}; check the path and its permissions", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
