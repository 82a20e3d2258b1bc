"""What one draw of the sampler is (greedy, or a nucleus sample at a temperature), what a
sampling request asks for, and the perplexity of continuations under the plain model. The
decoding loop itself is :mod:`softprompt.generation.running` (the server's and detox's).

Only public transformers APIs: ``model(inputs_embeds=..., past_key_values=..., logits_to_keep=...)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.likelihood import continue_rows
from softprompt.generation.rows import Steering, Variant
from softprompt.methods.row_adapters import RowAdapter

Prompt = str | list[int]  # a text, or token ids (an OpenAI client's tokenized prompt)


def context_ids(backbone: Backbone, text: str) -> list[int]:
    """Token ids of a context (with the special tokens the tokenizer adds, e.g. a BOS)."""
    return backbone.tokenizer(text)["input_ids"]


def prompt_ids(backbone: Backbone, prompt: Prompt, prefix: str = "") -> list[int]:
    """The ids the model reads for ``prefix`` then ``prompt``: a text's as :func:`context_ids`
    gives them; token ids as they are, with no special token added (as vLLM takes them)."""
    if isinstance(prompt, str):
        return context_ids(backbone, prefix + prompt)
    return (context_ids(backbone, prefix) if prefix else []) + list(prompt)


# Below this temperature a draw is the most likely token: dividing float32 logits by a smaller one
# can overflow to inf (and the softmax to NaN), and the distribution is greedy's long before that.
GREEDY_BELOW = 1e-4


def draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row: the most likely one at temperature 0 (or below :data:`GREEDY_BELOW`),
    else a nucleus sample at that temperature."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1).cpu()
    return nucleus_sample(logits / temperature, top_p, generator)


def nucleus_parts(
    probs: torch.Tensor, top_p: float, candidates: int = 256
) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """The sorted probabilities and token ids from which each row's nucleus (the smallest set of
    tokens holding ``top_p``) is read, as ``(rows, values, index)`` parts, most likely first.

    Exact, but cheap: the first part (``rows`` None: every row) holds only the ``candidates``
    most likely tokens, which nearly always reach ``top_p``; the rows whose candidates do not
    (a boolean mask) follow as a second part, sorted over the whole vocabulary.
    """
    values, index = probs.topk(min(candidates, probs.shape[-1]), dim=-1)  # descending
    short = values.sum(-1) < top_p
    yield None, values, index
    if bool(short.any()):
        values, index = probs[short].sort(dim=-1, descending=True)
        yield short, values, index


def nucleus_sample(
    logits: torch.Tensor, top_p: float, generator: torch.Generator, candidates: int = 256
) -> torch.Tensor:
    """One token per row from the smallest set of tokens whose probability reaches ``top_p``."""
    probs = torch.softmax(logits.float(), dim=-1)
    if top_p >= 1:  # the whole vocabulary (OpenAI clients' default): nothing to sort, nothing cut
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1)
    chosen = torch.empty(0, dtype=torch.long)
    for rows, values, index in nucleus_parts(probs, top_p, candidates):
        # The draw happens where the generator lives (the CPU: the same samples on every device);
        # only the candidates travel there, not the whole vocabulary.
        drawn = _sample_sorted(values.cpu(), index.cpu(), top_p, generator)
        if rows is None:
            chosen = drawn
        else:
            chosen[rows.cpu()] = drawn
    return chosen


def _sample_sorted(values: torch.Tensor, index: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    keep = values.cumsum(-1) - values < top_p
    keep[..., 0] = True  # the most likely token always (a top_p under float32's smallest is 0 there)
    return index.gather(-1, torch.multinomial(values * keep, 1, generator=generator)).squeeze(-1)


def continuation_nll(
    backbone: Backbone, prompts: Sequence[str], continuations: Sequence[Sequence[list[int]]]
) -> list[list[tuple[float, int]]]:
    """``(summed negative log-likelihood, tokens)`` of each prompt's continuations under the plain
    model, as ``[prompt][sample]`` (an empty continuation gives ``(0.0, 0)``).

    Each prompt is run once; its KV cache is repeated for its samples, which then run together.
    In float32 on a CPU, as the sampling loop that scores the samples of the other steerings
    (:meth:`~softprompt.backbones.Backbone.decoding`): one precision for every method's perplexity.
    """
    with backbone.decoding():
        return _continuation_nll(backbone, prompts, continuations)


@torch.inference_mode()
def _continuation_nll(
    backbone: Backbone, prompts: Sequence[str], continuations: Sequence[Sequence[list[int]]]
) -> list[list[tuple[float, int]]]:
    k = len(continuations[0])
    embeds, mask = core.embed_rows(backbone, [(None, context_ids(backbone, p)) for p in prompts])
    positions = core.positions(mask)
    first, cache = core.next_token_logits(backbone, inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    flat = [list(ids) for rows in continuations for ids in rows]
    continued = continue_rows(backbone, cache, mask, positions[:, -1], flat, k)
    # The prompt's last position predicts token 0; continuation column t predicts token t + 1.
    logits = torch.cat([first[:, -1:].repeat_interleave(k, 0), continued.logits[:, :-1]], dim=1)
    nll = -core.token_logprobs(logits, continued.tokens) * continued.valid
    sums, counts = nll.sum(-1).tolist(), continued.valid.sum(-1).tolist()
    pairs = list(zip(sums, counts, strict=True))
    return [pairs[p * k : (p + 1) * k] for p in range(len(prompts))]


@dataclass
class SampleRequest:
    """One caller's sampling job in a shared decoding batch (see :mod:`softprompt.generation.running`)."""

    prompt: Prompt
    soft: torch.Tensor | None  # [n, hidden] soft prompt put before the text, or None
    samples: int
    max_new_tokens: int
    top_p: float
    temperature: float  # 0: greedy
    seed: int
    stop: tuple[str, ...] = ()  # a sample ends once its text contains one of these
    steering: Steering | None = None  # rows combined into one distribution (detox); None: the soft prompt's row
    row_adapter: RowAdapter | None = None  # a LoRA or IA3 task's weights, applied to this request's rows
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # prefix tuning's keys/values, per layer
    # The soft prompt's key in the batch's prompt caches: its keys and values are read from there
    # (computed once for every request of its task) rather than run with the text.
    prompt_key: Hashable | None = None

    def variants(self) -> list[Variant]:
        """The rows each sample runs as: the steering's, else one (the soft prompt, if any)."""
        return self.steering.variants if self.steering is not None else [Variant(soft=self.soft)]
