"""The fast paths of the classifier are exact: compare against naive computations."""

import pytest
import torch

from softprompt.backbones import load_backbone

from .helpers import EXAMPLES, classifier


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    return load_backbone(str(tiny_bert_dir))


def _scores(model, examples, share_prefix=True):
    model.task.share_prefix = share_prefix
    return model(model.task.collate([model.task.encode(e) for e in examples]))


@pytest.mark.parametrize(
    "template",
    [
        "{soft:5} Review: {text}\nSentiment:",
        "Review: {text}\nSentiment:{soft:4}",
        "{soft:3} Review: {text}\nSentiment:{soft:2}",
    ],
)
def test_batched_shared_prefix_equals_one_row_at_a_time(llama, template):
    model = classifier(llama, template)
    batched = _scores(model, EXAMPLES)
    naive = torch.cat([_scores(model, [e], share_prefix=False) for e in EXAMPLES])
    torch.testing.assert_close(batched, naive, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("template", ["{soft:5} Review: {text}\nSentiment:", "Review: {text}\nSentiment:{soft:4}"])
def test_gradients_of_fast_path_equal_naive_path(llama, template):
    model = classifier(llama, template)
    labels = torch.tensor([0, 1, 0, 1])
    grads = []
    for share in (True, False):
        model.method.zero_grad()
        # the naive path: no shared prefix, and no gradient-free split (force by disabling the check)
        original = model._frozen_columns
        if not share:
            model._frozen_columns = lambda batch: 0
        loss = torch.nn.functional.nll_loss(_scores(model, EXAMPLES, share_prefix=share), labels)
        loss.backward()
        model._frozen_columns = original
        grads.append(model.method.prompt_embeddings.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_multi_token_words_scored_by_full_log_probability(llama):
    verbalizer = {"positive": ["great movie", "positive"], "negative": "awful and boring"}
    model = classifier(llama, "Review: {text}\nSentiment:", verbalizer, method="none")
    got = _scores(model, EXAMPLES).exp()
    tok = llama.tokenizer
    expected = []
    for example in EXAMPLES:
        context = tok(f"Review: {example.text}\nSentiment:", add_special_tokens=False)["input_ids"]
        per_label = []
        for words in (["great movie", "positive"], ["awful and boring"]):
            logps = []
            for word in words:
                ids = tok(" " + word, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logits = llama.model(torch.tensor([context + ids])).logits[0]
                logp = torch.log_softmax(logits, -1)
                logps.append(sum(logp[len(context) - 1 + i, t] for i, t in enumerate(ids)))
            per_label.append(torch.logsumexp(torch.stack(logps), 0))
        expected.append(torch.softmax(torch.stack(per_label), 0))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-4)
    assert len(model.task.candidates[0].ids) > 1  # the test really covers multi-token words


def test_encoder_uses_head_at_mask_and_padding_does_not_matter(bert):
    model = classifier(bert, "{soft:3} {text} it was {mask}.")
    assert model.head is not None
    batched = _scores(model, EXAMPLES)
    single = torch.cat([_scores(model, [e]) for e in EXAMPLES])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_only_prompt_and_head_are_trainable(llama, bert):
    model = classifier(llama, "{soft:4}{text}:")
    assert [p.shape for p in model.trainable_parameters()] == [torch.Size([4, 32])]
    assert not any(p.requires_grad for p in llama.model.parameters())
    enc = classifier(bert, "{soft:4}{text}")
    assert sum(p.numel() for p in enc.trainable_parameters()) == 4 * 32 + 32 * 2 + 2
