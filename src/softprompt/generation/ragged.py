"""Attention over each row's own columns in a decoding step of the running batch.

The running batch keeps every row's keys and values in one rectangle (left-padded: see
:mod:`softprompt.generation.kv_slots`), so once a 2,000-token prompt joins, every row's step
reads 2,000 columns, most of them masked: on a CPU a step of 11 rows took 0.25 s instead of
0.14 s. :func:`ragged_attention` makes the step's attention group the rows by where their cache
begins (a new group whenever a row's width is under half its group's widest) and run SDPA once
per group over that group's columns only. The other layers are untouched, and a step whose rows
all fall in one group runs SDPA as before. It is what paged attention gives, without a kernel:
the keys and values stay where they are; a group's rows are gathered into a narrow copy.

Only models loaded with SDPA attention take it (eager attention, used for bf16 on a CPU, has a
per-model function that cannot be wrapped here); others run unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "softprompt_ragged_sdpa"
_step = threading.local()  # the groups of the step under way (one mask for all of its layers)


def row_groups(attended: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Rows of a ``[rows, columns]`` attended-or-not mask grouped by where each begins: a list
    of (row indices, the group's first column), widest first; a row whose width is under half
    its group's widest starts a new group."""
    columns = attended.shape[1]
    first = torch.where(attended.any(1), attended.int().argmax(1), columns - 1)
    order = torch.argsort(first, stable=True)
    firsts = first[order].tolist()
    groups, start = [], 0
    for i in range(1, len(firsts) + 1):
        if i == len(firsts) or 2 * (columns - firsts[i]) < columns - firsts[start]:
            groups.append((order[start:i], firsts[start]))
            start = i
    return groups


def _ragged_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA per group of rows over the group's own columns (one new token per row)."""
    if attention_mask is None or attention_mask.dtype != torch.bool or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if getattr(_step, "mask", None) is not attention_mask:  # the step's first layer: group its rows once
        _step.mask, _step.groups = attention_mask, row_groups(attention_mask[:, 0, -1, :])
    groups = _step.groups
    if len(groups) == 1 and groups[0][1] == 0:  # every row is about as wide as the rectangle
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[3])
    for rows, first in groups:
        keys, values, mask = key[rows, :, first:], value[rows, :, first:], attention_mask[rows, :, :, first:]
        out[rows], _ = sdpa_attention_forward(module, query[rows], keys, values, mask, **kwargs)
    return out, None


AttentionInterface.register(NAME, _ragged_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets: only the attention differs


@contextlib.contextmanager
def ragged_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within it, ``model``'s decoding steps attend per group of rows (see the module
    docstring); a model not on SDPA attention is left as it is."""
    configs = {id(c): c for c in (model.config, model.config.get_text_config(decoder=True))}.values()
    if any(getattr(c, "_attn_implementation", None) != "sdpa" for c in configs):
        yield
        return
    for config in configs:
        config._attn_implementation = NAME
    try:
        yield
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"
        _step.mask = _step.groups = None
