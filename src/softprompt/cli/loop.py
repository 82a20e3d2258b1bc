"""``softprompt loop``: retrain, shadow and promote a served task as its feedback comes in (a
process beside the server; see :mod:`softprompt.lifecycle.loop`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from softprompt.errors import SoftpromptError

KEY_VARIABLES = ("SOFTPROMPT_ADMIN_KEY", "SOFTPROMPT_API_KEY")


def _loop(args: argparse.Namespace) -> None:
    from softprompt.config.recipe import parse_overrides
    from softprompt.lifecycle.loop import Loop, LoopSettings

    for flag, value in (("--every", args.every), ("--shadow-requests", args.shadow_requests)):
        if value < 1:
            raise SoftpromptError(f"{flag}: expected a number > 0, got {value}")
    if args.rounds is not None and args.rounds < 1:
        raise SoftpromptError(f"--rounds: expected a number > 0, got {args.rounds}")
    if "://" not in args.db and not Path(args.db).is_file():
        raise SoftpromptError(f"--db {args.db}: no such file (give the store of `softprompt serve --capture`)")
    key = args.key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
    settings = LoopSettings(
        server=args.server,
        db=args.db,
        task=args.task,
        every=args.every,
        shadow_requests=args.shadow_requests,
        key=key,
        workdir=Path(args.workdir) if args.workdir else None,
        rounds=args.rounds,
        poll_s=args.poll,
        margin=args.margin,
        retrain=parse_overrides(args.overrides) if args.overrides else {},
    )
    state = Path(args.state or f"softprompt-loop-{args.task}.json")
    args.resume_hint = f"the loop's place is kept in {state}; run the same command to resume the round"
    loop = Loop(settings, state)
    try:
        loop.run()
    finally:
        loop.close()


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``loop``."""
    loop = commands.add_parser(
        "loop",
        help="keep a served task learning: retrain on new feedback, shadow the result, promote it if it beats live",
    )
    loop.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8000")
    loop.add_argument("--db", required=True, help="the server's capture store (serve --capture)")
    loop.add_argument("--task", required=True)
    loop.add_argument("--every", type=int, default=250, help="new feedback rows that start a round (default: 250)")
    loop.add_argument(
        "--shadow-requests",
        type=int,
        default=100,
        help="requests both versions answered, with feedback, before deciding (default: 100)",
    )
    loop.add_argument("--key", help="the admin key (default: $SOFTPROMPT_ADMIN_KEY, else $SOFTPROMPT_API_KEY)")
    loop.add_argument("--workdir", help="where new versions are written (default: DIR/.versions/TASK/loop)")
    loop.add_argument("--state", help="the loop's state file (default: softprompt-loop-TASK.json)")
    loop.add_argument("--rounds", type=int, help="stop after this many rounds (default: run until stopped)")
    loop.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the store and server")
    loop.add_argument("--margin", type=float, default=0.0, help="how much the new version must beat live by")
    loop.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings for each retrain (train.max_steps=...)"
    )
    loop.set_defaults(run=_loop)
