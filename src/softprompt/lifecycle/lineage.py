"""Where a retrained version came from, as its ``task.json`` records it under ``lineage``: the
parent's ``weights_sha256``, the feedback that trained it and the feedback held out (count,
sequence, request id and time ranges), the guard against forgetting, and the gate's figures.
"""

from __future__ import annotations

import time
from typing import Any

from softprompt.lifecycle.plan import RetrainPlan


def feedback_span(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, and first and last sequence number, request id and time of store rows (oldest first)."""
    first, last = rows[0], rows[-1]
    return {
        "count": len(rows),
        "first_seq": first["seq"],
        "last_seq": last["seq"],
        "first_request_id": first["request_id"],
        "last_request_id": last["request_id"],
        "first_time": first["time"],
        "last_time": last["time"],
    }


def lineage_record(plan: RetrainPlan, parent_sha256: str, guard: dict[str, Any], gate: dict[str, Any]) -> dict:
    """The ``lineage`` of the version ``plan`` made."""
    return {
        "parent": {
            "weights_sha256": parent_sha256,
            "path": str(plan.artifact),
            "method": plan.meta.get("method"),
            "continued": plan.continues,  # False: a fresh prompt (a zero-/few-shot parent, or another method)
        },
        "task": plan.task,
        "store": plan.store,
        "feedback": {"train": feedback_span(plan.train), "held_out": feedback_span(plan.held_out)},
        "guard": guard,
        "gate": gate,
        "time": round(time.time(), 3),
    }
