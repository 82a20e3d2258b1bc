"""The serving engine's scheduler and decoding batch in-process, side by side in one run:

    python benchmarks/engine.py --seconds 20

1. Long prompt: 8 closed-loop generation requests decode (plain model, temperature 0.7, 128
   tokens each) when a prompt of ``--long-tokens`` tokens arrives. For each of ``--configs``
   (``--token-budget`` and ``--max-token-wait-ms``; 0:0, no limit: the prompt read whole as the
   first engine did): the longest
   any decoding row waited for its next token while the prompt was read, and the seconds until
   the long request's answer. Token times are taken as the engine reports tokens to their
   listeners (as a stream would send them).
2. Joins and departures: ``--rows`` closed-loop requests each asking a random 8-128 tokens (they
   join and leave all the time) against all asking 64, for ``--seconds`` of decoding, with the
   cache written in place (``KvSlots``) and with transformers' concatenating ``DynamicCache``
   (``ConcatKv``, what the first engine did at every step, join and departure): tokens/s.
3. Rows of different widths: ``--rows`` short rows decode beside one row of ``--long-tokens``;
   the seconds of a decoding step with attention per group of rows (``generation/ragged.py``)
   and over the whole rectangle, the two alternating step by step in one batch: median, and
   their ratio.

Writes ``benchmarks/results/engine.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

from server_load import write_results
from softprompt.backbones import load_backbone
from softprompt.generation import running
from softprompt.generation.kv_slots import ConcatKv, KvSlots
from softprompt.generation.running import RunningBatch
from softprompt.generation.sampling import SampleRequest
from softprompt.serving.engine import Engine
from softprompt.serving.executor import ServiceExecutor
from softprompt.serving.scheduler import Scheduler
from softprompt.serving.service import Service
from softprompt.serving.writing import WriteJob

RESULTS = Path(__file__).parent / "results"
PROMPT = "Once upon a time"


def long_prompt(service: Service, budget: int, wait_ms: float, long_tokens: int, warm_s: float = 3.0) -> dict:
    """Phase 1 for one token budget (0: none) and ``--max-token-wait-ms`` (0: none)."""
    words = service.backbone.tokenizer(" the story goes on", add_special_tokens=False)["input_ids"]
    long_ids = (words * (long_tokens // len(words) + 1))[:long_tokens]

    async def run() -> dict:
        scheduler = Scheduler(
            continuous={"generate"}, max_batch=32, token_budget=budget or 10**9, max_token_wait=wait_ms / 1000 or None
        )
        engine = Engine(scheduler, ServiceExecutor({}, service))
        engine.start()
        times: dict[int, list[float]] = {}
        stop = asyncio.Event()

        async def decoder(row: int) -> None:
            seed = row
            while not stop.is_set():
                stamps = times.setdefault(seed, [])
                job = WriteJob(
                    None, PROMPT, 128, 0.7, 0.95, 1, seed, lambda s, new, done, t=stamps: t.append(time.perf_counter())
                )
                await engine.submit("generate", job)
                seed += 1000

        decoders = [asyncio.ensure_future(decoder(row)) for row in range(8)]
        await asyncio.sleep(warm_s)
        arrived = time.perf_counter()
        await engine.submit("generate", WriteJob(None, long_ids, 4, 0.0, 1.0, 1, 0))
        answered = time.perf_counter()
        stop.set()
        await asyncio.gather(*decoders)
        await engine.stop()
        waits = sorted(
            (later - earlier, earlier - arrived)
            for stamps in times.values()
            for earlier, later in itertools.pairwise(stamps)
            if later >= arrived and earlier <= answered
        )
        gaps = [gap for gap, _ in waits]
        return {
            "token_budget": budget,
            "max_token_wait_ms": wait_ms,
            "long_answered_s": answered - arrived,
            "max_wait_s": max(gaps),
            "p50_wait_s": statistics.median(gaps),
            "longest_waits": [{"wait_s": gap, "began_after_arrival_s": at} for gap, at in waits[-5:]],
        }

    return asyncio.run(run())


def churn(backbone, rows: int, lengths: tuple[int, int], seconds: float, concatenating: bool) -> dict:
    """Phase 2: ``rows`` closed-loop requests for ``seconds`` of decoding; tokens/s."""
    rng, batch, tokens, key = random.Random(0), RunningBatch(backbone), 0, 0
    batch.kv = ConcatKv(backbone.model.config) if concatenating else KvSlots()

    def new() -> tuple[int, SampleRequest]:
        nonlocal key
        key += 1
        return key, SampleRequest(PROMPT, None, 1, rng.randint(*lengths), 0.95, 0.7, key)

    with backbone.decoding():
        batch.admit([new() for _ in range(rows)])
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            finished = batch.step()
            tokens += len(batch.members) + len(finished)
            if finished:
                batch.admit([new() for _ in finished])
        elapsed = time.perf_counter() - start
    regrown = batch.kv.regrown if isinstance(batch.kv, KvSlots) else None
    return {"tokens_per_second": tokens / elapsed, "requests": key, "regrown": regrown}


def widths(backbone, rows: int, long_tokens: int, steps: int = 40) -> dict:
    """Phase 3: a step's seconds with ragged attention and without, alternating in one batch."""
    words = backbone.tokenizer(" the story goes on", add_special_tokens=False)["input_ids"]
    long_ids = (words * (long_tokens // len(words) + 1))[:long_tokens]
    batch = RunningBatch(backbone)
    seconds: dict[str, list[float]] = {"ragged": [], "rectangle": []}
    ragged_attention = running.ragged_attention
    with backbone.decoding():
        batch.admit([(i, SampleRequest(PROMPT, None, 1, 10**6, 0.95, 0.7, i)) for i in range(rows)])
        batch.admit([("long", SampleRequest(long_ids, None, 1, 10**6, 0.95, 0.7, rows))])
        try:
            for step in range(2 * steps + 2):
                name = "ragged" if step % 2 else "rectangle"
                running.ragged_attention = ragged_attention if step % 2 else lambda model: contextlib.nullcontext()
                started = time.perf_counter()
                batch.step()
                if step >= 2:  # the first of each: warm-up
                    seconds[name].append(time.perf_counter() - started)
        finally:
            running.ragged_attention = ragged_attention
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    return medians | {"ratio": medians["rectangle"] / medians["ragged"], "steps_each": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--seconds", type=float, default=20.0, help="decoding per churn measurement")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["0:0", "256:0", "256:500"],
        help="phase 1's settings as TOKEN_BUDGET:MAX_TOKEN_WAIT_MS (0: none)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["long", "churn", "widths"])
    parser.add_argument("--out", default=str(RESULTS / "engine.json"))
    args = parser.parse_args()
    backbone = load_backbone(args.backbone)
    results: dict = {"setting": vars(args)}
    if "long" not in args.skip:
        with tempfile.TemporaryDirectory() as empty:
            service = Service(backbone, empty)
            with backbone.decoding():
                configs = [tuple(map(float, c.split(":"))) for c in args.configs]
                results["long_prompt"] = [long_prompt(service, int(b), w, args.long_tokens) for b, w in configs]
        print(f"\n{args.long_tokens:,}-token prompt arriving while 8 rows decode ({args.backbone})\n")
        print("| --token-budget | --max-token-wait-ms | longest wait s | median wait s | long prompt answered s |")
        print("|---|---|---|---|---|")
        for r in results["long_prompt"]:
            budget, wait = r["token_budget"] or "none (read whole)", r["max_token_wait_ms"] or "none"
            row = f"{r['max_wait_s']:.2f} | {r['p50_wait_s']:.3f} | {r['long_answered_s']:.1f}"
            print(f"| {budget} | {wait} | {row} |")
    if "churn" not in args.skip:
        table = {}
        for name, lengths in (("8-128", (8, 128)), ("all 64", (64, 64))):
            for cache, concatenating in (("in place", False), ("concatenated", True)):
                table[f"{name}, {cache}"] = churn(backbone, args.rows, lengths, args.seconds, concatenating)
        results["churn"] = table
        print(f"\n{args.rows} closed-loop requests, {args.seconds:.0f} s of decoding each\n")
        print("| max_new_tokens | cache | tokens/s | requests | buffers regrown |\n|---|---|---|---|---|")
        for name, r in table.items():
            lengths, cache = name.split(", ")
            print(f"| {lengths} | {cache} | {r['tokens_per_second']:.1f} | {r['requests']} | {r['regrown']} |")
        ratios = {
            "in_place_over_concatenated_8_128": table["8-128, in place"]["tokens_per_second"]
            / table["8-128, concatenated"]["tokens_per_second"],
            "churn_in_place": table["8-128, in place"]["tokens_per_second"]
            / table["all 64, in place"]["tokens_per_second"],
            "churn_concatenated": table["8-128, concatenated"]["tokens_per_second"]
            / table["all 64, concatenated"]["tokens_per_second"],
        }
        results["ratios"] = ratios
        print("\n" + ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
    if "widths" not in args.skip:
        r = results["widths"] = widths(backbone, args.rows, args.long_tokens)
        print(f"\n{args.rows} short rows beside one of {args.long_tokens:,} tokens: a decoding step")
        ragged, whole = r["ragged"], r["rectangle"]
        print(f"per group of rows {ragged:.3f} s, over the whole rectangle {whole:.3f} s ({r['ratio']:.2f}x)")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
