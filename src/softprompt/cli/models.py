"""Commands that apply a trained artifact: ``eval``, ``predict``, ``tag``, ``inspect`` and ``export``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.cli.args import compute_flags, input_texts, use_threads
from softprompt.errors import SoftpromptError


def _check_artifact(name: str) -> None:
    """Refuse an artifact that is not there (a missing folder) before torch is imported; a Hub id
    is fetched when the model loads."""
    from softprompt.artifact import artifact_source

    artifact_source(name)


def _load_for(command: str, args: argparse.Namespace):
    """The artifact's model and task, refusing an artifact that another command applies."""
    from softprompt.tasks import get_task
    from softprompt.tasks.loading import artifact_task, load_model

    model, meta = load_model(args.artifact, None, args.device, args.precision)
    task = get_task(artifact_task(meta))
    if task.predict_command != command:
        raise SoftpromptError(f"{args.artifact} is a {task.name} model; use `softprompt {task.predict_command}` for it")
    return model, task


def _input_texts(args: argparse.Namespace) -> list[str]:
    texts = input_texts(args.texts)
    if not texts:
        raise SoftpromptError("no input: give texts as arguments or one per line on stdin")
    return texts


def generate_from_artifact(artifact: str, texts: list[str], overrides: list[str]) -> None:
    """``softprompt generate ARTIFACT text...``: one JSON line per input, decoded with the
    artifact's settings and ``key=value`` overrides (``num_beams=4``, ``device=cuda``...)."""
    import dataclasses

    from softprompt.config import ComputeSettings, GenConfig
    from softprompt.config.recipe import build, parse_overrides

    given = parse_overrides([item.removeprefix("gen.") for item in overrides])
    compute = build(ComputeSettings, {k: given.pop(k) for k in list(given) if k in ("threads", "device", "precision")})
    batch_size = int(str(given.pop("batch_size", 32)))
    args = argparse.Namespace(
        command="generate", artifact=artifact, texts=texts, batch_size=batch_size, **dataclasses.asdict(compute)
    )
    _check_artifact(artifact)
    use_threads(args)
    model, task = _load_for("generate", args)
    model.decoding = build(GenConfig, {**dataclasses.asdict(model.decoding), **given}, prefix="gen.")
    for result in task.predict(model, _input_texts(args), batch_size):
        print(json.dumps(result, ensure_ascii=False), flush=True)


def _apply(args: argparse.Namespace) -> None:
    """``predict`` and ``tag``: one JSON line per input text."""
    if args.batch_size < 1:
        raise SoftpromptError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_artifact(args.artifact)
    use_threads(args)
    model, task = _load_for(args.command, args)
    results = task.predict(model, _input_texts(args), args.batch_size)
    unknown = sum(result.pop("unknown_words", 0) for result in results)
    if unknown:
        print(f"note: {unknown} word(s) hold characters the tokenizer does not know ([UNK])", file=sys.stderr)
    for result in results:
        print(json.dumps(result, ensure_ascii=False), flush=True)


def _eval(args: argparse.Namespace) -> None:
    if args.data and args.split:
        raise SoftpromptError(
            "--split chooses a split of the artifact's own data or of --dataset; a --data file is scored whole"
        )
    if args.batch_size < 1:
        raise SoftpromptError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_examples is not None and args.max_examples < 1:
        raise SoftpromptError(f"--max-examples must be >= 1, got {args.max_examples}")
    _check_artifact(args.artifact)
    from softprompt.data.records import sample
    from softprompt.tasks import get_task
    from softprompt.tasks.base import evaluate
    from softprompt.tasks.loading import artifact_task, load_model

    use_threads(args)
    model, meta = load_model(args.artifact, None, args.device, args.precision)
    task = get_task(artifact_task(meta))
    split = args.split or "test"
    if args.data:
        fields = {"text_field": args.text_field, "label_field": args.label_field}
        examples, where = task.read_eval_data(args.data, meta, model, fields), args.data
    elif args.dataset:
        examples, where = task.builtin_split(args.dataset, None, split, model), f"{args.dataset} ({split})"
    else:  # what the user meant: the data the artifact was trained on
        examples, where = task.own_split(meta, split, model)
    if args.max_examples is not None and args.max_examples < len(examples):
        # the seeded sample train's data.max_eval takes, with the artifact's own seed
        where += f", a sample of {args.max_examples} of {len(examples)}"
        examples = sample(examples, args.max_examples, seed=meta["config"].get("seed", 0))
    metrics = evaluate(model, examples, args.batch_size, where=where, progress=None if args.quiet else "eval")
    report = None if args.json else task.report(metrics, where)
    print(report if report is not None else json.dumps({"data": where, **metrics}, ensure_ascii=False))


def _push(args: argparse.Namespace) -> None:
    from softprompt.artifact.push import push_artifact

    print(push_artifact(args.artifact, args.repo_id, args.private))


def _card(directory: Path) -> str:
    """The artifact's model card, made from its record now (an artifact older than cards has none
    on disk, and a card always shows the record as it stands)."""
    from softprompt.artifact import peft_loadable, read_artifact
    from softprompt.artifact.card import model_card

    files = read_artifact(directory)
    name = str(directory) if files.path != directory else directory.resolve().name  # a Hub id names itself
    return model_card(files.meta, peft_loadable(files.path), name)


def _inspect(args: argparse.Namespace) -> None:
    from softprompt.artifact import locate_artifact, size_bytes
    from softprompt.cli.inspection import compare_prompts, nearest_tokens
    from softprompt.tasks import get_task
    from softprompt.tasks.loading import artifact_task, load_model

    if args.compare:
        out = Path(args.out or "prompt-similarity.png")
        summary = compare_prompts(args.compare[0], args.compare[1], out)
        print(json.dumps(summary, ensure_ascii=False, indent=None if not args.json else 2))
        return
    if not args.artifact:
        raise SoftpromptError("give an artifact directory, or --compare A B")
    if args.card:
        print(_card(Path(args.artifact)), end="")
        return
    _check_artifact(args.artifact)
    use_threads(args)
    model, meta = load_model(args.artifact, None, args.device, args.precision)
    backbone = meta["backbone"]
    task = get_task(artifact_task(meta))
    summary = {
        "artifact": args.artifact,
        "backbone": backbone["name"],
        "fingerprint": backbone["fingerprint"],
        "task": task.name,
        "method": meta["method"],
        **task.describe(meta),
        "trainable_parameters": meta["trainable_parameters"],
        "share_of_backbone": f"{100 * meta['trainable_parameters'] / backbone['parameters']:.4f}%",
        "size_kb": round(size_bytes(locate_artifact(args.artifact)) / 1024, 1),
        "metrics": dict(meta.get("metrics", {})),
    }
    if args.json:
        print(json.dumps({**summary, "soft_tokens": nearest_tokens(model, args.top)}, ensure_ascii=False, indent=2))
        return
    for key, value in summary.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        print(f"{key}: {shown}")
    for row in nearest_tokens(model, args.top):
        near = "  ".join(f"{n['token']!r} {n['cosine']:.2f}" for n in row["nearest"])
        print(f"soft[{row['index']:>3}] norm {row['norm']:.3f}  nearest: {near}")


def _export(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.is_dir():
        raise SoftpromptError(f"--out {out} is a folder; give the .safetensors file to write")
    if out.exists() and not args.overwrite:
        raise SoftpromptError(f"{out} already exists; pass --overwrite to replace it")
    _check_artifact(args.artifact)
    from softprompt.serving.vllm import export_prompt_embeds
    from softprompt.tasks.loading import load_model

    use_threads(args)
    model, meta = load_model(args.artifact, None, args.device, args.precision)
    path = export_prompt_embeds(model, meta, args.out)
    count = model.method.num_soft_tokens
    print(
        f"wrote {path}: {count} soft tokens x {model.backbone.hidden_size} (template {model.describe()['template']!r})"
    )
    print(
        "the soft tokens alone, for building embeddings yourself; vLLM wants each prompt's whole "
        "embeddings: softprompt.serving.vllm.Client sends them (docs/serving-and-many-tasks.md)"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``eval``, ``predict``, ``tag``, ``inspect``, ``push`` and ``export``."""
    ev = commands.add_parser("eval", help="evaluate an artifact")
    ev.add_argument("artifact")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="built-in dataset name")
    source.add_argument("--data", help="a .jsonl/.csv/.tsv file (a CoNLL file for a NER model)")
    ev.add_argument("--split", choices=["train", "dev", "test"], help="default: test (of the artifact's own data)")
    ev.add_argument("--text-field")
    ev.add_argument("--label-field")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument(
        "--max-examples",
        type=int,
        metavar="N",
        help="score at most N examples: the seeded sample train's data.max_eval=N takes (quick checks)",
    )
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    compute_flags(ev)
    ev.set_defaults(run=_eval)

    for name, help_text in (
        ("predict", "label texts (arguments or stdin) with a classifier, one JSON line each"),
        ("tag", "tag entities in texts (arguments or stdin) with a NER artifact, one JSON line each"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("artifact")
        command.add_argument("texts", nargs="*")
        command.add_argument("--batch-size", type=int, default=32)
        compute_flags(command)
        command.set_defaults(run=_apply)

    push = commands.add_parser("push", help="publish an artifact on the Hugging Face Hub (token: HF_TOKEN)")
    push.add_argument("artifact")
    push.add_argument("repo_id", help="user/name of the model repository (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.set_defaults(run=_push)

    export = commands.add_parser(
        "export", help="write an artifact's soft prompt for another engine (vLLM prompt embeddings)"
    )
    export.add_argument("artifact")
    export.add_argument("--format", choices=["prompt-embeds"], default="prompt-embeds")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    export.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    compute_flags(export)
    export.set_defaults(run=_export)

    inspect = commands.add_parser(
        "inspect", help="show an artifact and its soft tokens' nearest words; --compare A B: a similarity heat map"
    )
    inspect.add_argument("artifact", nargs="?")
    inspect.add_argument("--top", type=int, default=5)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--card", action="store_true", help="print the artifact's model card (its README.md)")
    inspect.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two artifacts' soft prompts, token by token")
    inspect.add_argument("--out", help="--compare: the PNG to write (default: prompt-similarity.png)")
    compute_flags(inspect)
    inspect.set_defaults(run=_inspect)
