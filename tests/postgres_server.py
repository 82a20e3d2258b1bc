"""A real PostgreSQL server in a temporary directory, for tests that need a database.

It is started the way a user would start one (initdb, then pg_ctl), on a free port of 127.0.0.1,
with its socket and log beside the data, so that nothing outside the temporary directory is used.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = (
    "PostgreSQL's binaries (initdb, pg_ctl) are not installed; `.ci/run` installs Debian's postgresql package"
)
DATABASE = "softprompt_test"


def _version(bin_dir: Path) -> list[int]:
    """/usr/lib/postgresql/15/bin -> [15], compared as numbers so that 15 sorts above 9.6."""
    return [int(n) for n in re.findall(r"\d+", bin_dir.parent.name)]


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: the PATH's first, else Debian's newest version."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    return next((d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the `postgres` user: the server refuses to run as root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL's server as")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    pytest.skip("running as root, and `runuser` (util-linux) is missing to run PostgreSQL's server as `postgres`")


def _free_port() -> int:
    """A TCP port of 127.0.0.1 free now (the kernel picks it); a clash before the server binds it is unlikely."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 30) -> str:
    """The end of the server's log, which says why it would not start."""
    text = log.read_text(errors="replace") if log.exists() else "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def start_postgres(tmp_dir: Path) -> Iterator[str]:
    """Run a fresh server until the block exits (even on failure); yield a SQLAlchemy URL of an empty database.

    As root the server runs as `postgres`, which cannot enter pytest's root-only (0700) temporary
    directories, so its directory is then made beside them in the system's temporary directory.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(INSTALL_HINT)
    prefix = _as_server_user()
    base = Path(tempfile.mkdtemp(prefix="softprompt-pg-")) if prefix else Path(tmp_dir)
    data, log, port = base / "data", base / "server.log", _free_port()
    if prefix:
        shutil.chown(base, "postgres", "postgres")
    data.mkdir(mode=0o700)
    if prefix:
        shutil.chown(data, "postgres", "postgres")

    def run(program: str, *args: str, check: bool = True) -> None:
        """Run one of the binaries; on failure, say what it and the server's log said."""
        done = subprocess.run([*prefix, str(bin_dir / program), *args], cwd=base, capture_output=True, text=True)
        if check and done.returncode:
            tail = _log_tail(log)
            raise RuntimeError(f"PostgreSQL's {program} failed: {done.stdout}{done.stderr}--- {log} ---\n{tail}")

    started = False
    try:
        # --no-sync: a throwaway cluster need not wait for the disk.
        run("initdb", "-D", str(data), "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={shlex.quote(str(base))}"
        started = True  # pg_ctl may fail with the server up (e.g. its wait times out): stop it anyway
        run("pg_ctl", "start", "-w", "-D", str(data), "-l", str(log), "-o", options)
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            run("pg_ctl", "stop", "-m", "fast", "-D", str(data), check=False)
        if prefix:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the whole session (starting one takes a second or two); skipped without PostgreSQL."""
    with start_postgres(tmp_path_factory.mktemp("postgres")) as url:
        yield url
