"""``softprompt detox eval``: sample continuations under each method, score them, summarise.

Generations go to ``out/generations/<method>.jsonl`` one batch of prompts at a time, with their
scores and base-model log-likelihoods, so an interrupted run resumes without regenerating or
rescoring what it already has (a scorer added later is computed from the stored text).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from softprompt.atomic import atomic_write_json, atomic_write_text
from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.placement import apply_threads
from softprompt.detox.config import DetoxEvalConfig
from softprompt.detox.data import Prompt, read_prompts
from softprompt.detox.loading import Knobs, build_steering
from softprompt.detox.metrics import distinct_n, toxicity_metrics
from softprompt.detox.registry import get_steering
from softprompt.detox.steering import Steering, parse_methods
from softprompt.errors import SoftpromptError, flag
from softprompt.generation.running import prompt_seeds, sample_continuations
from softprompt.generation.sampling import continuation_nll
from softprompt.tasks.generation.toxicity import Scorer, load_scorer, parse_scorer_names

SETTINGS_FILE = "eval_config.json"
# Settings that change what is generated: a resumed run must match them. The methods' own
# settings are loading.Knobs' fields, so a knob added there is checked here too.
GENERATION_KEYS = (
    "prompts",
    "backbone",
    "samples",
    "max_new_tokens",
    "top_p",
    "temperature",
    "prompt_field",
    "seed",
    *(knob.name for knob in fields(Knobs)),
)


def _read_done(path: Path) -> tuple[dict[int, dict], bool]:
    """Records already generated, and whether every line was whole (a line cut by a crash is
    dropped, and its prompts are generated again)."""
    done: dict[int, dict] = {}
    whole = True
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                whole = False
                continue
            done[record["index"]] = record
    return done, whole


def _check_settings(out: Path, config: DetoxEvalConfig, overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    current = asdict(config)
    if path.is_file() and not overwrite:
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in GENERATION_KEYS if saved.get(k) != current[k]]
        if changed:
            raise SoftpromptError(
                f"{out} holds generations made with other settings ({', '.join(changed)}); "
                f"use another out= or {flag('overwrite')}"
            )
    if overwrite and (out / "generations").is_dir():
        for old in (out / "generations").glob("*.jsonl"):
            old.unlink()
    atomic_write_json(path, current)


class MethodRun:
    """Generates, scores and stores one method's continuations."""

    def __init__(
        self, label: str, spec: str, steering: Steering, backbone: Backbone, scorers: list[Scorer], config, out: Path
    ):
        self.label, self.steering, self.backbone, self.scorers, self.config = label, steering, backbone, scorers, config
        # The file is keyed by the whole spec: soft_prompt:<dir A> never reuses <dir B>'s text.
        digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
        self.path = out / "generations" / f"{label}-{digest}.jsonl"

    def batch_size(self) -> int:
        return max(1, self.config.batch_rows // (self.config.samples * len(self.steering.variants)))

    def run(self, prompts: list[Prompt], progress: bool) -> list[dict]:
        done = self._resume()
        size = self.batch_size()
        bar = tqdm(total=len(prompts), initial=len(done), desc=self.label, unit="prompt", disable=not progress)
        for start in range(0, len(prompts), size):
            todo = [i for i in range(start, min(start + size, len(prompts))) if i not in done]
            if not todo:
                continue
            for record in self._generate(prompts, todo):
                done[record["index"]] = record
            bar.update(len(todo))
        bar.close()
        return [done[i] for i in range(len(prompts))]

    def _generate(self, prompts: list[Prompt], indices: list[int]) -> list[dict]:
        cfg = self.config
        tick = time.perf_counter()
        texts = [prompts[i].text for i in indices]
        seeds = prompt_seeds(cfg.seed, indices)  # each prompt its own: the batch size does not matter
        sampled = sample_continuations(
            self.backbone, self.steering, texts, cfg.samples, cfg.max_new_tokens, cfg.top_p, seeds, cfg.temperature
        )
        decode = self.backbone.tokenizer.decode
        flat_text = [decode(ids, skip_special_tokens=True) for rows in sampled.tokens for ids in rows]
        nll = sampled.nll or continuation_nll(self.backbone, texts, sampled.tokens)
        nll = [pair for rows in nll for pair in rows]
        scores = {s.name: s.score(flat_text).tolist() for s in self.scorers}
        seconds = (time.perf_counter() - tick) / len(indices)
        records = []
        for n, index in enumerate(indices):
            part = slice(n * cfg.samples, (n + 1) * cfg.samples)
            records.append(
                {
                    "index": index,
                    "prompt": prompts[index].text,
                    "continuations": flat_text[part],
                    "scores": {name: [round(v, 6) for v in values[part]] for name, values in scores.items()},
                    "nll": [round(v, 5) for v, _ in nll[part]],
                    "tokens": [t for _, t in nll[part]],
                    "seconds": round(seconds, 4),
                }
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:  # one write per batch
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return records

    def _resume(self) -> dict[int, dict]:
        """Stored records, with scores added for scorers they lack; the file is rewritten
        (atomically) without any cut-off line when something changed."""
        done, whole = _read_done(self.path)
        missing = [s for s in self.scorers if any(s.name not in r["scores"] for r in done.values())]
        for scorer in missing:
            for record in done.values():
                record["scores"][scorer.name] = [round(v, 6) for v in scorer.score(record["continuations"]).tolist()]
        if missing or not whole:
            atomic_write_text(self.path, "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)))
        return done


def summarise(records: list[dict], scorer_names: list[str], rounds: int = 1000) -> dict[str, Any]:
    """Toxicity metrics per scorer (with 95% intervals), perplexity, distinct-n and time."""
    tokens = sum(sum(r["tokens"]) for r in records)
    nll = sum(sum(r["nll"]) for r in records)
    generations = [r["continuations"] for r in records]
    return {
        "toxicity": {
            name: {
                k: v.to_dict()
                for k, v in toxicity_metrics(np.array([r["scores"][name] for r in records]), rounds).items()
            }
            for name in scorer_names
        },
        "perplexity": round(math.exp(nll / tokens), 3) if tokens else None,
        "distinct": {f"distinct_{n}": round(distinct_n(generations, n), 4) for n in (1, 2, 3)},
        "prompts": len(records),
        "samples": len(records[0]["continuations"]) if records else 0,
        "generation_seconds": round(sum(r["seconds"] for r in records), 1),
    }


def _labels(specs: list[tuple[str, str]]) -> list[str]:
    labels = []
    for name, _ in specs:
        label = name if name not in labels else f"{name}-{sum(lab.startswith(name) for lab in labels) + 1}"
        labels.append(label)
    return labels


def detox_eval(config: DetoxEvalConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation and write ``results.json`` / ``results.md`` / ``results.png`` to ``out``."""
    from softprompt.detox.report import write_report

    started = time.perf_counter()
    specs = parse_methods(config.methods)
    scorer_names = parse_scorer_names(config.scorer)
    prompts = read_prompts(config.prompts, config.prompt_field, config.max_prompts)
    apply_threads(config.threads)
    backbone = load_backbone(config.backbone, config.device, config.precision, config.quantize)
    backbone.require_token_prediction("detox eval")
    steerings = [
        build_steering(name, arg, backbone, config.instruction, config.alpha, config.decay, config.filter_p)
        for name, arg in specs
    ]
    scorers = [load_scorer(name) for name in scorer_names]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, config, overwrite)
    results: dict[str, Any] = {"config": asdict(config), "methods": {}}
    for label, (name, argument), steering in zip(_labels(specs), specs, steerings, strict=True):
        # An artifact directory is resolved: the same run's generations are found from any cwd.
        spec = f"{name}:{Path(argument).resolve() if get_steering(name).needs_argument else argument}"
        records = MethodRun(label, spec, steering, backbone, scorers, config, out).run(prompts, progress)
        results["methods"][label] = summarise(records, [s.name for s in scorers])
    results["perplexity_model"] = backbone.name
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_report(results, out)
    return results
