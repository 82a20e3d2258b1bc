"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse
import sys

from softprompt.config.compute import DEVICE_HELP, PRECISION_HELP, THREADS_HELP
from softprompt.errors import SoftpromptError


def compute_flags(command: argparse.ArgumentParser) -> None:
    """--threads, --device and --precision, for a command that loads a backbone."""
    command.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    command.add_argument("--device", default="auto", help=DEVICE_HELP)
    command.add_argument("--precision", default="auto", help=PRECISION_HELP)


def use_threads(args: argparse.Namespace) -> None:
    """Apply --threads to this process."""
    from softprompt.backbones.placement import set_threads  # torch: once the command runs

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


def input_texts(given: list[str]) -> list[str]:
    """Texts from the arguments, else one per non-blank line of stdin; each must be UTF-8.

    Python hands undecodable argument bytes over as lone surrogates (and stdin too under a C
    locale); a tokenizer would fail on them with a TypeError, so they are refused here, by place.
    """
    if given:
        for number, text in enumerate(given, start=1):
            _check_utf8(text, f"text argument {number}")
        return given
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (e.g. io.StringIO)
        lines = list(sys.stdin)
    else:
        lines = []
        for number, raw in enumerate(buffer, start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise SoftpromptError(
                    f"stdin line {number}: not UTF-8 (byte 0x{raw[exc.start]:02x}); texts must be UTF-8"
                ) from None
    texts = [line.rstrip("\r\n") for line in lines if line.strip()]
    for number, text in enumerate(texts, start=1):
        _check_utf8(text, f"stdin text {number}")
    return texts


def _check_utf8(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(text[exc.start]) - 0xDC00 if 0xDC80 <= ord(text[exc.start]) <= 0xDCFF else None
        shown = f" (byte 0x{byte:02x})" if byte is not None else ""
        raise SoftpromptError(f"{where}: not UTF-8{shown}; texts must be UTF-8") from None
