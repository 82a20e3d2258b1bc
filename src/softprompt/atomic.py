"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file softprompt writes (artifacts, checkpoints, logs' summaries, plots) goes through
here, so that a crash or Ctrl-C mid-write leaves the previous version intact; a folder that must
appear whole (a retrained version) is written beside its place and renamed into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same directory, so ``os.replace`` is atomic on POSIX. Its
    mode is set from the user's umask, like any other file they write (``mkstemp`` and some
    writers, safetensors among them, would leave it 0600, unreadable to a serving account).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: Path, replace: bool = False) -> Iterator[Path]:
    """A folder to write into, renamed to ``path`` when the block ends without an error and
    removed otherwise (Ctrl-C included): ``path`` holds everything written or what it held
    before. It lives in a hidden folder beside ``path`` (one filesystem, so the rename is atomic)
    under ``path``'s own name, which files that name their folder (a model card) read.

    Args:
        path: where the folder goes; it may exist empty.
        replace: replace a ``path`` that holds something (else refused, nothing replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield holder / path.name
        if path.is_dir() and any(path.iterdir()):
            if not replace:  # something was written there meanwhile: never lose it
                raise SoftpromptError(f"{path} is not empty (written to meanwhile?); nothing was replaced")
            os.replace(path, holder / "replaced")
        os.replace(holder / path.name, path)  # an empty folder is replaced as well
    finally:
        shutil.rmtree(holder, ignore_errors=True)
