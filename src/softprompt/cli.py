"""The ``softprompt`` command: ls, train, compare, eval, predict, tag, inspect, detox, generate.

User mistakes surface as ``error: <one line>`` with exit status 2 and no traceback; Ctrl-C exits
with 130 and leaves the last checkpoint intact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.cli_args import training_command
from softprompt.detox.cli import add_commands as add_detox_commands
from softprompt.errors import SoftpromptError, TrainingDiverged
from softprompt.tasks_cli import add_commands as add_task_commands


def _ls(args: argparse.Namespace) -> None:
    from softprompt.backbones import BACKBONES
    from softprompt.datasets import builtin_specs
    from softprompt.methods import METHODS

    if args.what == "backbones":
        rows = [(s.name, s.kind, s.description) for s in BACKBONES.values()]
        rows.append(("<path>", "auto", "any local Hugging Face model directory or .gguf file"))
    elif args.what == "datasets":
        rows = [(s.name, "/".join(map(str, s.verbalizer)), s.description) for s in builtin_specs().values()]
    else:
        rows = [
            (s.name, f"lr {s.default_lr:g}" if s.trains else "no training", s.description, _options_line(s))
            for s in METHODS.values()
        ]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]}")
        if len(row) > 3 and row[3]:
            print(f"{'':<{width[0] + width[1] + 4}}{row[3]}")


def _options_line(spec) -> str:
    """``options: lora.r=8 lora.alpha=16 ...`` for a method with a config section."""
    if spec.options is None:
        return ""
    import dataclasses

    return "options: " + " ".join(f"{spec.name}.{f.name}={f.default}" for f in dataclasses.fields(spec.options))


def _train(args: argparse.Namespace) -> None:
    from softprompt.config import load_config
    from softprompt.distributed import processes
    from softprompt.train import CONFIG_FILE, train

    config = load_config(args.config, args.overrides)
    if args.resume and (Path(config.out) / CONFIG_FILE).is_file():
        saved = json.loads((Path(config.out) / CONFIG_FILE).read_text(encoding="utf-8"))
        config = load_config(args.config, args.overrides, base=saved)
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if not processes().main:  # under `accelerate launch`, the main process reports
        return
    for note in result.notes:
        print(f"note: {note}")
    metrics = result.metrics
    share = 100 * result.trainable_parameters / result.backbone_parameters
    if config.task == "ner":
        _print_ner_summary(metrics, result.best_step)
    else:
        _print_classification_summary(metrics, result.best_step, result.trainable_parameters, config.method)
    print(
        f"artifact: {result.out} ({result.artifact_bytes / 1024:.1f} KB; {result.trainable_parameters:,} "
        f"trainable parameters = {share:.4f}% of {result.backbone_parameters / 1e6:.1f}M)"
    )
    minutes, seconds = divmod(round(result.seconds), 60)
    print(f"time: {minutes} min {seconds} s")


def _print_classification_summary(metrics: dict, best_step: int, trained: int, method: str) -> None:
    if "zero_shot_test" in metrics:
        print(
            f"zero-shot test accuracy: {100 * metrics['zero_shot_test']['accuracy']:.1f}% "
            f"(same template without soft tokens, n={metrics['zero_shot_test']['n']})"
        )
    if "test" in metrics:
        print(
            f"{'tuned' if trained else 'method=' + method} test accuracy: "
            f"{100 * metrics['test']['accuracy']:.1f}% (n={metrics['test']['n']}; best dev "
            f"{100 * metrics['dev']['accuracy']:.1f}% at step {best_step})"
        )
    else:
        print(f"dev accuracy: {100 * metrics['dev']['accuracy']:.1f}% (no test split)")


def _print_ner_summary(metrics: dict, best_step: int) -> None:
    dev = metrics["dev"]
    print(f"best dev entity F1: {100 * dev['f1']:.1f} at step {best_step} (n={dev['n']} sentences)")
    if "test" in metrics:
        test = metrics["test"]
        print(
            f"test entity F1: {100 * test['f1']:.1f} (precision {100 * test['precision']:.1f}, "
            f"recall {100 * test['recall']:.1f}; n={test['n']} sentences)"
        )


def _compare(args: argparse.Namespace) -> None:
    from softprompt.compare import REPORT, compare, markdown

    rows, out = compare(args.config, args.overrides)
    context = json.loads((out / f"{REPORT}.json").read_text(encoding="utf-8"))["context"]
    print("\n" + markdown(rows, context))
    print(f"wrote {out / REPORT}.md, .json and .png")


def _load(artifact: str):
    from softprompt.assemble import load_classifier

    return load_classifier(artifact)


def _eval(args: argparse.Namespace) -> None:
    from softprompt.assemble import DEFAULT_DATASET, load_model
    from softprompt.data import read_examples
    from softprompt.datasets import load_builtin
    from softprompt.evaluate import evaluate

    model, meta = load_model(args.artifact)
    if meta.get("task") == "ner":
        _eval_ner(model, args)
        return
    if args.data:
        data_meta = meta.get("data", {})
        text_field = args.text_field or data_meta.get("text_field", "text")
        label_field = args.label_field or data_meta.get("label_field", "label")
        dataset = read_examples(args.data, text_field, label_field, fields=model.task.template.fields)
        examples, where = dataset.examples, args.data
    else:
        recorded = meta.get("data", {})
        name = args.dataset or recorded.get("dataset") or DEFAULT_DATASET
        path = recorded.get("path") if name == recorded.get("dataset") else None
        examples, where = load_builtin(name, path)[args.split], f"{name} ({args.split})"
    model.task.template.check_fields(set(examples[0].fields), where)
    metrics = evaluate(model, examples, args.batch_size, where=where, progress=None if args.quiet else "eval")
    print(json.dumps({"data": where, **metrics}, ensure_ascii=False))


def _eval_ner(model, args: argparse.Namespace) -> None:
    from softprompt.conll import read_conll
    from softprompt.evaluate import evaluate_tagger
    from softprompt.report import ner_report

    if not args.data:
        raise SoftpromptError("a tagger is evaluated on a CoNLL file: add --data PATH")
    sentences = read_conll(args.data)
    metrics = evaluate_tagger(model, sentences, args.batch_size, None, args.data, None if args.quiet else "eval")
    if args.json:
        print(json.dumps({"data": args.data, **metrics}, ensure_ascii=False))
    else:
        print(ner_report(metrics, args.data))


def _tag(args: argparse.Namespace) -> None:
    from softprompt.assemble import load_model
    from softprompt.conll import Sentence
    from softprompt.tasks.ner import entities, split_words

    model, meta = load_model(args.artifact)
    if meta.get("task") != "ner":
        raise SoftpromptError(f"{args.artifact} is a {meta.get('task')} model; use `softprompt predict` for it")
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise SoftpromptError("no input: give texts as arguments or one per line on stdin")
    spans = [split_words(text) for text in texts]
    sentences = [Sentence([word for word, _, _ in words], []) for words in spans]
    unknown = sum(model.task.word_pieces(s.words)[1] for s in sentences if s.words)
    if unknown:
        print(f"note: {unknown} word(s) hold characters the tokenizer does not know ([UNK])", file=sys.stderr)
    predicted = model.predict([s for s in sentences if s.words], args.batch_size)
    tags = iter(predicted)
    for text, words, sentence in zip(texts, spans, sentences, strict=True):
        found = entities(text, words, next(tags)) if sentence.words else []
        print(json.dumps({"text": text, "entities": found}, ensure_ascii=False), flush=True)


def _predict(args: argparse.Namespace) -> None:
    from softprompt.data import Example
    from softprompt.evaluate import label_probabilities

    model, _ = _load(args.artifact)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise SoftpromptError("no input: give texts as arguments or one per line on stdin")
    extra = [f for f in model.task.template.fields if f != "text"]
    if extra:
        raise SoftpromptError(f"this prompt needs fields {extra}; use `softprompt eval --data FILE`")
    probabilities = label_probabilities(model, [Example({"text": t}) for t in texts], args.batch_size)
    labels = model.task.labels
    for text, row in zip(texts, probabilities.tolist(), strict=True):
        best = max(range(len(labels)), key=row.__getitem__)
        scores = {label: round(p, 6) for label, p in zip(labels, row, strict=True)}
        print(json.dumps({"text": text, "label": labels[best], "scores": scores}, ensure_ascii=False), flush=True)


def _inspect(args: argparse.Namespace) -> None:
    from softprompt.artifact import size_bytes
    from softprompt.assemble import load_model
    from softprompt.inspection import compare_prompts, nearest_tokens

    if args.compare:
        out = Path(args.out or "prompt-similarity.png")
        summary = compare_prompts(args.compare[0], args.compare[1], out)
        print(json.dumps(summary, ensure_ascii=False, indent=None if not args.json else 2))
        return
    if not args.artifact:
        raise SoftpromptError("give an artifact directory, or --compare A B")
    model, meta = load_model(args.artifact)
    backbone = meta["backbone"]
    task = (
        {"tags": meta["tags"]}
        if meta.get("task") == "ner"
        else {"template": meta["template"], "verbalizer": meta["verbalizer"]}
    )
    summary = {
        "artifact": args.artifact,
        "backbone": backbone["name"],
        "fingerprint": backbone["fingerprint"],
        "task": meta.get("task", "classification"),
        "method": meta["method"],
        **task,
        "trainable_parameters": meta["trainable_parameters"],
        "share_of_backbone": f"{100 * meta['trainable_parameters'] / backbone['parameters']:.4f}%",
        "size_kb": round(size_bytes(Path(args.artifact)) / 1024, 1),
        "metrics": {k: v for k, v in meta.get("metrics", {}).items()},
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list backbones, datasets or methods")
    ls.add_argument("what", choices=["backbones", "datasets", "methods"])
    ls.set_defaults(run=_ls)

    training_command(commands, "train", "train a prompt (key=value overrides, e.g. train.lr=3e-3)", _train)

    comp = commands.add_parser(
        "compare",
        help="train several methods on the same data and budget, with baselines "
        "(methods=a,b,... lrs=lora:1e-3,... fewshot=K, then key=value overrides)",
    )
    comp.add_argument("--config", help="YAML recipe shared by all methods")
    comp.add_argument("overrides", nargs="*", metavar="key=value")
    comp.set_defaults(run=_compare)

    ev = commands.add_parser("eval", help="evaluate an artifact")
    ev.add_argument("artifact")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="built-in dataset name")
    source.add_argument("--data", help="a .jsonl/.csv/.tsv file")
    ev.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ev.add_argument("--text-field")
    ev.add_argument("--label-field")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--json", action="store_true", help="NER: print the metrics as one JSON object")
    ev.set_defaults(run=_eval)

    tag = commands.add_parser("tag", help="tag entities in texts (arguments or stdin) with a NER artifact")
    tag.add_argument("artifact")
    tag.add_argument("texts", nargs="*")
    tag.add_argument("--batch-size", type=int, default=32)
    tag.set_defaults(run=_tag)

    predict = commands.add_parser("predict", help="label texts (arguments or stdin), one JSON line each")
    predict.add_argument("artifact")
    predict.add_argument("texts", nargs="*")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.set_defaults(run=_predict)

    inspect = commands.add_parser(
        "inspect", help="show an artifact and its soft tokens' nearest words; --compare A B: a similarity heat map"
    )
    inspect.add_argument("artifact", nargs="?")
    inspect.add_argument("--top", type=int, default=5)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two artifacts' soft prompts, token by token")
    inspect.add_argument("--out", help="--compare: the PNG to write (default: prompt-similarity.png)")
    inspect.set_defaults(run=_inspect)

    add_task_commands(commands)
    add_detox_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``softprompt`` command; returns the exit status."""
    parser = build_parser()
    # key=value overrides may stand between options (`out=x --resume train.lr=1e-3`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        free_text = getattr(args, "free_text", False)  # generate: prompts stand among the overrides
        if not hasattr(args, "overrides") or any(
            item.startswith("-") or ("=" not in item and not free_text) for item in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        args.run(args)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except SoftpromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(
            args, "resume_hint", "the last checkpoint is intact; continue with `softprompt train ... --resume`"
        )
        print(f"\ninterrupted: {hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
