import pytest
from transformers import AutoTokenizer

from softprompt.errors import SoftpromptError
from softprompt.prompts import Template
from softprompt.prompts.template import NO_SOFT

from .conftest import ASSETS


@pytest.fixture(scope="module")
def bpe():
    return AutoTokenizer.from_pretrained(ASSETS / "tiny-bpe")


@pytest.fixture(scope="module")
def wordpiece():
    return AutoTokenizer.from_pretrained(ASSETS / "tiny-wordpiece")


def test_parse_soft_slots_anywhere():
    t = Template("{soft:10} Review: {text}\nSentiment:{soft:4}")
    assert [s.kind for s in t.segments] == ["soft", "text", "field", "text", "soft"]
    assert t.num_soft == 14 and t.leading_soft == 10 and t.fields == ["text"]


def test_render_and_escaped_braces():
    t = Template("{{literal}} {title}: {text}{soft}")
    assert t.render({"title": "T", "text": "x"}) == "{literal} T: x<soft>"
    assert t.num_soft == 1 and t.fields == ["title", "text"]


@pytest.mark.parametrize(
    "source, message",
    [
        ("Review: nothing here", "no input field"),
        ("{text} {soft:0}", ">= 1"),
        ("{soft:-3}Review: {text}", r"\{soft:-3\} needs a whole number of soft tokens >= 1"),
        ("{soft:2.5}Review: {text}", r"\{soft:2.5\} needs a whole number"),
        ("{soft:x} {text}", "needs a whole number"),
        ("{ text} {text}", "unbalanced brace"),
        ("{text} {oops", "unbalanced brace"),
        ("{text:3}", "only soft slots take a count"),
    ],
)
def test_bad_templates(source, message):
    with pytest.raises(SoftpromptError, match=message):
        Template(source)


def test_unknown_field_is_reported():
    with pytest.raises(SoftpromptError, match=r"template field \{title\} is not in train.jsonl"):
        Template("{title} {text}").check_fields({"text", "label"}, "train.jsonl")


def test_causal_encoding_marks_soft_positions_in_order(bpe):
    t = Template("{soft:2} Review: {text}\nSentiment:{soft:3}")
    enc = t.encode({"text": "a great movie"}, bpe, causal=True, max_length=64)
    assert enc.soft[:2] == [0, 1] and enc.soft[-3:] == [2, 3, 4]
    middle = enc.ids[2:-3]
    assert bpe.decode(middle) == " Review: a great movie\nSentiment:"
    assert all(s == NO_SOFT for s in enc.soft[2:-3])


def test_literal_and_field_are_tokenized_together(bpe):
    enc = Template("Review: {text}").encode({"text": "great"}, bpe, causal=True, max_length=64)
    assert enc.ids == bpe("Review: great", add_special_tokens=False)["input_ids"]


def test_encoder_layout_and_mask_position(wordpiece):
    t = Template("{soft:2} {text} it was {mask}.")
    enc = t.encode({"text": "great movie"}, wordpiece, causal=False, max_length=64)
    assert enc.ids[0] == wordpiece.cls_token_id and enc.ids[-1] == wordpiece.sep_token_id
    assert enc.soft[1:3] == [0, 1]
    assert enc.ids[enc.mask_position] == wordpiece.mask_token_id
    cls_only = Template("{text}").encode({"text": "great"}, wordpiece, causal=False, max_length=64)
    assert cls_only.mask_position == 0


def test_long_input_is_truncated_to_max_length(bpe):
    t = Template("{soft:4}Review: {text}\nSentiment:")
    long_text = "a great movie " * 200
    enc = t.encode({"text": long_text}, bpe, causal=True, max_length=40)
    assert len(enc.ids) <= 40
    assert bpe.decode(enc.ids).endswith("\nSentiment:")


def test_template_that_cannot_fit_is_refused(bpe):
    with pytest.raises(SoftpromptError, match="does not fit"):
        Template("{soft:30}{text}").encode({"text": "great"}, bpe, causal=True, max_length=10)


def test_with_prefix_and_without_soft():
    t = Template("Review: {{x}} {text}")
    assert t.with_prefix(5).leading_soft == 5
    assert Template("{soft:3}A {text}{soft:2}").without_soft().source == "A {text}"
