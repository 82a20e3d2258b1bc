import pytest

from softprompt.data.records import read_examples, seeded_split
from softprompt.datasets import builtin_specs, get_spec
from softprompt.errors import SoftpromptError


def test_jsonl_csv_tsv_with_configurable_columns(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"review": "good", "y": 1}\n\n{"review": "bad", "y": 0}\n')
    (tmp_path / "a.csv").write_text('review,y\n"good, really",1\nbad,0\n')
    (tmp_path / "a.tsv").write_text("review\ty\ngood\t1\nbad\t0\n")
    for name in ("a.jsonl", "a.csv", "a.tsv"):
        data = read_examples(tmp_path / name, text_field="review", label_field="y")
        assert [e.label for e in data.examples] == ["1", "0"]
        assert data.examples[0].text.startswith("good")


def test_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    from softprompt.data.conll import read_conll

    bom = b"\xef\xbb\xbf"  # Excel's "CSV UTF-8", Notepad's "UTF-8 with BOM"
    (tmp_path / "a.csv").write_bytes(bom + b"text,label\ngood,positive\n")
    (tmp_path / "a.tsv").write_bytes(bom + b"text\tlabel\ngood\tpositive\n")
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "good", "label": "positive"}\n')
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        data = read_examples(tmp_path / name)
        assert [(e.text, e.label) for e in data.examples] == [("good", "positive")], name
    (tmp_path / "a.conll").write_bytes(bom + b"EU B-ORG\nrejects O\n")
    assert read_conll(tmp_path / "a.conll")[0].words == ["EU", "rejects"]


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(SoftpromptError, match=r"bad.jsonl line 2: malformed JSON"):
        read_examples(path)


def test_missing_column_names_line_and_fix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,sentiment\ngood,pos\n")
    with pytest.raises(
        SoftpromptError,
        match=r"d.csv line 2: no column 'label' \(columns: sentiment, text\); "
        r"set data.label_field",
    ):
        read_examples(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SoftpromptError, match="does not exist"):
        read_examples(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SoftpromptError, match="is empty"):
        read_examples(tmp_path / "empty.jsonl")
    with pytest.raises(SoftpromptError, match="unsupported file type"):
        read_examples(tmp_path / "empty.txt") if (tmp_path / "empty.txt").write_text("x") else None


def test_empty_texts_are_skipped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "", "label": "a"}\n{"text": "  ", "label": "a"}\n{"text": "ok", "label": "b"}\n')
    data = read_examples(path)
    assert len(data.examples) == 1 and data.skipped_empty == 2
    assert "skipped 2 rows with empty text" in data.notes[0]


def test_seeded_split_is_fixed_and_disjoint(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"text": "t{i}", "label": "a"}}\n' for i in range(50)))
    examples = read_examples(path).examples
    a = seeded_split(examples, {"test": 10, "dev": 5}, seed=1)
    b = seeded_split(examples, {"test": 10, "dev": 5}, seed=1)
    assert a == b and len(a["train"]) == 35
    assert not {e.text for e in a["test"]} & {e.text for e in a["train"]}


def test_builtin_specs_and_misspelling():
    assert {"rotten-tomatoes", "chinese-reviews"} <= set(builtin_specs())
    with pytest.raises(SoftpromptError, match="did you mean 'rotten-tomatoes'"):
        get_spec("roten-tomatoes")
