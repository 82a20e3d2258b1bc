"""The one place that runs the backbone.

Every consumer (the classifier, the tagger, mixed batches, the detox LM, the sampler) builds its
inputs and calls the backbone through these functions: token rows padded into tensors, soft
tokens put into the embeddings at their slots, positions from the padding mask, soft prompts run
once and their key/value cache shared by the rows that use them, the body's hidden states or the
LM's next-token logits, and the output projection at chosen positions and token ids.

Device and dtype are decided here: every tensor is created on the backbone's device, and the
backbone's forward passes already run under its placement's autocast (:mod:`softprompt.backbones.placement`),
so float32 soft prompts meet a bf16 backbone without casts elsewhere. Scores come back in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.backbones import Backbone
from softprompt.prompts.template import NO_SOFT

T = TypeVar("T")


@dataclass
class Padded:
    """Token rows as ``[B, L]`` tensors: ids, attention mask, and each position's soft-token index."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    soft_index: torch.Tensor  # NO_SOFT for real tokens


def pad(
    rows: Sequence[Sequence[int]],
    pad_id: int,
    *,
    left: bool,
    device: torch.device | None = None,
    soft: Sequence[Sequence[int]] | None = None,
    width: int | None = None,
) -> Padded:
    """Pad ``rows`` of token ids to one width: on the left for a causal LM (every row's next token
    in the last column), on the right for an encoder. ``soft`` gives each position's soft-token
    index (``NO_SOFT`` for a real token); soft positions keep ``pad_id`` in ``input_ids``."""
    width = width or max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    soft_index = torch.full((len(rows), width), NO_SOFT, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        if soft is not None:
            soft_index[row, span] = torch.tensor(soft[row], dtype=torch.long)
        mask[row, span] = 1
    return Padded(*(t.to(device) for t in (input_ids, mask, soft_index)))


def to_device(batch: T, device: torch.device) -> T:
    """A copy of a batch dataclass with its tensors on ``device`` (itself when already there)."""
    moved = {
        f.name: value.to(device)
        for f in dataclasses.fields(batch)
        if isinstance(value := getattr(batch, f.name), torch.Tensor) and value.device != device
    }
    return dataclasses.replace(batch, **moved) if moved else batch


def positions(mask: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids of left-padded rows (padding gets 0), starting at ``offset``."""
    return (mask.cumsum(-1) - 1).clamp(min=0) + offset


def embed(
    backbone: Backbone,
    input_ids: torch.Tensor,
    soft_index: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token embeddings with soft tokens (rows of ``soft``) placed where ``soft_index`` points."""
    embeds = backbone.model.get_input_embeddings()(input_ids)
    if soft is None or soft_index is None:
        return embeds
    slots = soft_index >= 0
    if not bool(slots.any()):
        return embeds
    picked = soft[soft_index.clamp(min=0)]
    return torch.where(slots.unsqueeze(-1), picked.to(embeds.dtype), embeds)


def embed_rows(
    backbone: Backbone, rows: Sequence[tuple[torch.Tensor | None, list[int]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, L, H]`` left-padded embeddings of ``(soft prompt or None, token ids)`` rows, each
    prompt before its tokens, and their attention mask."""
    embedding = backbone.model.get_input_embeddings()
    pieces = []
    for soft, ids in rows:
        tokens = embedding(torch.tensor(ids, dtype=torch.long, device=backbone.device))
        pieces.append(tokens if soft is None else torch.cat([soft.to(tokens), tokens]))
    return left_pad(pieces)


def left_pad(pieces: Sequence[torch.Tensor], dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``pieces`` that differ only in their length along ``dim``, stacked along a new first
    dimension, each padded with zeros on the left to the longest (a causal LM's rows end in the
    same column), and the ``[N, width]`` mask of their own positions. Gradients flow to the pieces."""
    width = max(piece.shape[dim] for piece in pieces)
    shape = list(pieces[0].shape)
    shape[dim] = width
    out = pieces[0].new_zeros(len(pieces), *shape)
    mask = torch.zeros(len(pieces), width, dtype=torch.long, device=pieces[0].device)
    for row, piece in enumerate(pieces):
        length = piece.shape[dim]
        if length:
            out[row].narrow(dim, width - length, length).copy_(piece)
            mask[row, width - length :] = 1
    return out, mask


def body(backbone: Backbone) -> torch.nn.Module:
    """The transformer without its LM head (a causal LM's decoder, or the encoder itself)."""
    return backbone.model.get_decoder() if backbone.predicts_tokens else backbone.model


def hidden_states(backbone: Backbone, **inputs: Any) -> Any:
    """The body's output (``last_hidden_state``, ``past_key_values``) for ``inputs``."""
    return body(backbone)(**inputs)


def next_token_logits(backbone: Backbone, keep: int = 1, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """Float32 logits of the last ``keep`` positions (``[B, keep, V]``) and the KV cache."""
    out = backbone.model(**inputs, use_cache=True, logits_to_keep=keep)
    return out.logits.float(), out.past_key_values


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Float32 ``log p(tokens[..., t])`` under ``logits[..., t, :]``: the one token log-likelihood
    (callers line logits up with the tokens they predict)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def prompt_cache(backbone: Backbone, prompts: Sequence[torch.Tensor]) -> tuple[list, torch.Tensor]:
    """Run soft prompts (``[n_i, H]`` each) side by side, left-padded to the longest: per-layer
    ``(keys, values)`` with one row per prompt, and the ``[prompts, width]`` padding mask. Rows
    that share a prompt then gather its cache (:func:`gather_cache`) instead of running it again."""
    empty = torch.zeros(0, backbone.hidden_size, device=backbone.device)
    embeds, mask = left_pad([prompt.float() if len(prompt) else empty for prompt in prompts])
    cache = hidden_states(
        backbone, inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask), use_cache=True
    ).past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers], mask


def prefixed(
    backbone: Backbone, prefixes: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None], mask: torch.Tensor
) -> tuple[DynamicCache | None, torch.Tensor, torch.Tensor]:
    """Left-padded rows (``mask``) that continue their own key/value prefixes (prefix tuning's: per
    layer ``[1, heads, n_i, dim]``; None: no prefix): the prefixes side by side as a cache, the
    mask with their columns in front, and the rows' positions, continuing at ``n_i``
    (as :meth:`LeadingContext.positions`). No prefix at all: no cache, the mask, plain positions."""
    if all(p is None for p in prefixes):
        return None, mask, positions(mask)
    layers, before = kv_side_by_side(prefixes)
    cache = DynamicCache(layers, config=backbone.model.config)
    return cache, torch.cat([before, mask], dim=1), positions(mask, before.sum(1, keepdim=True))


def kv_side_by_side(
    rows: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Rows' own keys and values (per layer ``[1, heads, n_i, dim]``; None: nothing) side by side,
    left-padded along the length to the longest, and their ``[rows, width]`` mask. Needs one row
    that is not None."""
    shape = next(row for row in rows if row is not None)
    layers, mask = [], None
    for layer, (k0, v0) in enumerate(shape):
        keys, mask = left_pad([row[layer][0][0] if row is not None else k0[0, :, :0] for row in rows], dim=1)
        values, _ = left_pad([row[layer][1][0] if row is not None else v0[0, :, :0] for row in rows], dim=1)
        layers.append((keys, values))
    return layers, mask


def gather_cache(backbone: Backbone, layers: list, index: torch.Tensor) -> DynamicCache:
    """A cache whose row ``i`` is row ``index[i]`` of per-layer ``(keys, values)``."""
    return DynamicCache([(k[index], v[index]) for k, v in layers], config=backbone.model.config)


def shared_prompt_cache(backbone: Backbone, prompt: torch.Tensor, rows: int) -> DynamicCache:
    """The KV cache of one leading soft block (``[n, H]``), run once and repeated for ``rows`` rows
    (the block is the same in every row, so this is exact, and its backward runs once too)."""
    layers, _ = prompt_cache(backbone, [prompt])
    return gather_cache(backbone, layers, torch.zeros(rows, dtype=torch.long, device=backbone.device))


class LeadingKeys(Protocol):
    """What :func:`leading_context` asks of a method (see :class:`softprompt.methods.base.Method`)."""

    def prefix_length(self) -> int: ...
    def prefix_cache(self, rows: int) -> DynamicCache: ...
    def soft_embeddings(self) -> torch.Tensor | None: ...


@dataclass
class LeadingContext:
    """What every row of a batch attends to before its own tokens: a key/value cache standing for
    ``length`` columns (prefix tuning's per-layer prefixes, or a leading soft block run once)."""

    cache: DynamicCache | None = None
    length: int = 0

    def mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The rows' mask with the context's columns in front (every row sees all of them)."""
        if not self.length:
            return attention_mask
        return torch.cat([attention_mask.new_ones(len(attention_mask), self.length), attention_mask], dim=1)

    def positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The rows' positions, continuing after the context's columns (as if they were tokens,
        which prefix tuning's are at init: the keys/values of its init tokens)."""
        return positions(attention_mask) + self.length


def leading_context(backbone: Backbone, method: LeadingKeys, rows: int, soft_block: int = 0) -> LeadingContext:
    """The context ``rows`` rows start from: the method's prefixes, or the first ``soft_block`` soft
    tokens run once and shared (identical in every row, so exact). A method has prefixes or soft
    tokens, never both."""
    if method.prefix_length():
        return LeadingContext(method.prefix_cache(rows), method.prefix_length())
    if soft_block:
        block = method.soft_embeddings()[:soft_block]
        return LeadingContext(shared_prompt_cache(backbone, block, rows), soft_block)
    return LeadingContext()


def additive_mask(allowed: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """A ready 4-D boolean mask (True: may attend) as the additive float mask every attention
    implementation reads alike: eager attention adds a mask to its scores, so a boolean one
    would be misread there (SDPA takes either)."""
    low = torch.finfo(backbone.placement.dtype).min
    return torch.zeros(allowed.shape, dtype=backbone.placement.dtype, device=allowed.device).masked_fill(~allowed, low)


def project(backbone: Backbone, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 LM-head logits for ``hidden``, only for ``token_ids`` when given (the verbalizer's
    words: a few rows of the head instead of the whole vocabulary)."""
    head = backbone.model.get_output_embeddings()
    weight = head.weight if token_ids is None else head.weight[token_ids]
    # In float32 whatever the backbone's dtype: the scores feed the loss and the label softmax.
    logits = hidden.float() @ weight.float().T
    if getattr(head, "bias", None) is not None:
        logits = logits + (head.bias if token_ids is None else head.bias[token_ids]).float()
    softcap = getattr(backbone.model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


@contextlib.contextmanager
def checkpointed(backbone: Backbone) -> Iterator[None]:
    """Activation checkpointing of the backbone's layers inside this block: their activations are
    recomputed in the backward pass instead of kept (less memory, about a third more compute).

    transformers checkpoints a layer only in training mode and then drops any key/value cache,
    so callers run their rows without one here (no shared prompt block, no frozen-prefix cache).
    Only the layers are put in training mode: dropout inside them stays off, as in every forward
    pass of the frozen backbone."""
    model = backbone.model
    model.activation_checkpointing_enable({"use_reentrant": False})
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
        model.activation_checkpointing_disable()
        model.disable_input_require_grads()
