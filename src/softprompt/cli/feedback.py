"""``softprompt feedback export`` and ``softprompt feedback stats``: what a capture store holds,
as training rows and as figures per task and version (no torch: they answer in a second)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from softprompt.atomic import atomic_write_text
from softprompt.errors import SoftpromptError


def _open(target: str):
    from softprompt.lifecycle.store import Store

    if "://" not in target and not Path(target).is_file():
        raise SoftpromptError(f"--db {target}: no such file (give the store of `softprompt serve --capture`)")
    return Store(target, create=False)


def _export(args: argparse.Namespace) -> None:
    from softprompt.lifecycle.feedback import training_rows

    store = _open(args.db)
    try:
        given = list(store.latest_feedback(args.task))
    finally:
        store.close()
    if not given:
        raise SoftpromptError(f"--task {args.task}: no feedback for this task in {args.db} (see `feedback stats`)")
    rows = list(training_rows(given))
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(Path(args.out), text)
    print(
        f"wrote {len(rows)} training rows to {args.out} (from {len(given)} feedback in force; "
        f"{len(given) - len(rows)} without a right answer to train on)"
    )


def _stats(args: argparse.Namespace) -> None:
    from softprompt.lifecycle.feedback import figures

    store = _open(args.db)
    try:
        table = figures(store.request_counts(), store.latest_feedback(args.task))
    finally:
        store.close()
    if args.task is not None:
        table = [row for row in table if row["task"] == args.task]
    if args.json:
        print(json.dumps(table, indent=2))
        return
    if not table:
        print(f"{args.db} holds no requests or feedback" + (f" for task {args.task}" if args.task else ""))
        return
    print(f"{'task':<24} {'version':<12} {'requests':>9} {'feedback':>9} {'share':>7} {'accuracy':>9}")
    for row in table:
        share = "-" if row["feedback_share"] is None else f"{100 * row['feedback_share']:.1f}%"
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        print(
            f"{row['task'] or '(plain)':<24} {row['version'][:12]:<12} {row['requests']:>9} "
            f"{row['feedback']:>9} {share:>7} {accuracy:>9}"
        )


def _monitor(args: argparse.Namespace) -> None:
    from softprompt.lifecycle.monitor import plot_timeline, references, timeline

    if args.periods < 1:
        raise SoftpromptError(f"--periods: expected a number > 0, got {args.periods}")
    store = _open(args.db)
    try:
        data = timeline(store, args.task, args.periods, references(args.artifacts))
    finally:
        store.close()
    if not data["versions"]:
        raise SoftpromptError(f"--task {args.task}: no answers or feedback for this task in {args.db}")
    plot_timeline(data, args.task, Path(args.out), args.threshold)
    if args.json:
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(data, indent=2))
    drifts = [p["drift"] for s in data["versions"].values() for p in s if p["drift"] is not None]
    worst = (
        f"; highest drift {max(drifts):.3f}"
        if drifts
        else (" (no drift: give --artifacts DIR)" if not args.artifacts else "")
    )
    print(f"wrote {args.out}: {len(data['versions'])} version(s) over {args.periods} periods{worst}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``feedback export``, ``feedback stats`` and ``monitor``."""
    monitor = commands.add_parser(
        "monitor", help="plot a task's volume, confidence, feedback accuracy and drift over time"
    )
    monitor.add_argument("--db", required=True, help="the capture store (serve --capture)")
    monitor.add_argument("--task", required=True)
    monitor.add_argument("--out", required=True, help="a .png file")
    monitor.add_argument("--artifacts", help="the served folder: its artifacts' references give the drift panel")
    monitor.add_argument("--periods", type=int, default=40, help="time periods on the x axis (default: 40)")
    monitor.add_argument("--threshold", type=float, default=0.25, help="the drift alert line (default: 0.25)")
    monitor.add_argument("--json", action="store_true", help="also write the figures beside the plot (.json)")
    monitor.set_defaults(run=_monitor)
    feedback = commands.add_parser("feedback", help="the feedback a capture store holds (serve --capture DB)")
    actions = feedback.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="the feedback of a task as training rows (JSON lines) for `train`")
    export.add_argument("--db", required=True, help="the store: a file path (SQLite) or an SQLAlchemy URL")
    export.add_argument("--task", required=True)
    export.add_argument("--out", required=True, help="a .jsonl file: {text, label} or {text, target} rows")
    export.set_defaults(run=_export)
    stats = actions.add_parser("stats", help="volume, feedback share and accuracy per task and version")
    stats.add_argument("--db", required=True, help="the store: a file path (SQLite) or an SQLAlchemy URL")
    stats.add_argument("--task", help="only this task")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=_stats)
