"""The capture store: served requests and the feedback on them, in one database through
SQLAlchemy. A file path is an SQLite database (the embedded default, in WAL mode so readers such
as ``softprompt feedback stats`` never block the server's writes); any SQLAlchemy URL works too,
PostgreSQL (``postgresql+psycopg://...``) for several processes writing one store.

Light on purpose (SQLAlchemy only, no torch): the ``feedback`` commands read it in a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from softprompt.errors import SoftpromptError

SCHEMA_VERSION = 1
metadata = sa.MetaData()

# One row per answer (a classified text, a generation request, a completion): ``id`` is what the
# response carried and what feedback names. ``role`` says whether the row's answer was returned
# ("served") or only captured beside it ("shadow"; see the candidates of lifecycle.versions).
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(80), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("task", sa.String(100), nullable=False),  # "" for the plain model
    sa.Column("version", sa.String(64), nullable=False),  # the artifact's weights_sha256
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("input", sa.Text, nullable=False),  # JSON
    sa.Column("output", sa.Text, nullable=False),  # JSON
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Index("requests_by_id", "id"),
    sa.Index("requests_by_task", "task", "seq"),
)

# Every feedback ever given (a later one for the same request supersedes, the history stays).
# The input text and the answered version are copied in, so feedback outlives the pruning of
# old requests (serve --capture-max-rows) and exports without a join.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(80), nullable=True),  # None: a label with no served request
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # "classify" or "generate"
    sa.Column("version", sa.String(64), nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=True),  # what was served (a label or a text), if any
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Index("feedback_by_request", "request_id"),
    sa.Index("feedback_by_task", "task", "seq"),
)

store_info = sa.Table(
    "softprompt_store",
    metadata,
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class Captured:
    """One answer to store (see the ``requests`` table)."""

    id: str
    task: str
    version: str
    route: str
    input: Any
    output: Any
    latency_ms: float
    role: str = "served"
    time: float = 0.0  # 0: when it is written

    def row(self, now: float) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("id", "task", "version", "route", "latency_ms", "role")}
        out |= {"time": self.time or now, "input": _json(self.input), "output": _json(self.output)}
        return out


@dataclass(frozen=True)
class Feedback:
    """One feedback row: a label (classification), a corrected output (generation) or a score in
    [-1, 1], on a served request (``request_id``) or on a text of its own."""

    task: str
    kind: str
    text: str
    request_id: str | None = None
    version: str | None = None
    answer: str | None = None
    label: str | None = None
    output: str | None = None
    score: float | None = None
    time: float = 0.0


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def database_url(target: str) -> str:
    """An SQLAlchemy URL for ``target``: a URL as it is, a file path as an SQLite database."""
    if "://" in target:
        return target
    return f"sqlite:///{Path(target).expanduser().resolve()}"


class Store:
    """The capture store at ``target`` (a file path or an SQLAlchemy URL), its tables created on
    first use. Methods are synchronous; the server calls them from one thread of its own.

    Raises:
        SoftpromptError: the database cannot be opened, in one line naming it and what to do.
    """

    def __init__(self, target: str, create: bool = True):
        self.target, self.url = target, database_url(target)
        self.engine = _engine(self.url, target)
        try:
            if create:
                metadata.create_all(self.engine)
                self._record_schema()
            elif not sa.inspect(self.engine).has_table("requests"):
                raise SoftpromptError(f"{target}: not a capture store (start `softprompt serve --capture {target}`)")
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise SoftpromptError(f"capture store {target}: {store_problem(exc)}") from None

    def _record_schema(self) -> None:
        with self.engine.begin() as db:
            found = db.execute(sa.select(store_info.c.value).where(store_info.c.key == "schema")).scalar()
            if found is None:
                db.execute(store_info.insert().values(key="schema", value=str(SCHEMA_VERSION)))
            elif int(found) > SCHEMA_VERSION:
                raise SoftpromptError(
                    f"capture store {self.target} has schema {found}, newer than this softprompt's "
                    f"{SCHEMA_VERSION}: upgrade softprompt"
                )
            # A write, so that a store another process holds locked is found now, not at the first answer.
            db.execute(
                store_info.update().where(store_info.c.key == "schema").values(value=found or str(SCHEMA_VERSION))
            )

    def close(self) -> None:
        self.engine.dispose()

    def write(self, answers: Iterable[Captured], max_rows: int | None = None) -> int:
        """Store ``answers`` in one transaction (committed when this returns); with ``max_rows``,
        drop the oldest requests beyond it. The number of rows written."""
        now = time.time()
        rows = [a.row(now) for a in answers]
        with self.engine.begin() as db:
            if rows:
                db.execute(requests.insert(), rows)
            if max_rows is not None:
                newest = db.execute(sa.select(sa.func.max(requests.c.seq))).scalar() or 0
                db.execute(requests.delete().where(requests.c.seq <= newest - max_rows))
        return len(rows)

    def answer(self, request_id: str) -> dict[str, Any] | None:
        """The served answer with ``id`` (input and output decoded), or None."""
        query = sa.select(requests).where(requests.c.id == request_id, requests.c.role == "served")
        with self.engine.connect() as db:
            row = db.execute(query.order_by(requests.c.seq.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        return {**row, "input": json.loads(row["input"]), "output": json.loads(row["output"])}

    def add_feedback(self, given: Feedback) -> int:
        """Store one feedback (committed when this returns); its sequence number."""
        values = {k: getattr(given, k) for k in Feedback.__dataclass_fields__}
        values["time"] = given.time or time.time()
        with self.engine.begin() as db:
            return int(db.execute(feedback.insert().values(**values)).inserted_primary_key[0])

    def latest_feedback(self, task: str | None = None) -> Iterator[dict[str, Any]]:
        """The feedback in force, oldest first: for each served request its latest feedback, and
        every feedback given on a text of its own."""
        newest = (
            sa.select(sa.func.max(feedback.c.seq))
            .where(feedback.c.request_id.is_not(None))
            .group_by(feedback.c.request_id)
        )
        query = sa.select(feedback).where(sa.or_(feedback.c.request_id.is_(None), feedback.c.seq.in_(newest)))
        if task is not None:
            query = query.where(feedback.c.task == task)
        with self.engine.connect() as db:
            yield from (dict(row) for row in db.execute(query.order_by(feedback.c.seq)).mappings())

    def request_counts(self, task: str | None = None) -> dict[tuple[str, str], int]:
        """Served answers by (task, version)."""
        query = (
            sa.select(requests.c.task, requests.c.version, sa.func.count())
            .where(requests.c.role == "served")
            .group_by(requests.c.task, requests.c.version)
        )
        if task is not None:
            query = query.where(requests.c.task == task)
        with self.engine.connect() as db:
            return {(task, version): count for task, version, count in db.execute(query)}

    def both_answered(self, task: str, live: str, candidate: str) -> list[dict[str, Any]]:
        """Requests of ``task`` answered by version ``live`` (served) and ``candidate`` (shadow)
        that have feedback in force: each with both outputs and the feedback's label or output."""
        served, shadow = requests.alias("served"), requests.alias("shadow")
        newest = sa.select(sa.func.max(feedback.c.seq)).where(feedback.c.task == task).group_by(feedback.c.request_id)
        query = (
            sa.select(
                served.c.id,
                served.c.output,
                shadow.c.output.label("candidate_output"),
                feedback.c.label,
                feedback.c.output.label("given"),
            )
            .join(shadow, sa.and_(shadow.c.id == served.c.id, shadow.c.role == "shadow", shadow.c.version == candidate))
            .join(feedback, feedback.c.request_id == served.c.id)
            .where(
                served.c.task == task, served.c.role == "served", served.c.version == live, feedback.c.seq.in_(newest)
            )
            .where(sa.or_(feedback.c.label.is_not(None), feedback.c.output.is_not(None)))
        )
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [
            {
                "id": r["id"],
                "live": json.loads(r["output"]),
                "candidate": json.loads(r["candidate_output"]),
                "label": r["label"],
                "output": r["given"],
            }
            for r in rows
        ]


def _engine(url: str, target: str) -> Engine:
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise SoftpromptError(
            f"capture store {target}: {str(exc).splitlines()[0]} (give a file path, or a URL such as "
            "postgresql+psycopg://user@host/db with its driver installed)"
        ) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_settings)
    return engine


def _sqlite_settings(connection: Any, _: Any) -> None:
    """WAL: readers never block the writer; synchronous=FULL: a committed batch survives a crash
    of the machine, not only of the process; busy_timeout: wait for another writer a second (a
    lock held longer fails the batch's write, which is counted, rather than stalling answers)."""
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=1000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def store_problem(exc: BaseException) -> str:
    """A database error in one line, with what to do for the common ones."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        return f"{text} (give a path in a folder you can write)"
    if "not a database" in lowered or "malformed" in lowered:
        return f"{text} (the file is not an intact SQLite database: move it aside and start a new store)"
    if "locked" in lowered:
        return f"{text} (another process holds a lock on the database)"
    if "connection" in lowered or "could not" in lowered or "refused" in lowered:
        return f"{text} (is the database server running and the URL right?)"
    return text
