"""The fast paths of the classifier are exact: compare against naive computations."""

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.core.packing import pack_rows
from softprompt.data.records import Example

from .helpers import EXAMPLES, classifier


@pytest.fixture
def llama(tiny_backbone):
    """The session's tiny Llama: these tests only put soft prompts (or nothing) in front of it."""
    return tiny_backbone


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


def test_pack_rows_plans_first_fit_longest_first():
    lengths = [5, 2, 3, 1]
    mask = torch.tensor([[0] * (5 - n) + [1] * n for n in lengths])
    packed = pack_rows(mask, prefix=2)
    assert packed.rows == 3  # [row 0], [row 2, row 1], [row 3]
    assert packed.positions.tolist() == [[2, 3, 4, 5, 6], [2, 3, 4, 2, 3], [2, 0, 0, 0, 0]]
    assert packed.source.view(3, 5)[1].tolist() == [12, 13, 14, 8, 9]
    assert packed.last.tolist() == [4, 9, 7, 10]
    # row 1's first token sees the shared prefix and itself, not row 2 packed before it
    assert packed.mask[1, 0, 3].tolist() == [True, True, False, False, False, True, False]
    assert packed.mask[2, 0, 1].tolist() == [False, False, False, True, False, False, False]  # padding: itself
    assert pack_rows(torch.ones(3, 4, dtype=torch.long)) is None  # no padding: nothing to gain


PACKING_EXAMPLES = [*EXAMPLES, Example({"text": "ok"}), Example({"text": "bad"})]


@pytest.mark.parametrize(
    ("template", "method"),
    [
        ("{soft:5} Review: {text}\nSentiment:", "prompt_tuning"),  # shared prefix cache + packing
        ("{soft:3} Review: {text}\nSentiment:{soft:2}", "prompt_tuning"),  # and soft tokens in the rows
        ("Review: {text}\nSentiment:", "full"),
        ("Review: {text}\nSentiment:", "lora"),
        ("Review: {text}\nSentiment:", "prefix_tuning"),
    ],
)
def test_packed_rows_equal_padded_rows_with_gradients(tiny_llama_dir, template, method):
    llama = load_backbone(str(tiny_llama_dir))  # its own: layer-changing methods claim the backbone
    model = classifier(llama, template, {"pos": "a", "neg": "b"}, method=method)  # one-token words
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    results = []
    for pack in (True, False):
        model.task.pack = pack
        model.zero_grad()
        batch = model.task.collate([model.task.encode(e) for e in PACKING_EXAMPLES])
        shared = model.method.prefix_length() + batch.prefix_soft
        assert (model.packing(batch, shared, 0) is not None) == pack  # the packed path really runs
        scores = model(batch)
        torch.nn.functional.nll_loss(scores, labels).backward()
        grads = [p.grad.clone() for p in model.trainable_parameters() if p.grad is not None]
        results.append((scores.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    assert results[0][1], "no trainable parameter received a gradient"
    for packed, padded in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_packing_respects_a_sliding_window(tiny_gemma_chinese_dir):
    gemma = load_backbone(str(tiny_gemma_chinese_dir))
    model = classifier(gemma, "{soft:2}评论：{text}", {"pos": "好", "neg": "不"})  # one-token words
    short = [Example({"text": t}) for t in ["好", "很好的书", "差", "不好"]]
    long = [*short, Example({"text": "这本书写得很好，值得一读，我很喜欢它的故事"})]
    for examples, packs in ((short, True), (long, False)):  # the window is 16 positions
        batch = model.task.collate([model.task.encode(e) for e in examples])
        assert (model.packing(batch, batch.prefix_soft, 0) is not None) == packs
        model.task.pack = False
        padded = model(batch)
        model.task.pack = True
        torch.testing.assert_close(model(batch), padded, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_classification_metrics_from_scikit_learn_equal_the_counted_ones():
    import random

    from softprompt.tasks.classification.metrics import classification_metrics

    def counted(predicted, gold, labels):  # the hand-written formulas scikit-learn replaced
        f1 = {}
        for index, label in enumerate(labels):
            tp = sum(p == index == g for p, g in zip(predicted, gold, strict=True))
            fp = sum(p == index != g for p, g in zip(predicted, gold, strict=True))
            fn = sum(g == index != p for p, g in zip(predicted, gold, strict=True))
            precision, recall = (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)
            f1[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
        return accuracy, sum(f1.values()) / len(labels), f1

    rng = random.Random(0)
    for trial in range(200):
        labels = [f"l{i}" for i in range(rng.randint(1, 5))]
        size = rng.randint(1, 30)
        # Some trials leave a label out of both the gold labels and the predictions.
        pool = range(len(labels) - (trial % 3 == 0 and len(labels) > 1))
        gold, predicted = [rng.choice(pool) for _ in range(size)], [rng.choice(pool) for _ in range(size)]
        got = classification_metrics(predicted, gold, labels)
        accuracy, macro, f1 = counted(predicted, gold, labels)
        assert got["accuracy"] == pytest.approx(accuracy) and got["macro_f1"] == pytest.approx(macro)
        assert got["f1"] == pytest.approx(f1) and got["n"] == size
