"""Choose a method's learning rate on dev, without looking at test.

    python benchmarks/lr_search.py --method prompt_tuning --lrs 1e-2,3e-2,1e-1 -- \\
        task=generation dataset=paradetox-rewrite data.path=../shared/data/paradetox/paradetox.tsv \\
        precision=bf16 train.max_steps=400 train.eval_every=100

Each rate trains on the train split and is scored on the dev split only (the run's own dev loss,
then the dev metric of its best weights); the test split is never read into the runs, so the
chosen rate can then be reported on test once (``softprompt compare ... lrs=METHOD:RATE``).
Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import softprompt
from softprompt.config import load_config
from softprompt.tasks import get_task

RESULTS = Path(__file__).parent / "results"


def as_records(items: list, target_columns: list[str]) -> list[dict]:
    """Examples or text pairs as the dicts ``softprompt.train`` takes (one column per reference)."""
    records = []
    for item in items:
        record = dict(item.fields)
        targets = getattr(item, "targets", None)
        if targets is None:
            record["label"] = item.label
        else:
            record.update({column: text for column, text in zip(target_columns, targets, strict=False)})
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
    parser.add_argument("--metric", help="dev metric to choose by (a key of the metrics; default: the headline)")
    parser.add_argument("--runs", default="runs/lr-search", help="where the runs' artifacts go")
    parser.add_argument("--out", default=str(RESULTS / "lr_search.json"))
    parser.add_argument("overrides", nargs="*", help="softprompt key=value settings (after --)")
    args = parser.parse_args()
    config = load_config(None, args.overrides)
    task = get_task(config.task)
    splits = task.load_splits(config)
    most = max((len(getattr(item, "targets", ())) for item in splits.train + splits.dev), default=0)
    columns = [f"reference{i + 1}" for i in range(most)]
    settings = [*args.overrides, f"method={args.method}"]
    if columns:
        settings.append(f"data.target_field={','.join(columns)}")
    train_records, dev_records = as_records(splits.train, columns), as_records(splits.dev, columns)
    label = args.metric or task.metric_label
    rows = []
    for lr in (float(value) for value in args.lrs.split(",")):
        started = time.perf_counter()
        out = Path(args.runs) / f"{args.method}-lr{lr:g}"
        run = load_config(None, [*settings, f"train.lr={lr}", f"out={out}"])
        result = softprompt.train(run, train_data=train_records, dev_data=dev_records, overwrite=True, progress=False)
        dev = result.model.evaluate(dev_records, batch_size=run.train.eval_batch_size)
        rows.append({"lr": lr, "dev_loss": result.metrics.get("dev", {}).get("loss"), "dev": dev})
        rows[-1]["dev_metric"] = dev[args.metric] if args.metric else task.headline(dev)
        rows[-1]["minutes"] = (time.perf_counter() - started) / 60
        print(f"lr {lr:g}: dev {label} {rows[-1]['dev_metric']:.4f}, {rows[-1]['minutes']:.1f} min", flush=True)
        Path(args.out).write_text(json.dumps({"method": args.method, "settings": settings, "rows": rows}, indent=1))
    best = max(rows, key=lambda row: row["dev_metric"])
    print(f"\n| lr | dev loss | dev {label} |\n|---|---|---|")
    for row in rows:
        loss = row["dev_loss"]
        print(f"| {row['lr']:g} | {'' if loss is None else f'{loss:.4f}'} | {row['dev_metric']:.4f} |")
    print(f"\nchosen on dev: lr {best['lr']:g}")


if __name__ == "__main__":
    main()
