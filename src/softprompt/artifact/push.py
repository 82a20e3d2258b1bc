"""Publishing an artifact on the Hugging Face Hub (``softprompt push``, ``Model.push_to_hub``).

The token comes from ``HF_TOKEN`` or ``hf auth login`` (huggingface_hub's own lookup) and is
handed only to huggingface_hub: never written to disk or printed. The artifact is validated
first (a damaged one is not published), and its card is made for the repository's name.
"""

from __future__ import annotations

from pathlib import Path

from softprompt.artifact import PEFT_CONFIG_FILE, TASK_FILE, WEIGHTS_FILE, ArtifactFiles, peft_loadable, read_artifact
from softprompt.artifact.card import CARD_FILE, model_card
from softprompt.errors import SoftpromptError
from softprompt.hub import HUB_ID, connection_errors, unreachable


def upload_operations(files: ArtifactFiles, repo_id: str) -> list:
    """The commit operations a push sends: the artifact's files, and its card made for ``repo_id``
    (so "how to load it" names the repository)."""
    from huggingface_hub import CommitOperationAdd

    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(files.path / name))
        for name in (WEIGHTS_FILE, PEFT_CONFIG_FILE, TASK_FILE)
        if (files.path / name).is_file()
    ]
    card = model_card(files.meta, peft_loadable(files.path), repo_id)
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    return operations


def push_artifact(directory: str | Path, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` on the Hub if needed and commit the artifact to it; returns the commit's URL.

    Raises:
        SoftpromptError: a repository id that is not ``user/name``, no token, a damaged artifact,
            a Hub that does not answer (``HF_ENDPOINT``), or the Hub refusing the upload.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not HUB_ID.fullmatch(repo_id):
        raise SoftpromptError(f"repository id {repo_id!r} is not of the form user/name")
    files = read_artifact(directory)  # before the token: a damaged artifact fails first
    operations, meta = upload_operations(files, repo_id), files.meta
    token = get_token()
    if not token:
        raise SoftpromptError(
            "pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`"
        )
    message = f"softprompt: {meta.get('method', 'artifact')} for {meta.get('task', 'a task')}"
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=message)
    except connection_errors() as exc:  # before OSError: requests' ConnectionError is one
        raise unreachable(api.endpoint, exc) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SoftpromptError(f"push to {repo_id} failed: {str(exc).splitlines()[0]}") from None
    return str(info.commit_url)
