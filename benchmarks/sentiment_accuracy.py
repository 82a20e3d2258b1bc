"""Quality benchmark: soft prompt vs zero-shot, few-shot and TF-IDF + logistic regression.

All rows use the same fixed test split of the chosen built-in dataset. Prints a Markdown table
and writes JSON to benchmarks/results/.

    python benchmarks/sentiment_accuracy.py [--config configs/sentiment_prompt.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from softprompt.assemble import build_classifier, load_splits, resolve_prompting
from softprompt.backbones import load_backbone
from softprompt.config import load_config
from softprompt.evaluate import evaluate
from softprompt.tasks.classification import demonstrations
from softprompt.train import train

RESULTS = Path(__file__).parent / "results"


def tfidf_baseline(splits, analyzer: str = "word") -> float:
    vectorizer = TfidfVectorizer(
        analyzer=analyzer, ngram_range=(1, 2) if analyzer == "word" else (1, 3), sublinear_tf=True, min_df=1
    )
    x_train = vectorizer.fit_transform([e.text for e in splits.train + splits.dev])
    classifier = LogisticRegression(max_iter=2000, C=4.0).fit(x_train, [e.label for e in splits.train + splits.dev])
    predicted = classifier.predict(vectorizer.transform([e.text for e in splits.test]))
    return float(sum(p == e.label for p, e in zip(predicted, splits.test, strict=True)) / len(splits.test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sentiment_prompt.yaml")
    parser.add_argument("--fewshot", type=int, default=4, help="demonstrations for the few-shot row (0 = skip)")
    parser.add_argument("--tfidf-analyzer", default="word", choices=["word", "char_wb"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, [*args.overrides, "train.zero_shot_baseline=false"])
    if config.threads:
        torch.set_num_threads(config.threads)
    splits = load_splits(config)
    backbone = load_backbone(config.backbone)
    template, verbalizer = resolve_prompting(config)
    rows = []

    started = time.perf_counter()
    accuracy = tfidf_baseline(splits, args.tfidf_analyzer)
    rows.append(
        {
            "method": f"TF-IDF ({args.tfidf_analyzer}) + logistic regression",
            "test_accuracy": accuracy,
            "trainable_parameters": None,
            "seconds": time.perf_counter() - started,
        }
    )
    if backbone.kind == "causal":
        plain = template.without_soft()
        for k in [0] + ([args.fewshot] if args.fewshot else []):
            started = time.perf_counter()
            demos = demonstrations(plain, verbalizer, splits.train, k, config.seed)
            model = build_classifier(
                backbone, "none", plain, verbalizer, config.prompt, config.seed, config.train.max_length, demos
            )
            metrics = evaluate(model, splits.test, config.train.eval_batch_size, where="test")
            rows.append(
                {
                    "method": "zero-shot" if k == 0 else f"few-shot (k={k})",
                    "test_accuracy": metrics["accuracy"],
                    "trainable_parameters": 0,
                    "seconds": time.perf_counter() - started,
                }
            )
    result = train(config, overwrite=True, backbone=backbone)
    rows.append(
        {
            "method": f"{config.method} ({template.source!r})",
            "test_accuracy": result.metrics["test"]["accuracy"],
            "trainable_parameters": result.trainable_parameters,
            "seconds": result.seconds,
            "best_step": result.best_step,
            "artifact_kb": round(result.artifact_bytes / 1024, 1),
        }
    )

    print(
        f"\n{config.dataset or 'data'} test split (n={len(splits.test)}), backbone {backbone.name}, "
        f"seed {config.seed}, torch threads {torch.get_num_threads()}\n"
    )
    print("| method | test accuracy | trainable params | seconds |")
    print("|---|---|---|---|")
    for row in rows:
        params = "-" if row["trainable_parameters"] is None else f"{row['trainable_parameters']:,}"
        print(f"| {row['method']} | {100 * row['test_accuracy']:.1f}% | {params} | {row['seconds']:.0f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sentiment_accuracy_{backbone.name.replace('/', '_')}.json"
    out.write_text(
        json.dumps(
            {"config": config.to_dict(), "n_test": len(splits.test), "rows": rows, "threads": torch.get_num_threads()},
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
