"""Decoding steps whose attention runs per group of rows over the group's own columns."""

from __future__ import annotations

import contextlib

import torch

from softprompt.generation import ragged, running
from softprompt.generation.running import RunningBatch
from softprompt.generation.sampling import SampleRequest


def test_rows_are_grouped_where_a_row_is_under_half_its_groups_widest():
    attended = torch.zeros(4, 100, dtype=torch.bool)
    for row, first in enumerate((90, 0, 95, 40)):  # widths 10, 100, 5, 60
        attended[row, first:] = True
    groups = [(rows.tolist(), first) for rows, first in ragged.row_groups(attended)]
    assert groups == [([1, 3], 0), ([0, 2], 90)]  # 60 is over half of 100; 10 is not, 5 is half of 10


def _decoded(backbone, steps: int = 6) -> tuple[dict, list[torch.Tensor]]:
    """A long and two short prompts decoding together: their tokens, and every step's logits."""
    batch = RunningBatch(backbone)
    long_text = " ".join(["the story goes on and on"] * 12)
    requests = [
        SampleRequest(long_text, None, 1, steps, 0.9, 0.0, 0),
        SampleRequest("hi", None, 2, steps, 0.9, 0.8, 1),
        SampleRequest("a short one", None, 1, steps, 0.9, 0.0, 2),
    ]
    batch.admit(list(enumerate(requests)))
    logits, finished = [], {}
    while batch.members:
        finished.update((m.key, m.tokens) for m in batch.step())
        if batch.logits is not None and batch.members:
            logits.append(batch.logits.clone())
    return finished, logits


def test_a_step_per_group_of_rows_decodes_what_the_whole_rectangle_decodes(tiny_backbone, monkeypatch):
    seen = []
    grouping = ragged.row_groups
    monkeypatch.setattr(ragged, "row_groups", lambda attended: seen.append(grouping(attended)) or seen[-1])
    tokens, logits = _decoded(tiny_backbone)
    assert seen and all(len(groups) >= 2 and groups[0][0].tolist() == [0] for groups in seen)  # the long row alone
    monkeypatch.setattr(running, "ragged_attention", lambda model: contextlib.nullcontext())
    whole_tokens, whole_logits = _decoded(tiny_backbone)
    assert tokens == whole_tokens
    for own, whole in zip(logits, whole_logits, strict=True):
        torch.testing.assert_close(own, whole, atol=1e-5, rtol=1e-5)
    assert tiny_backbone.model.config._attn_implementation == "sdpa"  # put back after every step
