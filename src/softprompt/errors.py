"""User-facing errors: one line, no traceback, a non-zero exit (see ``cli.main``)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

# Who is calling: hints name ``--resume`` for the command line, ``resume=True`` for Python.
_COMMAND_LINE: ContextVar[bool] = ContextVar("softprompt_command_line", default=False)


# Every character that ends a line (str.splitlines), shown escaped: \n, \r, \x0c, \u2028...
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class SoftpromptError(Exception):
    """A mistake in the user's input or environment, reported as a single line.

    The CLI prints ``error: <message>`` and exits with status 2; library callers can catch it.
    Line breaks that user data brings into a message (a column name, a label) are shown escaped
    (any character that ends a line: ``\\n``, ``\\r``, form feed, ``\\u2028``...), so the message
    stays one line.
    """

    def __init__(self, message: str = "", *args: object):
        super().__init__(str(message).translate(_LINE_BREAKS), *args)


class TrainingDiverged(SoftpromptError):
    """The loss became NaN or infinite; the last checkpoint, if one was written, is kept."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> SoftpromptError:
    """Build the error for a misspelled registry name, suggesting the nearest one."""
    choices = sorted(choices)
    return SoftpromptError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {', '.join(choices)}")


def flag(name: str) -> str:
    """A yes/no option as the caller writes it: ``--resume`` in the CLI, ``resume=True`` in Python."""
    return f"--{name}" if _COMMAND_LINE.get() else f"{name}=True"


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within it, hints spell options as command-line flags (the CLI runs its commands in it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)
