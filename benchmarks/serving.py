"""The serving engine, side by side in one run, one server at a time (``softprompt serve`` on
127.0.0.1):

    python benchmarks/serving.py --artifact runs/sentiment --tasks 1000 --seconds 30 --threads 2

1. Many tasks: ``--clients`` closed-loop clients classify 2 texts each with a random task, for
   ``--seconds``, against a server of 1 task and one of ``--tasks`` tasks (the artifact copied
   under that many names): requests/s, p50/p99 latency, the server's resident memory, and how
   long it took to be ready. Ratios: many over one.
2. Continuous batching: ``--clients`` closed-loop clients generate (no task, temperature 0.7),
   each asking for a ``max_new_tokens`` drawn uniformly from 8-128, against all asking 64:
   generated tokens/s (counted by the backbone's tokenizer). With batch-at-a-time decoding the
   short rows' places stay empty until the longest row ends.
3. Short behind long: a 128-token generation is under way when 4 requests for 8 tokens arrive
   1 s later: the seconds until each of them is answered. With ``--gen-artifact``, again with the
   short ones streamed through ``/v1/completions`` on that task: the seconds until each one's
   first token, and the long one's time with them over its time alone.
4. Live changes: the classification load of phase 1 on ``--tasks`` tasks while 100 tasks are
   added, asked, replaced and removed, 6 cycles at a time: every status, and how long a new task
   took to answer after its ``POST /v1/tasks/{name}``.
5. Many generation tasks (``--gen-artifact``, a generation artifact with a leading soft prompt):
   the clients of phase 2, all asking 64 tokens, each request with a random one of 100 copies of
   it, against all on 1 copy: generated tokens/s. Every row of the decoding batch carries its
   own soft prompt, so this should cost next to nothing.

6. Mixed load: half the clients classify and half generate (64 tokens) at once, against each
   half alone: classification p99 and generated tokens/s, together over alone.

``--src DIR`` runs the server from another source tree (e.g. a worktree of an older commit),
so a before/after comparison uses the same load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from served import Server, generation_client, prompts_dir
from server_load import classify_load_flags, client_loop, summary

RESULTS = Path(__file__).parent / "results"
CHANGERS = 6  # concurrent add-ask-replace-remove cycles in the live-changes phase (100 in 60 s)


def classify(args: argparse.Namespace, folder: Path) -> dict:
    server = Server(args, folder)
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks").json()["tasks"]]

        async def run() -> dict:
            log: list = []
            limits = httpx.Limits(max_connections=args.clients)
            async with httpx.AsyncClient(base_url=server.base, timeout=300, limits=limits) as client:
                until = time.perf_counter() + args.seconds
                await asyncio.gather(
                    *(client_loop(client, tasks, until, i, log, texts=(2, 2)) for i in range(args.clients))
                )
            return summary(log, args.seconds)

        result = asyncio.run(run())
        measured = {**server.rss_mb(), **server.batch_rows(), **server.prompt_cache_counts()}
        return {**result, **measured, "ready_s": server.ready_s, "tasks": len(tasks)}
    finally:
        server.close()


def generate(args: argparse.Namespace, folder: Path, lengths: tuple[int, int], tokenizer, tasked: bool = False) -> dict:
    """Closed-loop generating clients; ``tasked``: each request names a random task of the
    folder's (a generation artifact's soft prompt), else the plain model."""
    server = Server(args, folder)
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks").json()["tasks"]] if tasked else [None]

        async def run() -> dict:
            counts: list[int] = []
            limits = httpx.Limits(max_connections=args.clients)
            async with httpx.AsyncClient(base_url=server.base, timeout=600, limits=limits) as client:
                start = time.perf_counter()
                until = start + args.seconds
                await asyncio.gather(
                    *(
                        generation_client(client, until, i, counts, lengths, tasks, tokenizer)
                        for i in range(args.clients)
                    )
                )
                elapsed = time.perf_counter() - start
            return {"requests": len(counts), "tokens": sum(counts), "tokens_per_second": sum(counts) / elapsed}

        return asyncio.run(run())
    finally:
        server.close()


def short_behind_long(args: argparse.Namespace, folder: Path) -> dict:
    server = Server(args, folder)
    try:

        async def run() -> dict:
            async with httpx.AsyncClient(base_url=server.base, timeout=600) as client:
                body = {"prompt": "Once upon a time", "max_new_tokens": 128, "temperature": 0.7, "seed": 1}
                start = time.perf_counter()
                long = asyncio.ensure_future(client.post("/v1/generate", json=body))
                await asyncio.sleep(1.0)

                async def short(i: int) -> float:
                    sent = time.perf_counter()
                    body = {"prompt": f"Hello {i}", "max_new_tokens": 8, "temperature": 0.7, "seed": i}
                    await client.post("/v1/generate", json=body)
                    return time.perf_counter() - sent

                waits = await asyncio.gather(*(short(i) for i in range(4)))
                await long
                return {"short_answered_s": waits, "long_answered_s": time.perf_counter() - start}

        return asyncio.run(run())
    finally:
        server.close()


def first_tokens_behind_long(args: argparse.Namespace, writers: Path) -> dict:
    """Phase 3 with the short requests streamed through ``/v1/completions`` on a generation task:
    the seconds until each one's first token arrives, and the long one's time alone and with them."""
    server = Server(args, writers)
    try:
        task = httpx.get(f"{server.base}/v1/tasks").json()["tasks"][0]["name"]

        async def run() -> dict:
            async with httpx.AsyncClient(base_url=server.base, timeout=600) as client:
                # The plain model for the long one: the task's rewrites end after a few tokens.
                body = {"prompt": "Once upon a time", "max_new_tokens": 128, "temperature": 0.7, "seed": 1}
                start = time.perf_counter()
                await client.post("/v1/generate", json=body)
                alone = time.perf_counter() - start
                start = time.perf_counter()
                long = asyncio.ensure_future(client.post("/v1/generate", json=body))
                await asyncio.sleep(1.0)

                async def short(i: int) -> tuple[float, float]:
                    sent, first = time.perf_counter(), None
                    body = {"model": task, "prompt": f"Hello {i}", "max_tokens": 8, "temperature": 0.7, "seed": i}
                    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as answer:
                        async for line in answer.aiter_lines():
                            text = json.loads(line[6:])["choices"][0]["text"] if line.startswith("data: {") else ""
                            if first is None and text:
                                first = time.perf_counter() - sent
                    return first if first is not None else float("nan"), time.perf_counter() - sent

                shorts = await asyncio.gather(*(short(i) for i in range(4)))
                await long
                return {
                    "short_first_token_s": [first for first, _ in shorts],
                    "short_answered_s": [whole for _, whole in shorts],
                    "long_alone_s": alone,
                    "long_with_short_s": time.perf_counter() - start,
                }

        return asyncio.run(run())
    finally:
        server.close()


def live_changes(args: argparse.Namespace, folder: Path, artifact: Path, changes: int = 100) -> dict:
    """Classification load while ``changes`` tasks are added, replaced and removed: no request may
    fail, and a new task must answer soon after it is added."""
    server = Server(args, folder, roots=(artifact.resolve().parent,))
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks").json()["tasks"]]

        names = iter(range(changes))

        async def changer(client: httpx.AsyncClient, until: float, log: list, waits: list) -> None:
            for i in names:  # shared by the changers: each task once
                if time.perf_counter() >= until:
                    break
                name, path = f"live{i:03d}", str(artifact.resolve())
                started = time.perf_counter()
                statuses = [(await client.post(f"/v1/tasks/{name}", json={"path": path})).status_code]
                added = time.perf_counter() - started
                answer = await client.post("/v1/classify", json={"task": name, "texts": ["fine"]})
                waits.append((added, time.perf_counter() - started))
                statuses.append(answer.status_code)
                statuses.append((await client.post(f"/v1/tasks/{name}", json={"path": path})).status_code)  # replace
                statuses.append((await client.delete(f"/v1/tasks/{name}")).status_code)
                log.extend(statuses)

        async def run() -> dict:
            log: list = []
            changed: list = []
            waits: list[float] = []
            limits = httpx.Limits(max_connections=args.clients + CHANGERS)
            async with httpx.AsyncClient(base_url=server.base, timeout=300, limits=limits) as client:
                until = time.perf_counter() + args.seconds
                clients = [client_loop(client, tasks, until, i, log, texts=(2, 2)) for i in range(args.clients)]
                changers = [changer(client, until, changed, waits) for _ in range(CHANGERS)]
                await asyncio.gather(*changers, *clients)
            result = summary(log, args.seconds)
            result["change_statuses"] = {str(k): changed.count(k) for k in sorted(set(changed))}
            result["changes"] = len(waits)
            result.update(server.batch_rows())
            waits = [(added, answered, answered - added) for added, answered in waits]
            for i, what in enumerate(("added", "answered", "answered_after_added")):
                seconds = [w[i] for w in waits]
                result[f"new_task_{what}_median_s"] = statistics.median(seconds) if seconds else None
                result[f"new_task_{what}_max_s"] = max(seconds) if seconds else None
            return result

        return asyncio.run(run())
    finally:
        server.close()


def mixed_load(args: argparse.Namespace, folder: Path, tokenizer) -> dict:
    """Phase 6: half the clients classify (2 texts, the folder's tasks) and half generate (the
    plain model, 64 tokens) at once, against each half alone, on one server."""
    server = Server(args, folder)
    try:
        tasks = [t["name"] for t in httpx.get(f"{server.base}/v1/tasks").json()["tasks"]]
        half = max(args.clients // 2, 1)

        async def phase(classifying: bool, generating: bool) -> dict:
            log: list = []
            counts: list[int] = []
            limits = httpx.Limits(max_connections=2 * half)
            async with httpx.AsyncClient(base_url=server.base, timeout=600, limits=limits) as client:
                start = time.perf_counter()
                until = start + args.seconds
                await asyncio.gather(
                    *(
                        client_loop(client, tasks, until, i, log, texts=(2, 2))
                        for i in range(half if classifying else 0)
                    ),
                    *(
                        generation_client(client, until, 100 + i, counts, (64, 64), [None], tokenizer)
                        for i in range(half if generating else 0)
                    ),
                )
                elapsed = time.perf_counter() - start
            out = {"classify": summary(log, args.seconds)} if classifying else {}
            return out | ({"tokens_per_second": sum(counts) / elapsed} if generating else {})

        return {
            "classify_alone": asyncio.run(phase(True, False)),
            "generate_alone": asyncio.run(phase(False, True)),
            "together": asyncio.run(phase(True, True)),
        }
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    classify_load_flags(parser)
    parser.add_argument("--src", help="run the server from this source tree (PYTHONPATH)")
    parser.add_argument("--gen-artifact", help="a generation artifact with a leading soft prompt (phase 5)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["classify", "generate", "short", "live", "gentasks", "mixed"]
    )
    parser.add_argument("--out", default=str(RESULTS / "serving.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from softprompt.backbones.sources import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(args.backbone)[2])
    results: dict = {"setting": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = prompts_dir(Path(args.artifact), 1, root)
        if "classify" not in args.skip:
            many = prompts_dir(Path(args.artifact), args.tasks, root)
            results["classify_1"] = classify(args, one)
            results[f"classify_{args.tasks}"] = classify(args, many)
        if "generate" not in args.skip:
            results["generate_all_64"] = generate(args, one, (64, 64), tokenizer)
            results["generate_8_to_128"] = generate(args, one, (8, 128), tokenizer)
        if "short" not in args.skip:
            results["short_behind_long"] = short_behind_long(args, one)
        if "mixed" not in args.skip:
            results["mixed_load"] = mixed_load(args, one, tokenizer)
        if "live" not in args.skip:
            many = root / f"tasks-{args.tasks}"
            many = many if many.exists() else prompts_dir(Path(args.artifact), args.tasks, root)
            results["live_changes"] = live_changes(args, many, Path(args.artifact))
        if args.gen_artifact:
            one_writer = prompts_dir(Path(args.gen_artifact), 1, root / "gen")
        if args.gen_artifact and "short" not in args.skip:
            results["first_tokens_behind_long"] = first_tokens_behind_long(args, one_writer)
        if args.gen_artifact and "gentasks" not in args.skip:
            writers = prompts_dir(Path(args.gen_artifact), 100, root / "gen")
            results["generate_1_task"] = generate(args, one_writer, (64, 64), tokenizer, tasked=True)
            results["generate_100_tasks"] = generate(args, writers, (64, 64), tokenizer, tasked=True)
    report(args, results)


def report(args: argparse.Namespace, results: dict) -> None:
    print(f"\n{args.backbone}, {args.clients} clients, {args.seconds:.0f} s per phase, {args.threads} threads\n")
    if "classify_1" in results:
        one, many = results["classify_1"], results[f"classify_{args.tasks}"]
        print("| classify | req/s | p50 ms | p99 ms | RSS MB | ready s | statuses |\n|---|---|---|---|---|---|---|")
        for name, r in (("1 task", one), (f"{args.tasks:,} tasks", many)):
            print(
                f"| {name} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['rss_mb']:.0f} | {r['ready_s']:.1f} | {r['statuses']} |"
            )
        results["ratios"] = {
            "throughput": many["requests_per_second"] / one["requests_per_second"],
            "p99": many["p99_ms"] / one["p99_ms"],
        }
        print(
            f"\n{args.tasks:,} tasks vs 1: throughput {results['ratios']['throughput']:.2f}x, "
            f"p99 {results['ratios']['p99']:.2f}x, RSS +{many['rss_mb'] - one['rss_mb']:.0f} MB"
        )
    if "generate_all_64" in results:
        tokens_ratio(results, "mixed_lengths", "generate_8_to_128", "generate_all_64", "max_new_tokens 8-128 vs all 64")
    if "short_behind_long" in results:
        r = results["short_behind_long"]
        waits = ", ".join(f"{s:.1f}" for s in r["short_answered_s"])
        print(
            f"\n8-token requests 1 s into a 128-token generation answered after {waits} s "
            f"(median {statistics.median(r['short_answered_s']):.1f} s; "
            f"the long one after {r['long_answered_s']:.1f} s)"
        )
    if "first_tokens_behind_long" in results:
        r = results["first_tokens_behind_long"]
        firsts = ", ".join(f"{s:.2f}" for s in r["short_first_token_s"])
        print(
            f"streamed 8-token completions 1 s into a 128-token one: first token after {firsts} s "
            f"(median {statistics.median(r['short_first_token_s']):.2f} s), whole answers median "
            f"{statistics.median(r['short_answered_s']):.2f} s; the long one took {r['long_with_short_s']:.1f} s "
            f"vs {r['long_alone_s']:.1f} s alone ({r['long_with_short_s'] / r['long_alone_s']:.2f}x)"
        )
    if "live_changes" in results:
        r = results["live_changes"]
        print(
            f"\nlive changes: {r['changes']} tasks added, asked, replaced and removed under {args.clients} clients: "
            f"requests {r['statuses']}, changes {r['change_statuses']}; a task was added (POST answered) in "
            f"{r['new_task_added_median_s']:.2f} s median, {r['new_task_added_max_s']:.2f} s max, and its first "
            f"request answered {r['new_task_answered_median_s']:.2f} s median, "
            f"{r['new_task_answered_max_s']:.2f} s max after the POST was sent, "
            f"{r['new_task_answered_after_added_median_s']:.2f} s median after it was answered "
            f"(every request's p50 under this load: {r['p50_ms'] / 1000:.2f} s)"
        )
    if "mixed_load" in results:
        r = results["mixed_load"]
        alone, together = r["classify_alone"]["classify"], r["together"]["classify"]
        gen, gen_alone = r["together"]["tokens_per_second"], r["generate_alone"]["tokens_per_second"]
        p99, tokens = together["p99_ms"] / alone["p99_ms"], gen / gen_alone
        results.setdefault("ratios", {}).update(mixed_classify_p99=p99, mixed_generate_tokens=tokens)
        print(
            f"\nmixed load, {args.clients // 2} classifying + {args.clients // 2} generating clients: classify p99 "
            f"{together['p99_ms']:.0f} vs {alone['p99_ms']:.0f} ms alone ({p99:.2f}x), req/s "
            f"{together['requests_per_second']:.1f} vs {alone['requests_per_second']:.1f}; generated tokens/s "
            f"{gen:.1f} vs {gen_alone:.1f} alone ({tokens:.2f}x)"
        )
    if "generate_100_tasks" in results:
        tokens_ratio(results, "generation_tasks", "generate_100_tasks", "generate_1_task", "100 tasks vs 1 task")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


def tokens_ratio(results: dict, name: str, measured: str, against: str, label: str) -> None:
    """Record and print the generated tokens/s of phase ``measured`` over phase ``against``."""
    ours, theirs = results[measured]["tokens_per_second"], results[against]["tokens_per_second"]
    results.setdefault("ratios", {})[name] = ours / theirs
    print(f"\ngeneration tokens/s, {label}: {ours:.1f} vs {theirs:.1f} ({ours / theirs:.2f}x)")


if __name__ == "__main__":
    main()
