"""What keeping prompt caches in a smaller dtype (`serve --prompt-cache-dtype`) changes in the
answers and in memory: a served classifier against `predict` on a whole test set.

    python benchmarks/cache_dtype.py --artifact runs/sentiment --threads 2

For each dtype (the backbone's, float16, bfloat16), the artifact is served by a
:class:`~softprompt.serving.service.Service` whose caches are kept in that dtype, and every text of
the test set (Rotten Tomatoes' 1,066 by default) is classified through the server's path in
requests of ``--batch`` texts; the answers are compared with `predict`'s (the artifact's own
classifier, no kept cache): the largest difference of a label probability, and how many labels
differ. Also the bytes of one task's kept cache. Prints a table, writes
benchmarks/results/cache_dtype.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from server_load import write_results
from train_speed import load_examples

RESULTS = Path(__file__).parent / "results"
DTYPES = ("auto", "float16", "bfloat16")


def served_scores(backbone, folder: Path, dtype: str, texts: list[str], batch: int) -> tuple[list[dict], int, float]:
    """The served answers' label probabilities, the bytes of the task's kept cache, and seconds."""
    from softprompt.serving.requests import ClassifyRequest
    from softprompt.serving.service import Service

    service = Service(backbone, folder, None, dtype)
    started = time.perf_counter()
    scores = []
    for start in range(0, len(texts), batch):
        [answers] = service.classify([ClassifyRequest(task="task", texts=texts[start : start + batch])])
        scores += [answer["scores"] for answer in answers]
    return scores, service.tasks.prompt_caches.bytes, time.perf_counter() - started


def main() -> None:
    import torch

    import softprompt
    from softprompt.backbones import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="a classification artifact (e.g. runs/sentiment)")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=100_000, help="at most this many test texts (default: all)")
    parser.add_argument("--texts-file", help='a JSONL file of {"text", "label"} rows (default: Rotten Tomatoes test)')
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", default=str(RESULTS / "cache_dtype.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [e.text for e in load_examples(args.texts, args.texts_file, "test")]
    predicted = softprompt.load(args.artifact).predict(texts)  # the artifact's own classifier
    backbone = load_backbone(args.backbone, "cpu", args.precision)
    results: dict = {"setting": vars(args), "texts": len(texts), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "served"
        shutil.copytree(args.artifact, folder / "task", ignore=shutil.ignore_patterns("checkpoint", "*.png"))
        for dtype in DTYPES:
            scores, size, seconds = served_scores(backbone, folder, dtype, texts, args.batch)
            differences = [
                abs(got[label] - want["scores"][label])
                for got, want in zip(scores, predicted, strict=True)
                for label in want["scores"]
            ]
            labels_differ = sum(
                max(got, key=got.get) != want["label"] for got, want in zip(scores, predicted, strict=True)
            )
            results["runs"][dtype] = {
                "max_probability_difference": max(differences),
                "labels_differ": labels_differ,
                "cache_bytes_per_task": size,
                "seconds": seconds,
            }
            print(
                f"{dtype}: max diff {max(differences):.2e}, {labels_differ} labels differ, {size:,} bytes", flush=True
            )
    print(f"\n{len(texts):,} test texts, {args.backbone} {args.precision}, against predict\n")
    print("| kept caches | bytes per task | max probability difference | labels that differ |")
    print("|---|---|---|---|")
    for dtype, run in results["runs"].items():
        print(
            f"| {dtype} | {run['cache_bytes_per_task']:,} | {run['max_probability_difference']:.2e} | "
            f"{run['labels_differ']} of {len(texts):,} |"
        )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
