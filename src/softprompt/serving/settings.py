"""What a server accepts and how it batches: every limit in one place, each with the
``softprompt serve`` flag that sets it (the command line is built from these fields, so a limit
cannot exist without its flag). A request over a limit is answered with a status that names the
limit and its flag. Light on purpose: the command line reads it before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from softprompt.errors import SoftpromptError


def _flag(name: str, help_text: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, "help": help_text, **extra}


@dataclass
class ServeSettings:
    """How the server batches (see :mod:`softprompt.serving.scheduler`) and what it
    accepts (docs/serving-and-many-tasks.md has the table of limits)."""

    queue_size: int = field(default=256, metadata=_flag("--queue-size", "requests waiting for the worker; 429 above"))
    max_batch: int = field(default=32, metadata=_flag("--max-batch", "texts per model call"))
    token_budget: int = field(
        default=256,
        metadata=_flag(
            "--token-budget",
            "tokens a step reads: one per decoding row, the rest for prompts (a longer prompt is read in chunks)",
        ),
    )
    max_token_wait_ms: float = field(
        default=500.0,
        metadata=_flag(
            "--max-token-wait-ms",
            "how long a decoding row may wait for its next token while prompts are read (0: no limit)",
            zero_ok=True,
        ),
    )
    max_wait_ms: float = field(
        default=5.0, metadata=_flag("--max-wait-ms", "how long a request waits for company", zero_ok=True)
    )
    api_key: str | None = None  # when set, every route but /healthz needs "Authorization: Bearer KEY"
    # When set, task changes (add, remove, reload, candidates, promote, rollback) need this key
    # instead of api_key; inference and feedback stay behind api_key.
    admin_key: str | None = None
    # Folders besides the served one that artifact paths given to the server may lie in.
    artifacts_roots: tuple[str, ...] = ()
    capture: str | None = None  # serve --capture: a file path (SQLite) or an SQLAlchemy URL
    capture_rate: float = 1.0  # the share of requests captured
    capture_max_rows: int | None = None  # keep at most this many captured requests (oldest dropped)
    # Replicas sharing the served folder (serve --ray): a task added or removed through the API is
    # also written to the folder, which every replica watches (serving.shared_folder).
    shared_folder: bool = False
    replicas: int = 1  # how many replicas serve it (serve --ray)
    max_body_bytes: int = field(default=1_000_000, metadata=_flag("--max-body-bytes", "413 for a larger request body"))
    max_text_chars: int = field(
        default=10_000, metadata=_flag("--max-text-chars", "413 for a longer text, prompt or chat message")
    )
    max_generated_tokens: int = field(
        default=2_048,
        metadata=_flag("--max-generated-tokens", "413 when a request's tokens to generate (tokens x samples) are more"),
    )
    timeout_s: float = field(
        default=120.0, metadata=_flag("--timeout", "504 for a request that waits and runs longer (seconds)")
    )
    watch_s: float = field(
        default=0.0,
        metadata=_flag(
            "--watch",
            "look at the artifacts folder this often: serve new or changed sub-folders, drop gone ones (0: never)",
            metavar="SECONDS",
            zero_ok=True,
        ),
    )
    max_texts: int = field(default=256, metadata=_flag("--max-texts", "texts in one /v1/classify request; 422 above"))
    max_new_tokens: int = field(
        default=512,
        metadata=_flag(
            "--max-new-tokens", "max_new_tokens of /v1/generate and max_tokens of the OpenAI routes; 422/400 above"
        ),
    )
    max_samples: int = field(
        default=16, metadata=_flag("--max-samples", "samples of /v1/generate and n of the OpenAI routes; 422/400 above")
    )
    max_task_labels: int = field(
        default=256,
        metadata=_flag("--metrics-max-tasks", "tasks named in /metrics' labels; the ones served later share 'other'"),
    )

    drift_window: int = field(
        default=200, metadata=_flag("--drift-window", "a classifier's last answers its drift score reads")
    )
    drift_threshold: float = field(
        default=0.25,
        metadata=_flag("--drift-threshold", "the drift score (PSI) at which softprompt_task_drift_alert is 1"),
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value, zero_ok = getattr(self, spec.name), spec.metadata.get("zero_ok", False)
            if "flag" in spec.metadata and (value < 0 or (value == 0 and not zero_ok)):
                low = ">= 0" if zero_ok else "> 0"
                raise SoftpromptError(f"{spec.metadata['flag']}: expected a number {low}, got {value:g}")
        if not 0 < self.capture_rate <= 1:
            raise SoftpromptError(f"--capture-rate: expected a share in (0, 1], got {self.capture_rate:g}")
        if self.capture_max_rows is not None and self.capture_max_rows < 1:
            raise SoftpromptError(f"--capture-max-rows: expected a number > 0, got {self.capture_max_rows}")
        if self.shared_folder and self.watch_s <= 0:  # replicas follow the folder every watch_s seconds
            raise SoftpromptError("a folder shared by replicas needs --watch SECONDS > 0 (serve --ray sets 1)")
        if self.capture is None and (self.capture_rate != 1.0 or self.capture_max_rows is not None):
            raise SoftpromptError("--capture-rate and --capture-max-rows need --capture DB")


def setting_flags() -> list[tuple[str, str, Any, dict[str, Any]]]:
    """``(flag, field name, default, extra argparse keywords)`` for every limit and batching setting."""
    out = []
    for spec in fields(ServeSettings):
        if "flag" in spec.metadata:
            extra = {k: v for k, v in spec.metadata.items() if k not in ("flag", "zero_ok")}
            out.append((spec.metadata["flag"], spec.name, spec.default, extra))
    return out


def over_limit(value: int | None, limit: int, flag: str) -> str | None:
    """What a request is told when a count it gives is over a limit of the server's, or None."""
    if value is None or value <= limit:
        return None
    return f"at most {limit:,} on this server (serve {flag}); got {value:,}"
