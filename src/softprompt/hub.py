"""The Hugging Face Hub: what a model id looks like, and fetching a repository's files through the
user's cache (``HF_HOME``; offline with ``HF_HUB_OFFLINE=1``), with one-line errors.

Backbones and artifacts both resolve Hub ids here. Only the files a caller names are fetched:
pickled weights (``*.bin``, ``*.pt``) never are, since loading them would run a stranger's code.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

from softprompt.errors import SoftpromptError

# ``owner/name`` as the Hub spells model ids (a path that exists is never taken for one).
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


DATASET_PREFIX = "hf:"  # data.train=hf:NAME[:CONFIG][@SPLIT]


def parse_hub_dataset(text: str) -> tuple[str, str | None, str | None]:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> (name, config, split)."""
    body, _, split = text.removeprefix(DATASET_PREFIX).partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise SoftpromptError(f"{text}: give a dataset, e.g. hf:stanfordnlp/sst2 or hf:glue:sst2@validation")
    return name, config or None, split or None


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub model id and is not a local path."""
    if not HUB_ID.fullmatch(name):
        return False
    try:
        return not Path(name).expanduser().exists()
    except OSError:  # a name the system cannot look up is no local path
        return True


def looks_local(name: str) -> bool:
    """Whether ``name`` reads as a local path even where nothing by that name exists: it starts with
    ``/``, ``./``, ``../`` or ``~``, or its parent folder exists here (``runs/nope`` beside ``runs/``)."""
    if name.startswith(("/", "./", "../", "~")):
        return True
    parent = Path(name).parent
    try:
        return parent != Path() and parent.is_dir()
    except OSError:
        return False


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a Hub client raises when the endpoint does not answer: the socket's own errors, and
    those of whichever HTTP library huggingface_hub brought (requests in 0.x, httpx in 1.x,
    httpx2 in 2.x). Only libraries already loaded are looked at: one not loaded raised nothing."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, name in (("httpx", "TransportError"), ("httpx2", "TransportError"), ("requests", "ConnectionError")):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def unreachable(endpoint: str, exc: BaseException) -> SoftpromptError:
    """The one-line error for a Hub ``endpoint`` that did not answer."""
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    return SoftpromptError(
        f"cannot reach the Hugging Face Hub at {endpoint}: {reason}; check the network or HF_ENDPOINT"
    )


def snapshot(repo_id: str, patterns: list[str], what: str) -> Path:
    """The local snapshot of ``repo_id`` (only files matching ``patterns``): downloaded when online,
    else read from the cache. ``what`` names the thing in errors ("backbone", "artifact").

    Raises:
        SoftpromptError: not in the cache offline, gated, no such repository, or another Hub error.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise SoftpromptError(
            f"{what} {repo_id} is not a local folder and not in the Hugging Face cache, and the Hub cannot be "
            f"reached; download it where there is network (`hf download {repo_id}`, with the same HF_HOME) "
            "or give a local directory"
        ) from None
    except GatedRepoError:
        raise SoftpromptError(
            f"{what} {repo_id} is gated: accept its licence on huggingface.co and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise SoftpromptError(
            f"{what} {repo_id} is neither a local folder nor a model on the Hugging Face Hub (if it is private, "
            "log in with `hf auth login`)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SoftpromptError(f"{what} {repo_id}: {str(exc).splitlines()[0]}") from None
