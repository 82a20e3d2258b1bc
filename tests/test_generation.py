"""task=generation on the tiny Llama: the loss covers only the targets, every method trains and
round-trips, decoding agrees with a hand-written greedy loop and with itself batched, the
metrics equal hand-computed values, and bad input gets its one-line error."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.config import GenConfig, RunConfig, load_config
from softprompt.core import forward as core
from softprompt.data.pairs import TextPair, read_pairs
from softprompt.errors import SoftpromptError
from softprompt.generation.decode import decode
from softprompt.generation.metrics import text_metrics
from softprompt.methods import METHODS
from softprompt.prompts import Template
from softprompt.tasks.generation import build_generator
from softprompt.tasks.generation.baselines import delete_words, deletion_lexicon
from softprompt.tasks.generation.model import Row
from softprompt.tasks.loading import load_model

from .conftest import write_jsonl
from .helpers import ctrl_c_at_step

PAIRS = [
    ("you are a stupid cat", "you are a cat"),
    ("shut up you idiot dog", "please be quiet dog"),
    ("what a dumb idea", "what an idea"),
    ("this damn movie is bad", "this movie is bad"),
]


@pytest.fixture
def pair_files(tmp_path):
    rows = [{"text": t, "target": y} for t, y in PAIRS]
    return {
        split: write_jsonl(tmp_path / f"pairs-{split}.jsonl", rows * n)
        for split, n in (("train", 3), ("dev", 1), ("test", 1))
    }


@pytest.fixture
def gen_args(tiny_llama_dir, pair_files):
    return [
        "train",
        "task=generation",
        f"backbone={tiny_llama_dir}",
        f"data.train={pair_files['train']}",
        f"data.dev={pair_files['dev']}",
        f"data.test={pair_files['test']}",
        "prompt.init=vocab",
        "prompt.length=3",
        "train.batch_size=4",
        "train.max_steps=4",
        "train.eval_every=2",
        "gen.max_new_tokens=6",
        "--quiet",
    ]


def _generator(backbone, method="prompt_tuning", template="{soft:2}Toxic: {text}\nPolite:{soft:1}", max_length=64):
    config = RunConfig(prompt=load_config(overrides=["prompt.init=random"]).prompt)
    return build_generator(backbone, method, Template(template), config, max_length)


def _full_logits(model, ids: list[int], soft: list[int]) -> torch.Tensor:
    """The plain forward pass of one unpadded row (soft tokens placed), no shortcuts."""
    backbone = model.backbone
    tensor = torch.tensor([ids])
    embeds = core.embed(backbone, tensor, torch.tensor([soft]), model.method.soft_embeddings())
    extra = {}
    if model.method.prefix_length():
        extra["past_key_values"] = model.method.prefix_cache(1)
        size = model.method.prefix_length()
        extra["attention_mask"] = torch.ones(1, size + len(ids), dtype=torch.long)
        extra["position_ids"] = torch.arange(size, size + len(ids)).unsqueeze(0)
    return backbone.model(inputs_embeds=embeds, **extra).logits[0].float()


def test_the_loss_covers_the_target_tokens_and_eos_only(tiny_backbone):
    model = _generator(tiny_backbone)
    pair = TextPair({"text": "you are a stupid cat"}, ("you are a cat",))
    encoded = model.encode_pair(pair)
    prompt, target = encoded.prompt, encoded.targets[0]
    assert target[-1] == model.backbone.tokenizer.eos_token_id
    logits = _full_logits(model, prompt.ids + target, prompt.soft + [-1] * len(target))
    # Position len(prompt) - 1 + t predicts target token t; nothing else is scored.
    start = len(prompt.ids) - 1
    by_hand = torch.stack([-torch.log_softmax(logits[start + t], -1)[token] for t, token in enumerate(target)]).mean()
    assert torch.allclose(model.loss([Row(prompt, target)]), by_hand, atol=1e-5)


def test_a_padded_batch_scores_each_row_as_alone(tiny_backbone):
    model = _generator(tiny_backbone)
    rows = [Row(model.encode_pair(TextPair({"text": t}, (y,))).prompt, model.target_ids(y)) for t, y in PAIRS[:3]]
    losses, valid = model.target_losses(rows)
    for row, row_losses, row_valid in zip(rows, losses, valid, strict=True):
        alone = model.loss([row])
        assert torch.allclose((row_losses * row_valid).sum() / row_valid.sum(), alone, atol=1e-5)
        assert int(row_valid.sum()) == len(row.target)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "lora"])
@pytest.mark.slow
def test_greedy_decoding_matches_a_hand_written_loop(tiny_llama_dir, method):
    template = "Toxic: {text}\nPolite:{soft:2}" if method == "prompt_tuning" else "{soft:2}Toxic: {text}\nPolite:"
    backbone = load_backbone(str(tiny_llama_dir))  # its own: LoRA changes the backbone's layers
    model = _generator(backbone, method, template)
    if method == "lora":  # LoRA starts as the identity: move it off
        with torch.no_grad():
            for param in model.trainable_parameters():
                param.add_(0.3 * torch.randn_like(param))
    settings = GenConfig(max_new_tokens=5)
    prompts = [model.encode_prompt({"text": t}) for t, _ in PAIRS]
    batched = decode(backbone, model.method, prompts, settings, batch_size=4)
    eos = backbone.tokenizer.eos_token_id
    for prompt, got in zip(prompts, batched, strict=True):
        ids, soft, written = list(prompt.ids), list(prompt.soft), []
        for _ in range(settings.max_new_tokens):
            with torch.no_grad():
                token = int(_full_logits(model, ids, soft)[-1].argmax())
            if token == eos:
                break
            ids.append(token)
            soft.append(-1)
            written.append(token)
        assert got == backbone.tokenizer.decode(written, skip_special_tokens=True).strip()


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
@pytest.mark.slow
def test_beam_search_in_a_batch_equals_each_input_alone(tiny_backbone, method):
    backbone = tiny_backbone
    model = _generator(backbone, method, "{soft:2}Toxic: {text}\nPolite:")
    prompts = [model.encode_prompt({"text": t}) for t, _ in PAIRS]
    beams = GenConfig(max_new_tokens=4, num_beams=3)
    together = decode(backbone, model.method, prompts, beams, batch_size=4)
    assert together == [decode(backbone, model.method, [p], beams)[0] for p in prompts]


@pytest.mark.slow
def test_sampling_is_seeded(tiny_backbone):
    backbone = tiny_backbone
    model = _generator(backbone)
    prompts = [model.encode_prompt({"text": t}) for t, _ in PAIRS]
    settings = GenConfig(max_new_tokens=6, do_sample=True, top_p=0.9, seed=3)
    first = decode(backbone, model.method, prompts, settings)
    assert first == decode(backbone, model.method, prompts, settings)
    other = GenConfig(max_new_tokens=6, do_sample=True, top_p=0.9, seed=4)
    assert first != decode(backbone, model.method, prompts, other)


def test_extreme_temperature_and_top_p_still_draw_a_token():
    from softprompt.generation.sampling import draw

    logits = torch.tensor([[0.5, 3.0, -1.0], [2.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    # Dividing by a temperature this small overflows float32: the draw is the most likely token.
    assert draw(logits, 1e-300, 0.9, generator).tolist() == [1, 0]
    # A top_p that is 0 in float32 still keeps the most likely token (not an empty nucleus).
    assert draw(logits, 1.0, 5e-324, generator).tolist() == [1, 0]


@pytest.mark.parametrize("method", [name for name, spec in METHODS.items() if spec.trains])
@pytest.mark.slow
def test_every_method_trains_a_generation_task_and_round_trips(method, gen_args, tmp_path):
    out = tmp_path / method
    assert main([*gen_args, f"method={method}", f"out={out}"]) == 0
    meta = json.loads((out / "task.json").read_text())
    assert meta["task"] == "generation" and {"bleu", "chrf", "rouge_l", "exact_match"} <= set(meta["metrics"]["test"])
    model, _ = load_model(out)
    again, _ = load_model(out)
    pairs = read_pairs(gen_args[5].split("=", 1)[1], "text", "target")
    encoded = model.encode_split(pairs)
    assert model.mean_loss(encoded)["loss"] == pytest.approx(meta["metrics"]["test"]["loss"], rel=1e-4)
    prompts = [e.prompt for e in encoded]
    assert decode(model.backbone, model.method, prompts, model.decoding) == decode(
        again.backbone, again.method, prompts, again.decoding
    )


def test_text_metrics_equal_hand_computed_values():
    # BLEU: 1- to 4-gram precisions 6/7, 5/6, 4/5, 3/4; the output is longer, so no brevity penalty.
    bleu = text_metrics(["the cat sat on the mat today"], [["the cat sat on the mat"]])
    assert bleu["bleu"] == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-6)
    # ROUGE-L: LCS 3 of 3 and of 6 words -> F = 2 * 1 * 0.5 / 1.5; the better of two references counts.
    rouge = text_metrics(["the cat sat"], [["the cat sat on the mat", "a dog"]])
    assert rouge["rouge_l"] == pytest.approx(100 * 2 / 3, abs=1e-6)
    both = text_metrics(["a dog barks", "no"], [["a cat", "a dog barks"], ["yes"]])
    assert both["exact_match"] == 0.5 and both["n"] == 2
    same = text_metrics(["hello there"], [["hello there"]])
    assert same["chrf"] == pytest.approx(100) and same["exact_match"] == 1.0
    assert text_metrics(["xyz"], [["abc"]])["chrf"] == 0


def test_rewrite_metrics_combine_per_sentence(monkeypatch):
    import numpy as np

    from softprompt.tasks.generation import rewriting as rewrite

    class Fixed:
        def __init__(self, values):
            self.values = np.array(values)

        def score(self, texts):
            return self.values

    scorers = {"classifier": Fixed([0.1, 0.9, 0.2]), "profanity": Fixed([0.0, 0.0, 0.8])}
    monkeypatch.setattr(rewrite, "load_scorer", scorers.__getitem__)
    monkeypatch.setattr(rewrite, "similarity", lambda a, b: np.array([0.8, 0.9, 0.5]))
    monkeypatch.setattr(rewrite, "plain_backbone", lambda backbone: backbone)
    # Each text's predicted tokens and the sum of their model log-probs, chosen so that the
    # outputs' perplexities are 10, 20, 300 (a: 2 tokens, -2 ln 10; b: -ln 20; c: -ln 300) and
    # the 20 references' run from 1 to 100.
    scored = {"a": ([0, 1], -2 * math.log(10)), "b": ([2], -math.log(20)), "c": ([3], -math.log(300))}
    references = [([0], -math.log(value)) for value in np.linspace(1, 100, 20)]
    monkeypatch.setattr(
        rewrite, "scored_tokens", lambda backbone, texts: references if texts[0] == "r" else [scored[t] for t in texts]
    )
    # SLOR: tokens 0..3 with unigram probabilities .5, .25, .2499, .0001 (c's token is rare).
    scale = rewrite.FluencyScale(np.log([0.5, 0.25, 0.2499, 0.0001]), threshold=-1.5, fitted_on="by hand")
    chrf_references = [["a"], [], ["zzz"]]  # "a" matches its reference; "b" has none to be scored against
    metrics = rewrite.rewrite_metrics(
        None, ["x", "y", "z"], ["a", "b", "c"], [["r"] * 10, ["r"] * 10], scale, chrf_references
    )
    # STA 1,0,1; SIM .8,.9,.5; FL: the 95th percentile of 1..100 is 95.05 -> 1,1,0.
    assert metrics["sta"] == pytest.approx(2 / 3) and metrics["fl"] == pytest.approx(2 / 3)
    assert metrics["j"] == pytest.approx((0.8 + 0 + 0) / 3)
    assert metrics["sta_profanity"] == pytest.approx(2 / 3)
    assert math.isclose(metrics["fl_threshold_ppl"], 95.05, abs_tol=0.01)
    # SLOR: a (-2 ln 10 - ln .125) / 2 = -1.26 >= -1.5; b -ln 20 - ln .2499 = -1.61 < -1.5;
    # c -ln 300 - ln .0001 = 3.51 >= -1.5.
    assert metrics["fl_slor"] == pytest.approx(2 / 3)
    assert metrics["j_slor"] == pytest.approx((0.8 + 0 + 0.5) / 3)
    # chrF: a = 1 against "a", c = 0 against "zzz", b left out.
    assert metrics["n_chrf"] == 2 and metrics["j_chrf"] == pytest.approx((0.8 * 1 + 0.5 * 0) / 2)
    assert metrics["slor_fitted_on"] == "by hand"


def test_slor_is_fitted_on_held_out_text_and_computed_from_the_model(tiny_llama_dir):
    import numpy as np

    from softprompt.backbones import load_backbone
    from softprompt.tasks.generation import rewriting as rewrite

    backbone = load_backbone(str(tiny_llama_dir), "cpu")
    tokenizer = backbone.tokenizer
    texts, references = ["the cat sat", "the dog ran", "a cat ran"], ["the cat ran", "a dog sat", "the cat"]
    scale = rewrite.fit_fluency_scale(backbone, texts, references, "these texts")
    # The unigram model: add-one counts over the fitting texts' tokens.
    counts = np.ones_like(scale.log_unigram)
    for text in texts:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            counts[token] += 1
    assert np.allclose(scale.log_unigram, np.log(counts / counts.sum()))
    # One reference's SLOR by hand: the model's log-probs of every token after the first.
    lead = list(rewrite.special_affixes(tokenizer)[0])
    ids = lead + tokenizer("the cat ran", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = backbone.model(torch.tensor([ids])).logits[0, :-1].float()
    logprob = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum().item()
    expected = (logprob - np.log(counts / counts.sum())[ids[1:]].sum()) / len(ids[1:])
    values = scale.slor(backbone, references)
    assert values[0] == pytest.approx(expected, abs=1e-4)
    assert scale.threshold == pytest.approx(np.percentile(values, rewrite.SLOR_PERCENTILE))


def test_the_delete_baseline_learns_its_lexicon_from_the_edits():
    train = [TextPair({"text": f"you {w} cat"}, ("you cat",)) for w in ("stupid",) * 3 + ("dumb",) * 2]
    train.append(TextPair({"text": "the cat"}, ("the cat",)))
    lexicon = deletion_lexicon(train)
    assert lexicon == {"stupid"}  # "dumb" was dropped only twice
    assert delete_words("What a  STUPID idea", lexicon) == "What a idea"


def test_bad_generation_input_gets_one_line_errors(gen_args, tmp_path, capsys):
    def bad(args, expected):
        assert main(args) != 0
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err

    missing = write_jsonl(tmp_path / "missing.jsonl", [{"text": "a", "target": "b"}, {"text": "c", "output": "d"}])
    bad([*gen_args, f"data.train={missing}", f"out={tmp_path / 'm'}"], f"{missing} line 2: no column 'target'")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "a", "target": "b"}, {"text": "c", "target": " "}])
    bad([*gen_args, f"data.train={empty}", f"out={tmp_path / 'e'}"], f"{empty} line 2: empty target")
    bad([*gen_args, "gen.num_beams=0", f"out={tmp_path / 'b'}"], "gen.num_beams': must be >= 1")


@pytest.mark.parametrize("max_length", [12, 4])
def test_a_too_small_max_length_is_reported_as_set(gen_args, tmp_path, capsys, max_length):
    assert main([*gen_args, f"train.max_length={max_length}", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"does not fit in train.max_length={max_length} tokens (" in err and len(err.splitlines()) == 1, err


def test_long_targets_are_cut_and_counted(gen_args, tmp_path):
    from softprompt.training.run import train

    long = write_jsonl(tmp_path / "long.jsonl", [{"text": "a b", "target": "word " * 80}] * 4)
    overrides = [a for a in gen_args[1:] if "=" in a and not a.startswith("data.")]
    config = load_config(overrides=[*overrides, f"data.train={long}", f"data.dev={long}", "train.max_length=64"])
    result = train(dataclasses.replace(config, out=str(tmp_path / "long")), progress=False)
    assert "train: 4 of 4 texts were shortened to fit train.max_length=64" in result.notes
    model = result.model
    encoded = model.encode_pair(TextPair({"text": "a b"}, ("word " * 80,)))
    assert len(encoded.prompt.ids) + len(encoded.targets[0]) <= 64
    assert encoded.targets[0][-1] == model.backbone.tokenizer.eos_token_id  # the end is still taught


@pytest.mark.slow
def test_predict_and_generate_refuse_each_others_artifacts(gen_args, base_args, tmp_path, capsys):
    gen_out, cls_out = tmp_path / "gen", tmp_path / "cls"
    assert main([*gen_args, f"out={gen_out}"]) == 0
    assert main(["train", *base_args, "train.max_steps=1", f"out={cls_out}"]) == 0
    capsys.readouterr()
    assert main(["predict", str(gen_out), "hello"]) != 0
    assert "use `softprompt generate`" in capsys.readouterr().err
    assert main(["generate", str(cls_out), "hello"]) != 0
    assert "use `softprompt predict`" in capsys.readouterr().err
    assert main(["generate", str(gen_out), "you are a stupid cat", "num_beams=2", "max_new_tokens=3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert line["text"] == "you are a stupid cat" and isinstance(line["output"], str)


@pytest.mark.slow
def test_the_python_api_trains_and_generates(tiny_llama_dir, tmp_path):
    import softprompt

    rows = [{"text": t, "target": y} for t, y in PAIRS] * 3
    result = softprompt.train(
        task="generation",
        backbone=str(tiny_llama_dir),
        train_data=rows,
        out=str(tmp_path / "api"),
        progress=False,
        prompt={"init": "vocab", "length": 2},
        train={"max_steps": 2, "batch_size": 4},
        gen={"max_new_tokens": 4},
    )
    model = result.model
    greedy = model.generate(["you are a stupid cat", "what a dumb idea"])
    assert len(greedy) == 2 and greedy == model.generate(["you are a stupid cat", "what a dumb idea"])
    beams = model.generate("you are a stupid cat", num_beams=3, max_new_tokens=2)
    assert len(beams) == 1 and model.module.decoding.num_beams == 1  # the override was for that call only
    with pytest.raises(SoftpromptError, match="num_beams"):
        model.generate("x", num_beams=0)
    assert softprompt.load(tmp_path / "api").generate("you are a stupid cat") == greedy[:1]


def test_in_memory_records_with_named_reference_columns_evaluate_after_loading(tiny_llama_dir, tmp_path):
    import softprompt

    rows = [{"text": t, "polite1": y, "polite2": y.upper()} for t, y in PAIRS] * 2
    softprompt.train(
        task="generation",
        backbone=str(tiny_llama_dir),
        train_data=rows,
        dev_data=rows[:4],
        data={"target_field": "polite1,polite2"},
        out=str(tmp_path / "named"),
        progress=False,
        prompt={"init": "vocab", "length": 2},
        train={"max_steps": 1, "batch_size": 4},
        gen={"max_new_tokens": 2},
    )
    # The columns are recorded with the run, so records read later are read the same way.
    metrics = softprompt.load(tmp_path / "named").evaluate(rows[:4])
    assert metrics["n"] == 4 and 0 <= metrics["chrf"] <= 100


@pytest.mark.slow
def test_an_interrupted_generation_run_resumes_to_the_uninterrupted_one(gen_args, tmp_path):
    from softprompt.artifact import read_artifact
    from softprompt.training.run import train

    overrides = [a for a in gen_args[1:] if "=" in a] + ["train.max_steps=6", "train.eval_every=2", "train.lr=0.05"]

    def run(out, resume=False):
        return train(load_config(overrides=[*overrides, f"out={out}"]), resume=resume, progress=False)

    straight = run(tmp_path / "a")
    with ctrl_c_at_step(4), pytest.raises(KeyboardInterrupt):  # after the step-2 checkpoint and one more step
        run(tmp_path / "b")
    resumed = run(tmp_path / "b", resume=True)
    a, b = read_artifact(tmp_path / "a"), read_artifact(tmp_path / "b")
    assert torch.equal(a.state["prompt_embeddings"], b.state["prompt_embeddings"])
    assert resumed.metrics["test"] == straight.metrics["test"]


@pytest.mark.slow
def test_compare_reports_generation_methods_and_baselines_in_one_table(gen_args, tmp_path, capsys):
    from softprompt.cli.compare import compare

    overrides = [a for a in gen_args[1:] if "=" in a]
    plan = ["methods=prompt_tuning", "baselines=zero_shot,copy,delete,references", "fewshot=0"]
    rows, out = compare(None, [*overrides, *plan, f"out={tmp_path / 'cmp'}"], progress=lambda _: None)
    names = [row.name for row in rows]
    assert names[0] == "prompt_tuning" and "zero-shot" in names and "copy the input" in names
    assert any(n.startswith("delete (") for n in names) and "human references" in names
    assert all(row.status == "ok" and row.metrics and "bleu" in row.metrics for row in rows)
    copy = next(row for row in rows if row.name == "copy the input")
    references = [[y] for _, y in PAIRS]
    assert copy.metrics["bleu"] == pytest.approx(text_metrics([t for t, _ in PAIRS], references)["bleu"])
    table = (out / "compare.md").read_text()
    header = "| method | lr | J | STA | SIM | FL | J (FL_SLOR) | FL_SLOR | J (chrF) | BLEU | chrF | ROUGE-L |"
    assert header in table and "| prompt_tuning |" in table
    saved = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in saved["rows"]] == names


@pytest.mark.slow
def test_grad_accum_2_of_batch_4_makes_the_update_of_batch_8(gen_args, tmp_path):
    """The loss is a mean over target tokens and the rows' targets differ in length: each part of
    a step weighs by its share of the step's target tokens, not of its rows (float32 rounding
    of differently padded parts apart: 1e-5)."""
    from softprompt.artifact import read_artifact

    common = [a for a in gen_args if not a.startswith(("train.batch_size", "data.test"))]
    runs = {"one": ["train.batch_size=8"], "two": ["train.batch_size=4", "train.grad_accum=2"]}
    for name, batching in runs.items():
        assert main([*common, *batching, "train.lr=0.05", f"out={tmp_path / name}"]) == 0
    one, two = (read_artifact(tmp_path / name).state["prompt_embeddings"] for name in runs)
    assert torch.allclose(one, two, atol=1e-5)


@pytest.mark.slow
def test_the_default_init_of_a_template_without_words_starts_from_the_vocabulary(gen_args, tmp_path, capsys):
    """prompt.init=labels (the default) on a generation template with no words of its own trains,
    its prompt starting as prompt.init=vocab's, with one info line saying so."""
    settings = [a for a in gen_args if not a.startswith(("prompt.init=", "train.max_steps=", "train.eval_every="))]
    steps = ["template={soft:4}{text}", "train.max_steps=1", "train.eval_every=1", f"out={tmp_path / 'run'}"]
    assert main([*settings, *steps]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if "prompt.init" in line] == [
        "prompt.init=labels: no label words to start from, so the prompt starts as prompt.init=vocab"
    ]
    backbone, template = load_backbone(gen_args[2].split("=", 1)[1]), Template("{soft:4}{text}")
    starts = [
        build_generator(backbone, "prompt_tuning", template, load_config(overrides=[f"prompt.init={init}"]), 64)
        for init in ("labels", "vocab")
    ]
    assert torch.equal(*(model.method.prompt_embeddings for model in starts))
