"""The many-task commands: ``continual``, ``multitask``, ``serve`` and ``similarity``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from softprompt.cli.args import compute_flags, training_command, use_threads
from softprompt.errors import SoftpromptError
from softprompt.serving.settings import ServeSettings, setting_flags

if TYPE_CHECKING:
    from softprompt.core.prompt_caches import PromptCacheSettings


def _continual(args: argparse.Namespace) -> None:
    from softprompt.config.tasklist import task_configs
    from softprompt.continual.config import load_continual_config

    config = load_continual_config(args.config, args.overrides)
    task_configs(config)  # every task's mistake named before torch is imported
    from softprompt.continual.report import markdown
    from softprompt.continual.runner import RESULTS, run_continual

    args.resume_hint = "finished stages are kept; continue with the same command and --resume"
    results = run_continual(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print("\n" + markdown(results))
    print(f"wrote {Path(config.out) / RESULTS}.md, .json and .png")


def _multitask(args: argparse.Namespace) -> None:
    from softprompt.config.tasklist import task_configs
    from softprompt.multitask import TASKS_DIR, load_multitask_config

    config = load_multitask_config(args.config, args.overrides)
    task_configs(config)  # every task's mistake named before torch is imported
    from softprompt.multitask import run_multitask

    args.resume_hint = "the last checkpoint is intact; continue with the same command and --resume"
    summary = run_multitask(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    for name, metrics in summary["tasks"].items():
        shown = ", ".join(f"{split} {100 * value:.1f}%" for split, value in metrics.items())
        print(f"{name}: {shown}")
    print(f"best step {summary['best_step']}; artifacts in {Path(config.out) / TASKS_DIR}/<task>")


def _similarity(args: argparse.Namespace) -> None:
    from softprompt.methods.transfer import rank_sources

    rows = rank_sources(args.target, args.sources)
    if args.json:
        print(json.dumps({"target": args.target, "ranking": rows}, ensure_ascii=False, indent=2))
        return
    print(f"source prompts ranked for {args.target} (cosine of mean soft tokens; SPoT):")
    for rank, row in enumerate(rows, start=1):
        print(
            f"{rank:>2}. {row['source']}  mean cosine {row['mean_cosine']:+.4f}  "
            f"token max-cosine {row['token_max_cosine']:+.4f}  ({row['tokens']} tokens)"
        )


def prompt_cache_settings(args: argparse.Namespace) -> PromptCacheSettings:
    """The serve flags' prompt-cache settings; a folder that cannot be written is refused here,
    before the backbone loads."""
    from softprompt.core.prompt_cache_folder import check_writable
    from softprompt.core.prompt_caches import PromptCacheSettings

    folder = args.prompt_cache_dir
    if folder is not None:
        folder = os.path.abspath(folder)  # Ray's replicas run in folders of their own
        check_writable(Path(folder))
    return PromptCacheSettings(args.prompt_cache_mb, args.prompt_cache_dtype, folder, args.prompt_cache_dir_mb)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from softprompt.backbones import load_backbone
    from softprompt.serving.app import Service, create_app

    api_key = _key(args.api_key, "--api-key", API_KEY_VARIABLE)
    admin_key = _key(args.admin_key, "--admin-key", ADMIN_KEY_VARIABLE)
    if admin_key is not None and admin_key == api_key:
        raise SoftpromptError("--admin-key is the same as --api-key: give the admin a key of its own")
    limits = {name: getattr(args, name) for _, name, _, _ in setting_flags()}
    settings = ServeSettings(
        api_key=api_key,
        admin_key=admin_key,
        artifacts_roots=tuple(args.artifacts_root),
        capture=args.capture,
        capture_rate=args.capture_rate,
        capture_max_rows=args.capture_max_rows,
        **limits,
    )  # checked before the backbone loads
    caches = prompt_cache_settings(args)
    if args.ray:
        _serve_on_ray(args, settings, caches)
        return
    capture = open_capture(settings)  # a store that cannot open is one line before the backbone loads
    use_threads(args)
    backbone = load_backbone(args.backbone, args.device, args.precision)
    backbone.require_token_prediction("serve")
    service = Service(backbone, args.artifacts, caches)
    print(f"serving {len(service.tasks.describe())} task(s) on {backbone.name} at http://{args.host}:{args.port}")
    if capture is not None:
        print(f"capturing {100 * settings.capture_rate:g}% of answered requests in {settings.capture}")
    uvicorn.run(create_app(service, settings, capture), host=args.host, port=args.port, log_level="warning")


def _serve_on_ray(args: argparse.Namespace, settings: ServeSettings, caches: PromptCacheSettings) -> None:
    """``serve --ray``: the same server as replicas of a Ray Serve application (docs/serving-and-many-tasks.md)."""
    import dataclasses

    try:
        from softprompt.serving.ray import ReplicaConfig, check_replicas, serve_until_stopped
    except ImportError:
        raise SoftpromptError("--ray needs Ray Serve: pip install 'ray[serve]' (or softprompt's [ray] extra)") from None
    check_replicas(settings, args.replicas)
    if settings.capture is not None:  # a store that cannot open is one line before Ray starts
        from softprompt.lifecycle.store import Store

        Store(settings.capture).close()
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("shared_folder", "replicas")}
    config = ReplicaConfig(
        artifacts=os.path.abspath(args.artifacts),
        backbone=args.backbone,
        device=args.device,
        precision=args.precision,
        threads=args.threads or 1,
        prompt_caches=dataclasses.asdict(caches),
        settings=values,
    )
    serve_until_stopped(config, args.replicas, args.host, args.port, args.ray_address)


def open_capture(settings: ServeSettings):
    """The capture store of ``serve --capture`` (None without it), opened and checked."""
    if settings.capture is None:
        return None
    from softprompt.lifecycle.capture import Capture
    from softprompt.lifecycle.store import Store

    return Capture(Store(settings.capture), settings.capture_rate, settings.capture_max_rows)


API_KEY_VARIABLE = "SOFTPROMPT_API_KEY"
ADMIN_KEY_VARIABLE = "SOFTPROMPT_ADMIN_KEY"


def _key(given: str | None, flag: str, variable: str) -> str | None:
    """A key from its flag, else from its environment variable (kept out of `ps`); None: unset."""
    key = given if given is not None else os.environ.get(variable)
    if key is not None and not key.strip():
        where = flag if given is not None else f"${variable}"
        raise SoftpromptError(f"{where} is empty: give a key, or leave it unset")
    return key


def _port(value: str) -> int:
    """A TCP port number, refused by argparse in one line when out of range."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value!r}")
    return int(value)


def add_capture_flags(serve: argparse.ArgumentParser) -> None:
    """``--capture`` and its settings (docs/keep-learning.md)."""
    serve.add_argument(
        "--capture",
        metavar="DB",
        help="store every answered request, and take feedback on it at POST /v1/feedback: an SQLite file "
        "path, or an SQLAlchemy URL such as postgresql+psycopg://user@host/db",
    )
    serve.add_argument(
        "--capture-rate", type=float, default=1.0, metavar="SHARE", help="the share of requests captured (default: 1)"
    )
    serve.add_argument(
        "--capture-max-rows", type=int, metavar="N", help="keep at most N captured requests, dropping the oldest"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``continual``, ``multitask``, ``serve`` and ``similarity``."""
    training_command(
        commands,
        "continual",
        "learn a sequence of tasks one after another (accuracy matrix)",
        _continual,
        resume="skip finished stages, resume the current one",
    )

    serve = commands.add_parser(
        "serve", help="serve a folder of prompt artifacts over HTTP (one backbone, mixed batches)"
    )
    serve.add_argument("--backbone", default="smollm2-135m")
    serve.add_argument(
        "--artifacts",
        "--prompts",  # the flag's first name; kept so that existing commands keep working
        dest="artifacts",
        required=True,
        help="a folder whose sub-folders are trained artifacts (task = the sub-folder's name)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    compute_flags(serve)
    serve.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, which keeps the key out of `ps`; "
        "unset: an open server)",
    )
    serve.add_argument(
        "--admin-key",
        help=f"require this key instead for the routes that change the served tasks (add, remove, reload, "
        f"candidates, promote, rollback) (default: ${ADMIN_KEY_VARIABLE}; unset: they take --api-key)",
    )
    serve.add_argument(
        "--artifacts-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder besides the served one whose artifacts POST /v1/tasks/... may name (repeatable); "
        "any other path is refused",
    )
    for flag, name, default, extra in setting_flags():  # the limits: docs/serving-and-many-tasks.md
        extra = {"metavar": "N", **extra, "help": extra["help"] + " (default: %(default)s)"}
        serve.add_argument(flag, dest=name, type=type(default), default=default, **extra)
    add_capture_flags(serve)
    serve.add_argument(
        "--prompt-cache-mb",
        type=float,
        default=768.0,
        help="memory for the classifiers' prompt key/value caches; the least recently used are "
        "recomputed on demand (about 1 MB per task on smollm2-135m)",
    )
    serve.add_argument(
        "--prompt-cache-dtype",
        choices=["auto", "float16"],
        default="auto",
        help="keep prompt caches in this dtype (auto: the backbone's); float16 holds twice as many "
        "caches of a float32 backbone in the same memory (docs/serving-and-many-tasks.md measures the change)",
    )
    serve.add_argument(
        "--prompt-cache-dir",
        metavar="DIR",
        help="also keep computed prompt caches in this folder and read them back when memory misses "
        "(across evictions and restarts; may be shared by servers of one backbone)",
    )
    serve.add_argument(
        "--prompt-cache-dir-mb",
        type=float,
        default=4096.0,
        help="disk for --prompt-cache-dir; the least recently used files are removed past it (default: %(default)s)",
    )
    ray = serve.add_argument_group("Ray Serve (docs/serving-and-many-tasks.md)")
    ray.add_argument("--ray", action="store_true", help="serve as replicas of a Ray Serve application")
    ray.add_argument("--replicas", type=int, default=1, help="with --ray: replicas, each with its own backbone")
    ray.add_argument("--ray-address", help="with --ray: join this Ray cluster (default: start a local one)")
    serve.set_defaults(run=_serve)

    training_command(commands, "multitask", "train several tasks' prompts at once in mixed batches", _multitask)

    sim = commands.add_parser("similarity", help="rank source prompts for a target task by prompt similarity (SPoT)")
    sim.add_argument("target", help="artifact of a prompt trained (briefly) on the target task")
    sim.add_argument("sources", nargs="+", help="artifacts of candidate source prompts")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(run=_similarity)
