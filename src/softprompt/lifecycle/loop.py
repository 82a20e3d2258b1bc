"""``softprompt loop``: the whole cycle as a process of its own beside a running server (never
inside its worker). Each round waits for ``every`` new feedback rows of the task, retrains the
live version on its feedback (:mod:`softprompt.lifecycle.retrain`, with its gate), posts the new
version as a shadow, waits until ``shadow_requests`` requests both versions answered have
feedback, then promotes it if it beats the live version there and drops it otherwise. One log
line per round.

Where a round stands is written (atomically) to a state file after every step, so a loop killed
at any moment (kill -9 included) resumes the round it was in: a retrain that finished is not
run again (its folder is complete or absent), a shadow the server still holds is waited on, one
the server lost (a restart) is posted again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from softprompt.atomic import atomic_write_json
from softprompt.errors import SoftpromptError
from softprompt.lifecycle.feedback import training_row
from softprompt.lifecycle.store import Store
from softprompt.lifecycle.versions import VERSIONS_FOLDER

logger = logging.getLogger(__name__)


@dataclass
class LoopSettings:
    """What ``softprompt loop`` is told (see its ``--help``)."""

    server: str
    db: str
    task: str
    every: int = 250
    shadow_requests: int = 100
    key: str | None = None  # the admin key (or the API key of a server without one)
    workdir: Path | None = None  # where new versions are written (default: under the served folder)
    rounds: int | None = None  # stop after this many rounds (None: run until stopped)
    poll_s: float = 2.0
    margin: float = 0.0  # the candidate must beat the live version by more than this
    retrain: dict[str, Any] = field(default_factory=dict)  # settings for each retrain


@dataclass
class LoopState:
    """Where the loop stands; saved after every step."""

    round: int = 1
    phase: str = "waiting"  # waiting -> retraining -> shadowing -> waiting (next round)
    seen: int = 0  # feedback rows (trainable, in force) at the end of the last round
    candidate: str | None = None  # the round's new version folder
    history: list[dict[str, Any]] = field(default_factory=list)


class Loop:
    """One task's loop against a server and its capture store."""

    def __init__(self, settings: LoopSettings, state_file: Path):
        self.settings, self.state_file = settings, state_file
        self.state = self.load_state()
        headers = {"Authorization": f"Bearer {settings.key}"} if settings.key else {}
        self.http = httpx.Client(base_url=settings.server.rstrip("/"), headers=headers, timeout=60)
        self.store = Store(settings.db, create=False)

    def load_state(self) -> LoopState:
        if not self.state_file.is_file():
            return LoopState()
        try:
            return LoopState(**json.loads(self.state_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise SoftpromptError(f"{self.state_file} is damaged ({exc}); move it aside to start at round 1") from None

    def save(self) -> None:
        atomic_write_json(self.state_file, asdict(self.state))

    def run(self) -> list[dict[str, Any]]:
        """Rounds until ``settings.rounds`` are done (or forever); the rounds' outcomes."""
        if self.state.phase != "waiting":
            logger.info("loop %s: resuming round %d at %s", self.settings.task, self.state.round, self.state.phase)
        done: list[dict[str, Any]] = []
        while self.settings.rounds is None or len(done) < self.settings.rounds:
            done.append(self.round())
        return done

    def round(self) -> dict[str, Any]:
        state = self.state
        if state.phase == "waiting":
            self.wait_for_feedback()
            state.phase = "retraining"
            self.save()
        if state.phase == "retraining":
            outcome = self.retrain()
            if outcome is not None:  # the gate refused it: the round ends here
                return self.finish(outcome)
            state.phase = "shadowing"
            self.save()
        return self.finish(self.shadow_and_decide())

    def feedback_count(self) -> int:
        return sum(training_row(row) is not None for row in self.store.latest_feedback(self.settings.task))

    def wait_for_feedback(self) -> None:
        while self.feedback_count() < self.state.seen + self.settings.every:
            time.sleep(self.settings.poll_s)

    def live(self) -> dict[str, Any]:
        answer = self.http.get(f"/v1/tasks/{self.settings.task}")
        if answer.status_code != 200:
            where = f"{self.settings.server}: GET /v1/tasks/{self.settings.task}"
            raise SoftpromptError(f"{where} answered {answer.status_code}: {answer.text[:200]}")
        return answer.json()

    def workdir(self, live_path: Path) -> Path:
        """Where this task's new versions go: ``--workdir``, else under the served folder (which
        the server may read from: ``DIR/.versions/NAME/loop``)."""
        if self.settings.workdir is not None:
            return self.settings.workdir
        parts = live_path.parts
        root = Path(*parts[: parts.index(VERSIONS_FOLDER)]) if VERSIONS_FOLDER in parts else live_path.parent
        return root / VERSIONS_FOLDER / self.settings.task / "loop"

    def retrain(self) -> dict[str, Any] | None:
        """Retrain the live version (once per round: a finished folder is kept). None when the
        gate passed; the round's outcome when it refused the new version."""
        from softprompt.lifecycle.retrain import retrain

        state, task = self.state, self.settings.task
        live_path = Path(self.live()["live"]["path"])
        out = self.workdir(live_path) / f"round-{state.round}"
        state.candidate = str(out)
        if (out / "task.json").is_file():  # finished before a restart
            lineage = json.loads((out / "task.json").read_text(encoding="utf-8"))["lineage"]
            passed, line = lineage["gate"]["passed"], "gate figures in its lineage"
        else:
            result = retrain(
                live_path, self.settings.db, out, task=task, progress=False, overwrite=True, **self.settings.retrain
            )
            passed, line = result.passed, result.line
        if passed:
            return None
        return {"outcome": "refused by the gate", "detail": line}

    def shadow_and_decide(self) -> dict[str, Any]:
        """Post the round's version as a shadow (again, if the server lost it), wait for the
        feedback on requests both answered, then promote or drop it."""
        task, candidate = self.settings.task, self.state.candidate
        version = json.loads((Path(candidate) / "task.json").read_text(encoding="utf-8"))["weights_sha256"]
        shown = self.live()
        if (shown.get("candidate") or {}).get("version") != version:
            posted = self.http.post(f"/v1/tasks/{task}/candidate", json={"path": candidate, "share": 0.0})
            if posted.status_code != 200:
                raise SoftpromptError(f"posting the candidate answered {posted.status_code}: {posted.text[:200]}")
        while True:
            compared = ((self.live().get("candidate") or {}).get("on_feedback")) or {}
            if compared.get("n", 0) >= self.settings.shadow_requests:
                break
            time.sleep(self.settings.poll_s)
        metric = "accuracy" if "live_accuracy" in compared else "chrf"
        live, mine = compared.get(f"live_{metric}", 0.0), compared.get(f"candidate_{metric}", 0.0)
        if mine > live + self.settings.margin:
            answer = self.http.post(f"/v1/tasks/{task}/promote")
            outcome = "promoted" if answer.status_code == 200 else f"promote answered {answer.status_code}"
        else:
            answer = self.http.delete(f"/v1/tasks/{task}/candidate")
            outcome = "dropped"
        return {"outcome": outcome, "metric": metric, "live": live, "candidate": mine, "n": compared["n"]}

    def finish(self, outcome: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        record = {"round": state.round, "feedback": self.feedback_count(), "version": state.candidate, **outcome}
        state.history.append(record)
        state.seen, state.phase, state.candidate = record["feedback"], "waiting", None
        state.round += 1
        self.save()
        figures = (
            f" ({record['metric']} {record['candidate']:.3f} vs live {record['live']:.3f} "
            f"on {record['n']} shadowed requests)"
            if "metric" in record
            else f": {record.get('detail', '')}"
        )
        logger.info(
            "loop %s round %d: %s%s; %d feedback rows",
            self.settings.task,
            record["round"],
            record["outcome"],
            figures,
            record["feedback"],
        )
        return record

    def close(self) -> None:
        self.http.close()
        self.store.close()
