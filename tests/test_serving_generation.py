"""Generation artifacts served: ``/v1/generate`` with mixed soft prompts in one continuously
batched decoding batch, the OpenAI-compatible completions and chat routes driven by the official
``openai`` client, and the vLLM bridge (prompt embeddings)."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.core.prompt_caches import PromptCaches
from softprompt.errors import SoftpromptError
from softprompt.generation.decode import decode
from softprompt.generation.running import RunningBatch
from softprompt.generation.sampling import prompt_ids
from softprompt.serving.app import GenerateRequest, ServeSettings, Service, create_app
from softprompt.serving.vllm import input_embeddings, vllm_completion_request
from softprompt.serving.writing import WriteJob, sample_request, visible_text, writer_cache_key
from softprompt.tasks.classification.model import label_probabilities
from softprompt.tasks.loading import load_model

from .helpers import EXAMPLES, classifier, generate, slowed_generation, wait_until
from .test_generation import PAIRS, gen_args, pair_files  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory, tiny_llama_dir):
    """Two generation tasks with different soft prompts, and a classifier beside them."""
    from .conftest import write_jsonl

    root = tmp_path_factory.mktemp("served")
    rows = [{"text": t, "target": y} for t, y in PAIRS]
    data = write_jsonl(root / "pairs.jsonl", rows * 3)
    common = [
        "train",
        "task=generation",
        f"backbone={tiny_llama_dir}",
        f"data.train={data}",
        f"data.dev={data}",
        "prompt.init=vocab",
        "train.batch_size=4",
        "train.max_steps=2",
        "gen.max_new_tokens=5",
        "--quiet",
    ]
    prompts = root / "prompts"
    assert main([*common, "template={soft:3}Toxic: {text}\\nPolite:", f"out={prompts / 'polite'}", "seed=1"]) == 0
    assert main([*common, "template={soft:2}Rude: {text} Nice:", f"out={prompts / 'nice'}", "seed=2"]) == 0
    return prompts


@pytest.fixture(scope="module")
def service(served_dir, tiny_llama_dir):
    # Its own backbone, not the session's: the chat tests set its tokenizer's chat template.
    return Service(load_backbone(str(tiny_llama_dir)), served_dir)


def test_generation_artifacts_are_served_with_their_templates(service):
    listing = {t["name"]: t for t in service.tasks.describe()}
    assert listing["polite"]["kind"] == "generate" and listing["polite"]["template"].startswith("{soft:3}")
    assert listing["nice"]["soft_tokens"] == 2


def test_served_greedy_output_is_the_artifacts_own(service, served_dir):
    model, _ = load_model(served_dir / "polite", service.backbone)
    text = PAIRS[0][0]
    expected = decode(model.backbone, model.method, [model.encode_prompt({"text": text})], model.decoding)[0]
    got = generate(service, [GenerateRequest(task="polite", prompt=text)])[0][0]
    assert got.strip() == expected


def test_mixed_generation_requests_get_what_each_gets_alone(service):
    payloads = [
        GenerateRequest(task="polite", prompt=PAIRS[0][0], max_new_tokens=4),  # greedy (the task's default)
        GenerateRequest(task="nice", prompt=PAIRS[1][0], temperature=0.9, top_p=0.8, samples=2, seed=5),
        GenerateRequest(task="polite", prompt=PAIRS[2][0], temperature=1.2, seed=7),
        GenerateRequest(task="nice", prompt="short", temperature=0),
    ]
    together = generate(service, payloads)
    assert together == [generate(service, [payload])[0] for payload in payloads]
    assert together[1] == generate(service, [payloads[1]])[0]  # a seed gives the same samples again


@pytest.fixture(scope="module")
def openai_client(service):
    openai = pytest.importorskip("openai")
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as test_client:
        yield openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=test_client)


def test_openai_client_completes_with_a_task(openai_client, service):
    answer = openai_client.completions.create(model="polite", prompt=PAIRS[0][0], max_tokens=4)
    expected = generate(service, [GenerateRequest(task="polite", prompt=PAIRS[0][0], max_new_tokens=4)])[0][0]
    assert answer.object == "text_completion" and answer.model == "polite"
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 4 and answer.usage.prompt_tokens > 3
    several = openai_client.completions.create(
        model="nice", prompt=["a", "b c"], n=2, temperature=0.8, seed=3, max_tokens=3
    )
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    models = [m.id for m in openai_client.models.list()]
    assert sorted(models) == ["nice", "polite"]


def test_openai_client_streams_the_same_text(openai_client):
    whole = openai_client.completions.create(model="nice", prompt="you idiot", max_tokens=5, temperature=0)
    pieces = openai_client.completions.create(
        model="nice", prompt="you idiot", max_tokens=5, temperature=0, stream=True
    )
    chunks = list(pieces)
    assert len(chunks) >= 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_openai_client_gets_a_404_for_an_unknown_model(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.completions.create(model="polit", prompt="x")
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model" and "polit" in error["message"]


def _alone(service, request):
    batch = RunningBatch(service.backbone)
    batch.admit([("alone", request)])
    finished = []
    while batch.members:
        finished += batch.step()
    return finished[0].tokens


def _request(service, task, text, **settings):
    return sample_request(GenerateRequest(task=task, prompt=text, **settings).job(), service.tasks.writers[task])


def test_requests_joining_a_running_batch_get_what_each_gets_alone(service):
    long = _request(service, "polite", PAIRS[0][0], max_new_tokens=12, temperature=0)
    sampled = _request(service, "nice", PAIRS[1][0], max_new_tokens=6, temperature=0.9, top_p=0.8, samples=2, seed=5)
    greedy = _request(service, "nice", "short", max_new_tokens=3, temperature=0)
    batch = RunningBatch(service.backbone)
    batch.admit([("long", long)])
    finished = {m.key: m for m in batch.step(3)}
    batch.admit([("sampled", sampled), ("greedy", greedy)])  # they join the long one mid-way
    assert batch.size == 4
    sizes = []
    while batch.members:
        finished.update({m.key: m for m in batch.step()})
        sizes.append(batch.size)
    assert finished["greedy"].tokens == _alone(service, greedy)
    assert finished["sampled"].tokens == _alone(service, sampled)
    assert finished["long"].tokens == _alone(service, long)
    assert len(finished["long"].tokens[0]) <= 12
    assert sizes[2] < 4  # the 3-token request left after its last token, freeing its row at once


@pytest.mark.slow
def test_a_short_generation_does_not_wait_for_a_long_one(service, monkeypatch):
    import threading
    import time

    slowed_generation(service, monkeypatch, 0.02)
    finished = {}
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as test_client:

        def long_generation():
            body = {"task": "polite", "prompt": "Once", "max_new_tokens": 200, "temperature": 0.01}
            assert test_client.post("/v1/generate", json=body).status_code == 200
            finished["long"] = time.perf_counter()

        thread = threading.Thread(target=long_generation)
        thread.start()
        wait_until(lambda: service.stream.rows, "the long generation to be under way")
        body = {"task": "nice", "prompt": "hi", "max_new_tokens": 4, "temperature": 0}
        answer = test_client.post("/v1/generate", json=body)
        finished["short"] = time.perf_counter()
        assert service.stream.rows == 1  # the short one joined the running batch and left it
        thread.join()
    assert answer.status_code == 200
    assert answer.json()["completions"] == generate(service, [GenerateRequest(**body)])[0]
    assert finished["short"] < finished["long"], "the short generation waited for the long one"


@pytest.mark.slow
def test_a_metrics_scrape_does_not_wait_for_the_worker(service, monkeypatch):
    import threading

    slowed_generation(service, monkeypatch, 0.3)  # every decoding slice holds the worker 0.3 s
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as test_client:
        body = {"task": "polite", "prompt": "Once", "max_new_tokens": 40, "temperature": 0}
        thread = threading.Thread(target=lambda: test_client.post("/v1/generate", json=body))
        thread.start()
        while not service.stream.rows:  # the generation is under way
            pass
        scraped = test_client.get("/metrics")
        still_running = service.stream.rows  # read right after the scrape came back
        thread.join()
    assert scraped.status_code == 200 and "softprompt_generation_rows 1.0" in scraped.text
    assert still_running == 1, "the scrape waited for the generation to end"


def test_stop_strings_end_the_text_before_them_streaming_included(openai_client):
    full = openai_client.completions.create(model="nice", prompt="you idiot", max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert len(text) >= 4, "the tiny model wrote too little to pick a stop string from"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = text[: text.find(stop)]
    cut = openai_client.completions.create(model="nice", prompt="you idiot", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    chunks = list(
        openai_client.completions.create(
            model="nice", prompt="you idiot", max_tokens=12, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_and_echo_are_the_models_own_log_probabilities(openai_client, service):
    backbone, writer = service.backbone, service.tasks.writers["polite"]
    prompt = PAIRS[0][0]
    plain = openai_client.completions.create(model="polite", prompt=prompt, max_tokens=4, temperature=0)
    both = openai_client.completions.create(
        model="polite", prompt=prompt, max_tokens=4, temperature=0, logprobs=3, echo=True
    )
    rendered = writer.render(prompt)
    choice = both.choices[0]
    assert choice.text == rendered + plain.choices[0].text
    generated = _alone(service, _request(service, "polite", prompt, max_new_tokens=4, temperature=0))[0]
    prompt_ids = backbone.tokenizer(rendered)["input_ids"]  # the tiny tokenizer adds no BOS
    ids = prompt_ids + generated
    # By hand: one forward pass over [soft prompt, prompt, completion]; position p predicts p + 1.
    embeds = torch.cat([writer.soft, backbone.model.get_input_embeddings()(torch.tensor(ids))]).unsqueeze(0)
    with torch.no_grad():
        logp = backbone.model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    soft = len(writer.soft)
    expected = [logp[soft + i - 1, token].item() for i, token in enumerate(ids)]
    got = choice.logprobs
    assert got.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert "".join(got.tokens) == choice.text and got.text_offset[0] == 0
    assert got.text_offset[-1] == len(choice.text) - len(got.tokens[-1])
    for place, token_logprob, position in zip(got.top_logprobs, got.token_logprobs, range(len(ids)), strict=True):
        best = logp[soft + position - 1].topk(3).values.tolist()
        assert sorted(place.values(), reverse=True) == pytest.approx(best, abs=1e-4)
        assert token_logprob <= max(place.values()) + 1e-6
    # Without echo: the completion's tokens only, offsets after the prompt; echo alone scores nothing.
    only = openai_client.completions.create(model="polite", prompt=prompt, max_tokens=4, temperature=0, logprobs=0)
    assert only.choices[0].text == plain.choices[0].text
    assert only.choices[0].logprobs.token_logprobs == pytest.approx(expected[len(prompt_ids) :], abs=1e-4)
    assert only.choices[0].logprobs.text_offset[0] == len(rendered)
    echoed = openai_client.completions.create(model="polite", prompt=prompt, max_tokens=0, echo=True)
    assert echoed.choices[0].text == rendered and echoed.choices[0].logprobs is None
    assert echoed.choices[0].finish_reason == "length" and echoed.usage.completion_tokens == 0


def test_logprobs_follow_the_text_a_stop_string_cuts(openai_client):
    full = openai_client.completions.create(model="nice", prompt="you idiot", max_tokens=12, temperature=0, logprobs=1)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = openai_client.completions.create(
        model="nice", prompt="you idiot", max_tokens=12, temperature=0, logprobs=1, stop=stop
    )
    kept = cut.choices[0].logprobs
    assert "".join(kept.tokens) == cut.choices[0].text[: len("".join(kept.tokens))]
    assert len(kept.tokens) < len(full.choices[0].logprobs.tokens)
    assert kept.token_logprobs == full.choices[0].logprobs.token_logprobs[: len(kept.tokens)]


def test_visible_text_holds_back_what_may_begin_a_stop_string():
    assert visible_text("hello wor", ("world",), finished=False) == "hello "
    assert visible_text("hello wor", ("world",), finished=True) == "hello wor"
    assert visible_text("hello world and more", ("world", "and"), finished=False) == "hello "
    assert visible_text("plain", (), finished=False) == "plain"


def test_chat_completions_use_the_chat_template_and_the_task_prompt(openai_client, service):
    import openai

    tokenizer = service.backbone.tokenizer
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "you idiot"}]
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        openai_client.chat.completions.create(model="polite", messages=messages)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    try:
        answer = openai_client.chat.completions.create(model="polite", messages=messages, max_tokens=4, temperature=0)
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        job = GenerateRequest(task="polite", prompt=rendered, max_new_tokens=4, temperature=0).job()
        job.rendered = True
        expected = generate(service, [job])[0][0]
        assert answer.object == "chat.completion" and answer.model == "polite"
        assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content == expected
        soft = len(service.tasks.writers["polite"].soft)
        assert answer.usage.prompt_tokens == len(tokenizer(rendered)["input_ids"]) + soft
        pieces = list(
            openai_client.chat.completions.create(
                model="polite", messages=messages, max_tokens=4, temperature=0, stream=True
            )
        )
        assert pieces[0].choices[0].delta.role == "assistant"
        assert "".join(p.choices[0].delta.content or "" for p in pieces) == expected
    finally:
        tokenizer.chat_template = None


# ---- the vLLM bridge: input embeddings that give our own next-token logits (no vLLM runs here) ----


def _next_token_logits(backbone, embeds: torch.Tensor) -> torch.Tensor:
    """What an engine fed only these input embeddings computes: positions 0..n-1, no cache."""
    with torch.inference_mode():
        return backbone.model(inputs_embeds=embeds[None]).logits[0, -1].float()


@pytest.mark.parametrize("template", ["{soft:3}Review: {text} Sentiment:", "Q: {text}{soft:2} A:{soft:1}"])
def test_classifier_embeddings_give_our_label_scores(tiny_backbone, template):
    backbone = tiny_backbone
    model = classifier(backbone, template, {"pos": "a", "neg": "b"}, seed=1)
    ours = label_probabilities(model, EXAMPLES).log()
    for row, embeds in enumerate(input_embeddings(model, [e.text for e in EXAMPLES])):
        logits = _next_token_logits(backbone, embeds)
        theirs = torch.log_softmax(logits[model.first_ids], dim=-1)
        assert torch.allclose(theirs, ours[row], atol=1e-5), (template, row)


def test_generation_embeddings_give_our_next_token_logits(service, served_dir):
    model, _ = load_model(served_dir / "polite", service.backbone)
    text = "you are rude"
    (embeds,) = input_embeddings(model, [text])
    batch = RunningBatch(service.backbone)
    batch.admit([("one", sample_request(WriteJob("polite", text), service.tasks.writers["polite"]))])
    assert torch.allclose(_next_token_logits(service.backbone, embeds), batch.logits[0].cpu(), atol=1e-5)
    body = vllm_completion_request(model, text, "my-model", max_tokens=8)
    sent = torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"])), weights_only=True)
    assert body["model"] == "my-model" and body["max_tokens"] == 8 and torch.equal(sent, embeds)


def test_export_writes_the_soft_prompt_and_refuses_what_embeddings_cannot_carry(
    tiny_llama_dir, tiny_backbone, sentiment_files, tmp_path, capsys
):
    from .test_continual import _train_prompt

    _train_prompt(tiny_llama_dir, sentiment_files, tmp_path / "pt", "template={soft:3}Review: {text} Sentiment:")
    out = tmp_path / "prompt.safetensors"
    assert main(["export", str(tmp_path / "pt"), "--out", str(out)]) == 0
    assert "3 soft tokens" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("soft_prompt").shape[0] == 3 and f.metadata()["template"].startswith("{soft:3}")
    _train_prompt(
        tiny_llama_dir, sentiment_files, tmp_path / "lora", "method=lora", "template=Review: {text} Sentiment:"
    )
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "only soft-token artifacts" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(SoftpromptError, match="prefix_tuning"):
        input_embeddings(classifier(tiny_backbone, "Review: {text} Sentiment:", method="prefix_tuning"), ["x"])


# ---- bad input on the generation routes ------------------------------------------------------


def test_a_bad_seed_or_text_is_refused_alone(service):
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as client:
        huge = client.post("/v1/generate", json={"prompt": "hi", "seed": 99999999999999999999999})
        assert huge.status_code == 422 and "seed" in str(huge.json()["detail"])
        raw = b'{"prompt": "hi \\ud800"}'  # a lone surrogate, escaped as JSON allows
        lone = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
        assert lone.status_code == 422 and "unicode" in str(lone.json()["detail"])
        body = {"model": "polite", "prompt": "hi", "seed": 99999999999999999999999}
        error = client.post("/v1/completions", json=body).json()["error"]
        assert error["param"] == "seed" and error["type"] == "invalid_request_error"
        raw = b'{"model": "polite", "prompt": "hi \\ud800"}'
        lone = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert lone.status_code == 400 and lone.json()["error"]["param"] == "prompt"
        fine = client.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 2})
        assert fine.status_code == 200


def test_openai_validation_errors_are_400s_in_openai_shape(service):
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as client:
        zero = client.post("/v1/completions", json={"model": "polite", "prompt": "x", "max_tokens": 0})
        assert zero.status_code == 400 and zero.json()["error"]["param"] == "max_tokens"
        for message in ({"role": "robot", "content": "x"}, {"role": "user", "content": ""}):
            bad = client.post("/v1/chat/completions", json={"model": "polite", "messages": [message]})
            error = bad.json()["error"]
            assert bad.status_code == 400 and error["param"].startswith("messages[0]."), bad.text
            assert error["message"].startswith(f"{error['param']}: ") and "[" not in error["message"][20:], bad.text
        many = client.post("/v1/completions", json={"model": "polite", "prompt": "x", "stop": ["a"] * 10_000})
        assert many.status_code == 400 and "at most 4" in many.json()["error"]["message"]
        logprobs = client.post("/v1/completions", json={"model": "polite", "prompt": "x", "logprobs": 100})
        assert logprobs.status_code == 400 and logprobs.json()["error"]["param"] == "logprobs"
        streamed = {"model": "polite", "prompt": "x", "logprobs": 1, "stream": True}
        refused = client.post("/v1/completions", json=streamed)
        assert refused.status_code == 400 and "stream to false" in refused.json()["error"]["message"]
        # the server's own routes keep FastAPI's 422
        assert client.post("/v1/generate", json={"prompt": ""}).status_code == 422


def test_a_completion_that_times_out_stops_decoding(service, monkeypatch):
    import time

    slices = slowed_generation(service, monkeypatch)
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1, timeout_s=0.3))) as client:
        body = {"model": "polite", "prompt": "Once", "max_tokens": 400, "temperature": 0.01}
        assert client.post("/v1/completions", json=body).status_code == 504
        # The slice in flight ends, then the worker drops the job (it decodes nothing after that).
        wait_until(lambda: service.stream.rows == 0, "the abandoned completion to leave the running batch")
        count = len(slices)
        time.sleep(0.3)  # a window in which it must not decode again (no event marks an absence)
        assert len(slices) == count, "the abandoned completion kept decoding"
        assert service.stream.rows == 0
    assert count < 400 / 4


def test_the_api_key_scheme_is_case_insensitive_and_an_empty_key_is_refused(service, served_dir, capsys):
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1, api_key="k3y"))) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert client.get("/v1/models", headers={"Authorization": f"{scheme} k3y"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Basic k3y"}).status_code == 401
    assert main(["serve", "--artifacts", str(served_dir), "--api-key", "", "--backbone", "nowhere"]) == 2
    assert "--api-key is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_removing_a_task_lets_its_generation_in_flight_finish(served_dir, tiny_backbone, monkeypatch):
    import threading

    service = Service(tiny_backbone, served_dir)  # not the module's: the task goes away
    slowed_generation(service, monkeypatch, 0.02)
    answers = {}
    with TestClient(create_app(service, ServeSettings(max_wait_ms=1))) as client:
        body = {"task": "nice", "prompt": "you idiot", "max_new_tokens": 40, "temperature": 0}

        def in_flight():
            answers["in flight"] = client.post("/v1/generate", json=body)

        thread = threading.Thread(target=in_flight)
        thread.start()
        wait_until(lambda: service.stream.rows, "the generation to be under way")
        assert client.delete("/v1/tasks/nice").json() == {"removed": "nice"}
        thread.join()
        assert client.post("/v1/generate", json=body).status_code == 404
    assert answers["in flight"].status_code == 200  # it kept its prompt and finished
    expected = generate(Service(tiny_backbone, served_dir), [GenerateRequest(**body)])[0]
    assert answers["in flight"].json()["completions"] == expected


def test_openai_fields_max_completion_tokens_include_usage_and_ignored_ones(openai_client, service):
    """Chat honours max_completion_tokens (3 tokens come back for 3); a stream with
    stream_options.include_usage ends with a usage chunk equal to the whole answer's usage; a field
    the server does not implement is ignored and logged once by name."""
    import logging

    import openai

    tokenizer = service.backbone.tokenizer
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    lines: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    kept = Kept()
    logging.getLogger("softprompt.serve").addHandler(kept)
    messages = [{"role": "user", "content": "you idiot"}]
    try:
        chat = openai_client.chat.completions.create(
            model="polite", messages=messages, max_completion_tokens=3, temperature=0, user="someone"
        )
        assert chat.usage.completion_tokens == 3 and chat.choices[0].finish_reason == "length"
        again = openai_client.chat.completions.create(model="polite", messages=messages, max_tokens=3, temperature=0)
        assert again.choices[0].message.content == chat.choices[0].message.content
        for create, text in (
            (openai_client.chat.completions.create, lambda c: c.delta.content or ""),
            (openai_client.completions.create, lambda c: c.text),
        ):
            whole_args = {"model": "polite", "max_tokens": 4, "temperature": 0}
            if create == openai_client.completions.create:
                whole_args["prompt"] = "you idiot"
            else:
                whole_args["messages"] = messages
            whole = create(**whole_args)
            chunks = list(create(**whole_args, stream=True, stream_options={"include_usage": True}))
            assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
            assert all(c.usage is None for c in chunks[:-1])
            assert "".join(text(c.choices[0]) for c in chunks[:-1] if c.choices)
        plain = list(openai_client.completions.create(model="polite", prompt="a", max_tokens=2, stream=True))
        assert all(c.usage is None for c in plain)
        with pytest.raises(openai.BadRequestError, match="only with stream: true"):
            openai_client.completions.create(model="polite", prompt="a", stream_options={"include_usage": True})
    finally:
        logging.getLogger("softprompt.serve").removeHandler(kept)
        tokenizer.chat_template = None
    ignored = [line for line in lines if line.startswith("ignored request fields")]
    assert ignored == ["ignored request fields (not implemented by this server): user"]


def test_a_prompt_read_in_chunks_or_after_a_cached_soft_prompt_samples_what_it_samples_read_whole(service):
    """The same seeded samples whether the prompt is read whole, a few tokens per step while
    another request decodes, or after its soft prompt's keys and values from the prompt caches."""
    text = " ".join(PAIRS[0][0] for _ in range(2))
    sampled = _request(service, "polite", text, max_new_tokens=6, temperature=0.9, top_p=0.9, samples=2, seed=3)
    whole = _alone(service, sampled)
    ids = prompt_ids(service.backbone, sampled.prompt)
    cached = replace(sampled, prompt=ids, prompt_key=writer_cache_key("polite"))
    caches = PromptCaches(service.backbone)
    for caches_used, request in ((None, replace(sampled, prompt=ids)), (caches, cached)):
        batch = RunningBatch(service.backbone, caches=caches_used)
        batch.admit([("other", _request(service, "nice", "short", max_new_tokens=30, temperature=0))])
        partial, chunks = batch.start("long", request), 0
        while not partial.done:
            batch.read(partial, 3)
            batch.step()  # the other request decodes between chunks
            chunks += 1
        finished = {}
        while batch.members:
            finished.update({m.key: m for m in batch.step()})
        assert chunks == -(-len(ids) // 3) and finished["long"].tokens == whole
    assert caches.misses == 2 and writer_cache_key("polite") in caches and writer_cache_key("nice") in caches
