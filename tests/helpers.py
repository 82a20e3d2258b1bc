"""Builders shared by tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from softprompt.backbones import Backbone
from softprompt.config import PromptConfig
from softprompt.data.records import Example
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.classification import build_classifier
from softprompt.tasks.classification.model import PromptedClassifier

EXAMPLES = [
    Example({"text": t})
    for t in ["a great movie", "dull and boring and badly acted film", "superb", "the cast was fine but the plot awful"]
]


def classifier(
    backbone: Backbone,
    template: str,
    verbalizer: dict | None = None,
    method: str = "prompt_tuning",
    init: str = "random",
    seed: int = 0,
) -> PromptedClassifier:
    verbalizer = verbalizer or {"positive": "positive", "negative": "negative"}
    return build_classifier(
        backbone, method, Template(template), Verbalizer(verbalizer), PromptConfig(init=init), seed=seed, max_length=128
    )


@contextlib.contextmanager
def logged_messages(name: str = "softprompt") -> Iterator[list[str]]:
    """The messages logger ``name`` (and those under it) logs inside the block. A handler of its
    own: once the CLI has run in this process, softprompt's logger no longer propagates to caplog."""
    import logging

    lines: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    kept = Kept()
    logger = logging.getLogger(name)
    logger.addHandler(kept)
    try:
        yield lines
    finally:
        logger.removeHandler(kept)


@contextlib.contextmanager
def ctrl_c_at_step(n: int) -> Iterator[None]:
    """Within it, the ``n``-th optimizer step raises KeyboardInterrupt, as Ctrl-C mid-training would."""
    calls, real_step = {"n": 0}, torch.optim.AdamW.step

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    torch.optim.AdamW.step = interrupted_step
    try:
        yield
    finally:
        torch.optim.AdamW.step = real_step


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0, every: float = 0.01) -> None:
    """Return as soon as ``condition()`` is true (checked every ``every`` seconds); fail the test,
    naming ``what`` it waited for, when ``timeout`` seconds pass first (an AssertionError, which
    an event loop running the test passes on like any other)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(every)


async def async_wait_until(
    condition: Callable[[], object], what: str, timeout: float = 20.0, every: float = 0.005
) -> None:
    """:func:`wait_until` inside an event loop: the loop runs (the tasks that make the condition
    true go on) between the checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


def slowed_generation(service, monkeypatch, seconds: float = 0.05) -> list[float]:
    """Each decoding slice of ``service`` takes ``seconds`` more; the list that counts the slices."""
    slices: list[float] = []
    real = service.advance_generation

    def slow(steps: int = 1):
        slices.append(time.perf_counter())
        time.sleep(seconds)
        return real(steps)

    monkeypatch.setattr(service, "advance_generation", slow)
    return slices


@contextlib.contextmanager
def live_server(app, log_level: str = "warning") -> Iterator[str]:
    """``app`` served by uvicorn on a free local port in a thread (for clients that need a real
    URL: lm-evaluation-harness, schemathesis); yields the base URL."""
    import logging
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    # The access log prints a line per request from the server's thread; beside the test's own
    # output on pytest's captured stdout (not thread-safe) that crashed the process now and then.
    access = logging.getLogger("softprompt.access")
    level = access.level
    access.setLevel(logging.WARNING)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the test server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        access.setLevel(level)


def train_served_tasks(root, tiny_llama_dir) -> Path:
    """A folder of two quickly trained artifacts on the tiny Llama, as a server serves them: the
    classifier ``sentiment`` and the generation task ``polite``; returns the folder."""
    from softprompt.cli import main

    from .conftest import NEGATIVE, POSITIVE, write_jsonl
    from .test_generation import PAIRS

    labelled = [{"text": t, "label": "positive"} for t in POSITIVE] + [
        {"text": t, "label": "negative"} for t in NEGATIVE
    ]
    reviews = write_jsonl(root / "reviews.jsonl", labelled)
    pairs = write_jsonl(root / "pairs.jsonl", [{"text": t, "target": y} for t, y in PAIRS] * 2)
    common = [f"backbone={tiny_llama_dir}", "prompt.init=vocab", "train.max_steps=1", "train.batch_size=4", "--quiet"]
    sentiment = ["template={soft:2}Review: {text} Sentiment:", "verbalizer={positive: positive, negative: negative}"]
    tasks = root / "tasks"
    classifier_run = ["train", f"data.train={reviews}", f"data.dev={reviews}", *sentiment, f"out={tasks / 'sentiment'}"]
    assert main([*classifier_run, *common]) == 0
    rewrite = ["task=generation", "template={soft:2}Toxic: {text} Polite:", "gen.max_new_tokens=4"]
    assert (
        main(["train", f"data.train={pairs}", f"data.dev={pairs}", *rewrite, f"out={tasks / 'polite'}", *common]) == 0
    )
    return tasks


def generate(service, payloads: list) -> list[list[str]]:
    """All of some generation jobs (``WriteJob`` or ``GenerateRequest``) of ``service`` at once,
    in a batch of their own: what the server does slice by slice, with jobs joining and leaving.
    The reference the serving tests compare the server's answers with."""
    from softprompt.serving.app import GenerateRequest
    from softprompt.serving.writing import GenerationStream

    jobs = [p.job() if isinstance(p, GenerateRequest) else p for p in payloads]
    stream = GenerationStream(service.backbone)  # no prompt caches: soft prompts run with their texts
    everything = 10**9  # every prompt read whole, in one forward pass
    stream.prefill([(key, job, everything) for key, job in enumerate(jobs)], service.tasks.writers, everything)
    results: dict = {}
    while stream.rows:
        results.update(stream.advance(1))  # alone, nothing waits between slices
    decode = service.backbone.tokenizer.decode
    return [[decode(ids, skip_special_tokens=True) for ids in results[key]] for key in range(len(jobs))]
