"""The OpenAI fields clients send that change the answer: chat's ``logprobs``/``top_logprobs`` and
token-id prompts on ``/v1/completions`` (a list of ints, or a list of such lists, as
lm-evaluation-harness sends by default)."""

from __future__ import annotations

import pytest

from softprompt.generation.scoring import score_tokens
from softprompt.serving.app import GenerateRequest
from softprompt.serving.writing import WriteJob

from .helpers import generate
from .test_generation import PAIRS
from .test_serving_generation import openai_client, served_dir, service  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")


def generated_ids(served, prompt, tokens: int) -> list[int]:
    """The ids the server writes greedily after a rendered ``prompt`` (text or ids): the decoded
    text of a tiny random model need not tokenize back to them."""
    heard: list[int] = []
    generate(
        served, [WriteJob("polite", prompt, tokens, 0.0, listener=lambda _, ids, __: heard.extend(ids), rendered=True)]
    )
    return heard


CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


@pytest.mark.slow
def test_chat_logprobs_are_the_models_own_for_the_tokens_it_wrote(openai_client, service):  # noqa: F811
    tokenizer, writer = service.backbone.tokenizer, service.tasks.writers["polite"]
    messages = [{"role": "user", "content": "you idiot"}]
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        plain = openai_client.chat.completions.create(model="polite", messages=messages, max_tokens=5, temperature=0)
        answer = openai_client.chat.completions.create(
            model="polite", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
        )
        assert plain.choices[0].logprobs is None
        choice = answer.choices[0]
        assert choice.message.content == plain.choices[0].message.content
        content = choice.logprobs.content
        assert "".join(entry.token for entry in content) == choice.message.content
        assert all(entry.bytes == list(entry.token.encode()) for entry in content)
        # By hand: the generated ids after [soft prompt, the chat-rendered prompt], one forward pass.
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = generated_ids(service, rendered, 5)
        assert tokenizer.decode(ids) == choice.message.content
        expected = score_tokens(service.backbone, writer.soft, tokenizer(rendered)["input_ids"], ids, 3)
        assert [entry.logprob for entry in content] == pytest.approx(expected.logprobs, abs=1e-4)
        for entry, place in zip(content, expected.top, strict=True):
            assert len(entry.top_logprobs) == 3
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(list(place.values()), abs=1e-4)
            assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
        without_top = openai_client.chat.completions.create(
            model="polite", messages=messages, max_tokens=5, temperature=0, logprobs=True
        )
        assert all(entry.top_logprobs == [] for entry in without_top.choices[0].logprobs.content)
        with pytest.raises(openai.BadRequestError, match="only with logprobs"):
            openai_client.chat.completions.create(model="polite", messages=messages, top_logprobs=2)
        with pytest.raises(openai.BadRequestError, match="answered whole"):
            openai_client.chat.completions.create(model="polite", messages=messages, logprobs=True, stream=True)
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            openai_client.chat.completions.create(model="polite", messages=messages, logprobs=True, top_logprobs=21)
    finally:
        tokenizer.chat_template = None


def test_token_id_prompts_go_where_the_templates_text_goes(openai_client, service):  # noqa: F811
    tokenizer, writer = service.backbone.tokenizer, service.tasks.writers["polite"]
    texts = [PAIRS[0][0], PAIRS[1][0]]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    # The template "Toxic: {text}\nPolite:" tokenized around the ids, nothing added.
    before = tokenizer("Toxic: ", add_special_tokens=False)["input_ids"]
    after = tokenizer("\nPolite:", add_special_tokens=False)["input_ids"]
    assert writer.render(ids[0], tokenizer) == before + ids[0] + after
    one = openai_client.completions.create(model="polite", prompt=ids[0], max_tokens=4, temperature=0)
    job = WriteJob("polite", before + ids[0] + after, 4, 0.0, rendered=True)
    assert one.choices[0].text == generate(service, [job])[0][0]
    assert one.usage.prompt_tokens == len(before + ids[0] + after) + len(writer.soft)
    # A list of token-id lists: one choice per prompt, each as if sent alone.
    both = openai_client.completions.create(model="polite", prompt=ids, max_tokens=4, temperature=0)
    assert both.choices[0].text == one.choices[0].text and len(both.choices) == 2
    alone = openai_client.completions.create(model="polite", prompt=ids[1], max_tokens=4, temperature=0)
    assert both.choices[1].text == alone.choices[0].text
    # echo with logprobs scores exactly the ids read: the template's, the client's, then the completion's.
    scored = openai_client.completions.create(
        model="polite", prompt=ids[0], max_tokens=2, temperature=0, echo=True, logprobs=0
    )
    read = before + ids[0] + after
    tail = generated_ids(service, read, 2)
    expected = score_tokens(service.backbone, writer.soft, [], read + tail)
    assert scored.choices[0].logprobs.token_logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    assert scored.choices[0].text == tokenizer.decode(read) + tokenizer.decode(tail)


def test_token_id_prompts_with_text_prompts_unchanged_and_bad_ids_refused(openai_client, service):  # noqa: F811
    text = PAIRS[2][0]
    as_text = openai_client.completions.create(model="nice", prompt=text, max_tokens=3, temperature=0)
    expected = generate(service, [GenerateRequest(task="nice", prompt=text, max_new_tokens=3, temperature=0)])[0][0]
    assert as_text.choices[0].text == expected
    vocabulary = len(service.backbone.tokenizer)
    with pytest.raises(openai.BadRequestError, match=f"token id {vocabulary} is not in the vocabulary"):
        openai_client.completions.create(model="nice", prompt=[[5, 6], [7, vocabulary]], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="token id -1"):
        openai_client.completions.create(model="nice", prompt=[5, -1], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        openai_client.completions.create(model="nice", prompt=[[5], []], max_tokens=2)
