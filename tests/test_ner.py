"""NER: the CoNLL reader, windows and sub-word alignment, entity metrics, and every method
through `softprompt train task=ner` → `eval` → `tag` on a tiny BERT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.config import PromptConfig
from softprompt.data.conll import Sentence, entity_spans, iob1_to_iob2, read_conll, tag_set
from softprompt.errors import SoftpromptError
from softprompt.methods import METHODS
from softprompt.tasks.loading import load_model
from softprompt.tasks.ner import build_tagger
from softprompt.tasks.ner.batches import IGNORE, entities, split_words
from softprompt.tasks.ner.metrics import entity_metrics

from .conftest import write_jsonl

TRAINED = [name for name, spec in METHODS.items() if spec.trains]

# Two-column IOB2 data, built from words of the tiny WordPiece vocabulary.
SENTENCES = [
    [("angela", "B-PER"), ("merkel", "I-PER"), ("visited", "O"), ("paris", "B-LOC"), ("on", "O"), ("monday", "O")],
    [("smith", "B-PER"), ("visited", "O"), ("corp", "B-ORG"), (".", "O")],
    [("paris", "B-LOC"), ("visited", "O"), ("smith", "B-PER"), ("of", "O"), ("corp", "B-ORG")],
]


def write_conll(path: Path, sentences, columns: int = 2, docstart: bool = False) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in sentences:
        for word, tag in sentence:
            lines.append(f"{word} NNP B-NP {tag}" if columns == 4 else f"{word}\t{tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def conll_files(tmp_path) -> dict[str, Path]:
    return {
        "train": write_conll(tmp_path / "train.txt", SENTENCES * 3),
        "dev": write_conll(tmp_path / "dev.txt", SENTENCES, columns=4, docstart=True),
    }


# ---- reader ---------------------------------------------------------------------------------------
def test_reader_accepts_two_and_four_columns_and_docstart(tmp_path):
    two = read_conll(write_conll(tmp_path / "a.txt", SENTENCES))
    four = read_conll(write_conll(tmp_path / "b.txt", SENTENCES, columns=4, docstart=True))
    assert [s.words for s in two] == [s.words for s in four] == [[w for w, _ in s] for s in SENTENCES]
    assert [s.tags for s in two] == [s.tags for s in four] == [[t for _, t in s] for s in SENTENCES]
    assert four[0].line == 3  # after the -DOCSTART- line and its blank line


def test_iob1_becomes_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    ]
    iob2 = ["B-PER", "I-PER", "B-PER", "O"]
    assert iob1_to_iob2(iob2) == iob2


def test_iob1_file_reads_as_iob2(tmp_path):
    path = tmp_path / "iob1.txt"
    path.write_text("Angela I-PER\nMerkel I-PER\nin O\nParis I-LOC\n", encoding="utf-8")
    assert read_conll(path)[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a O\nb c O\n", "line 2: 3 column(s), expected 2"),
        ("a O\nb\n", "line 2: 1 column(s)"),
        ("a O\nb X-PER\n", "line 2: tag 'X-PER'"),
        ("", "holds no tagged sentences"),
        ("-DOCSTART- O\n\n", "holds no tagged sentences"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SoftpromptError, match=re.escape(message)) as caught:
        read_conll(path)
    assert str(path) in str(caught.value)


def test_tag_set_and_spans():
    sentences = [Sentence(["a", "b"], ["B-PER", "O"]), Sentence(["c"], ["B-LOC"])]
    assert tag_set(sentences) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("LOC", 4, 5),
        ("ORG", 5, 6),
    ]


# ---- metrics ------------------------------------------------------------------------------------
def test_entity_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-LOC"]]
    metrics = entity_metrics(gold, predicted)
    # gold: PER(0-2) LOC(3) ORG(0); predicted: PER(0-2) ORG(3) LOC(1): 1 of 3 right either way.
    assert metrics["precision"] == pytest.approx(1 / 3)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(1 / 3)
    assert metrics["per_type"]["PER"]["f1"] == 1.0
    assert metrics["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["confusion"] == {"PER": {"PER": 1}, "LOC": {"ORG": 1}, "ORG": {"O": 1}, "O": {"LOC": 1}}


# ---- windows and alignment ----------------------------------------------------------------------
def _tagger(bert_dir, method="prompt_tuning", max_length=64, length=3):
    backbone = load_backbone(str(bert_dir))
    tags = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    return build_tagger(backbone, method, tags, PromptConfig(length=length, init="vocab"), 0, max_length)


def test_labels_sit_on_first_subtokens_after_cls_and_soft_tokens(tiny_bert_dir):
    tagger = _tagger(tiny_bert_dir)
    sentence = Sentence(["german", "paris"], ["B-MISC", "B-LOC"])
    with pytest.raises(SoftpromptError, match="line 7: tag 'B-MISC' was not in the training data"):
        tagger.task.encode(Sentence(sentence.words, sentence.tags, line=7), 0, "dev.txt")
    (window,) = tagger.task.encode(Sentence(["german", "paris"], ["B-PER", "B-LOC"]), 0, "dev.txt")
    pieces = tagger.backbone.tokenizer.tokenize("german")
    assert len(pieces) > 1  # a word split into several sub-tokens
    assert window.soft[:5] == [-1, 0, 1, 2, -1]  # [CLS], 3 soft tokens, then the words
    assert window.word_starts == [4, 4 + len(pieces)]
    expected = [IGNORE] * len(window.ids)
    expected[4], expected[4 + len(pieces)] = tagger.task.index["B-PER"], tagger.task.index["B-LOC"]
    assert window.labels == expected


def test_long_sentence_is_split_into_windows_and_every_word_is_tagged(tiny_bert_dir):
    tagger = _tagger(tiny_bert_dir, max_length=12)  # 12 - [CLS] - [SEP] - 3 soft = 7 sub-tokens per window
    words = ["angela", "merkel", "visited", "paris", "on", "monday"] * 5
    windows = tagger.task.encode(Sentence(words, []), 0)
    assert len(windows) > 1
    assert all(len(w.ids) <= 12 for w in windows)
    assert sum(len(w.word_starts) for w in windows) == len(words)
    (tags,) = tagger.predict([Sentence(words, [])])
    assert len(tags) == len(words)


def test_unknown_and_vanishing_characters_still_get_a_tag(tiny_bert_dir):
    tagger = _tagger(tiny_bert_dir)
    words = ["paris", "😀", "\u200b", "smith"]  # an emoji maps to [UNK]; a zero-width space to nothing
    pieces, unknown = tagger.task.word_pieces(words)
    assert all(pieces) and unknown == 2
    (tags,) = tagger.predict([Sentence(words, [])])
    assert len(tags) == 4


def test_entities_carry_character_offsets():
    text = "Angela Merkel visited Paris, on Monday."
    spans = split_words(text)
    assert [w for w, _, _ in spans] == ["Angela", "Merkel", "visited", "Paris", ",", "on", "Monday", "."]
    found = entities(text, spans, ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O", "O"])
    assert found == [
        {"text": "Angela Merkel", "type": "PER", "start": 0, "end": 13},
        {"text": "Paris", "type": "LOC", "start": 22, "end": 27},
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)


def test_only_the_method_and_head_train(tiny_bert_dir):
    tagger = _tagger(tiny_bert_dir, method="prefix_tuning")
    rows = tagger.encode_split([Sentence(w, t) for w, t in (zip(*s, strict=True) for s in SENTENCES)], "train")
    tagger.loss([w for ws in rows for w in ws]).backward()
    trainable = {id(p) for p in tagger.trainable_parameters()}
    assert any(id(p) in trainable for p in tagger.head.parameters())
    assert all(p.grad is None for p in tagger.backbone.model.parameters() if id(p) not in trainable)
    assert all(p.grad is not None for p in tagger.trainable_parameters())


# ---- the command line ---------------------------------------------------------------------------
def _train_args(bert_dir, files, method, out):
    return [
        "train",
        "task=ner",
        f"backbone={bert_dir}",
        f"method={method}",
        f"data.train={files['train']}",
        f"data.dev={files['dev']}",
        f"out={out}",
        "prompt.length=3",
        "prompt.init=vocab",
        "train.batch_size=3",
        "--quiet",
    ]


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.slow
def test_every_method_trains_evaluates_and_tags(method, tiny_bert_dir, conll_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_train_args(tiny_bert_dir, conll_files, method, out), "train.max_steps=2"]) == 0
    assert "best dev entity F1" in capsys.readouterr().out
    meta = json.loads((out / "task.json").read_text())
    assert meta["task"] == "ner" and meta["tags"] == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    head = 7 * 32 + 7  # the tag head trains (and counts) in every method
    assert meta["trainable_parameters"] >= head
    assert main(["eval", str(out), "--data", str(conll_files["dev"]), "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 3 and set(metrics) >= {"f1", "precision", "recall", "per_type", "confusion"}
    # save -> load reproduces the trained model's predictions exactly
    loaded, _ = load_model(out)
    sentences = read_conll(conll_files["dev"])
    with torch.inference_mode():
        batch = loaded.task.collate([w for ws in loaded.encode_split(sentences) for w in ws])
        again, _ = load_model(out)
        assert torch.equal(loaded(batch), again(batch))
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "ner" and summary["tags"] == meta["tags"]
    assert main(["tag", str(out), "Angela Merkel visited Paris on Monday."]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["text"] == "Angela Merkel visited Paris on Monday."
    for entity in line["entities"]:
        assert line["text"][entity["start"] : entity["end"]] == entity["text"]


@pytest.mark.slow
def test_a_tagger_learns_the_fixture(tiny_bert_dir, conll_files, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*_train_args(tiny_bert_dir, conll_files, "full", out), "train.max_steps=40", "train.lr=0.01"]
    assert main([*args, "train.eval_every=20"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(conll_files["dev"]), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == 1.0
    assert main(["tag", str(out), "Smith visited Paris ."]) == 0
    found = json.loads(capsys.readouterr().out)["entities"]
    assert [(e["text"], e["type"]) for e in found] == [("Smith", "PER"), ("Paris", "LOC")]


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tiny_bert_dir, tiny_llama_dir, conll_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_train_args(tiny_bert_dir, conll_files, "lora", out), "train.max_steps=1"]) == 0
    capsys.readouterr()
    unknown = write_conll(tmp_path / "test.txt", [[("paris", "B-MISC")]])
    assert main(["eval", str(out), "--data", str(unknown), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{unknown} line 1: tag 'B-MISC' was not in the training data" in err and "Traceback" not in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", str(out), "--data", str(empty)]) == 2
    assert "holds no tagged sentences" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("paris B-LOC\nvisited\n")
    files = {"train": bad, "dev": conll_files["dev"]}
    assert main([*_train_args(tiny_bert_dir, files, "lora", tmp_path / "x"), "train.max_steps=1"]) == 2
    assert f"{bad} line 2: 1 column(s)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert main([*_train_args(tiny_llama_dir, conll_files, "lora", tmp_path / "y"), "train.max_steps=1"]) == 2
    assert "task=ner needs an encoder backbone" in capsys.readouterr().err
    assert main(["predict", str(out), "hello"]) == 2
    assert "is a ner model" in capsys.readouterr().err
    jsonl = write_jsonl(tmp_path / "reviews.jsonl", [{"text": "a dull film", "label": "negative"}])
    files = {"train": jsonl, "dev": conll_files["dev"]}
    assert main([*_train_args(tiny_bert_dir, files, "lora", tmp_path / "j"), "train.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"error: {jsonl}: task=ner reads CoNLL files ('token ... TAG' per line" in err and len(err.splitlines()) == 1
    assert main(["eval", str(out), "--data", str(tmp_path)]) == 2
    assert f"data file {tmp_path} is a directory; give a file (CoNLL" in capsys.readouterr().err


@pytest.mark.slow
def test_grad_accum_2_of_batch_3_makes_the_update_of_batch_6(tiny_bert_dir, conll_files, tmp_path):
    """The loss is a mean over tagged words and the sentences differ in length: each part of a
    step weighs by its share of the step's words, not of its windows (rounding apart: 1e-5)."""
    from softprompt.artifact import read_artifact

    runs = {"one": ["train.batch_size=6"], "two": ["train.batch_size=3", "train.grad_accum=2"]}
    for name, batching in runs.items():
        args = _train_args(tiny_bert_dir, conll_files, "prompt_tuning", tmp_path / name)
        assert main([*args, *batching, "train.max_steps=3", "train.eval_every=3", "train.lr=0.05"]) == 0
    one, two = (read_artifact(tmp_path / name).state for name in runs)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
