"""Pack the rows of a left-padded causal batch into fewer rows, so no time goes into padding.

A batch of random examples is padded to its longest row; with review-length texts a third of
the positions can be padding, and every layer's matmuls run over them. Packing places several
short rows end to end in one row of the same width (first-fit, longest first) and keeps them
apart with a block-diagonal causal mask; each row keeps its own positions, and every row still
sees the shared prefix cache (a leading soft prompt computed once per batch). The result is the
same computation per token as the padded batch (tests compare both to a tight tolerance).

Hugging Face models take such a mask as a ready 4-D attention mask; see :func:`can_pack` for
when that is safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class PackedRows:
    """Where each token of a padded ``[B, L]`` batch goes in the packed ``[R, L]`` one."""

    source: torch.Tensor  # [R * L] index into the padded batch flattened to [B * L]
    positions: torch.Tensor  # [R, L] position ids (prefix included)
    mask: torch.Tensor  # [R, 1, L, prefix + L] bool, True where a query may attend
    last: torch.Tensor  # [B] index of each original row's last token in the packed [R * L]

    @property
    def rows(self) -> int:
        return self.positions.shape[0]


def can_pack(model: PreTrainedModel, prefix: int, width: int) -> bool:
    """Whether ``model`` reads a custom 4-D mask as given: sdpa or eager attention, and no sliding
    window shorter than the sequence (a ready mask bypasses the model's own window masking)."""
    config = model.config.get_text_config(decoder=True)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    window = getattr(config, "sliding_window", None)
    return not window or prefix + width <= window


def pack_rows(attention_mask: torch.Tensor, prefix: int = 0) -> PackedRows | None:
    """Plan the packing of a left-padded batch (``attention_mask`` ``[B, L]``) that continues from
    ``prefix`` cached positions shared by every row; None when it would not save a row."""
    size, width = attention_mask.shape
    lengths = attention_mask.sum(-1).tolist()
    bins: list[list[int]] = []  # original rows in each packed row
    room: list[int] = []
    for row in sorted(range(size), key=lambda r: -lengths[r]):
        for b, free in enumerate(room):
            if lengths[row] <= free:
                bins[b].append(row)
                room[b] -= lengths[row]
                break
        else:
            bins.append([row])
            room.append(width - lengths[row])
    if len(bins) == size:
        return None
    source = torch.zeros(len(bins), width, dtype=torch.long)
    positions = torch.zeros(len(bins), width, dtype=torch.long)
    segment = torch.full((len(bins), width), -1, dtype=torch.long)  # original row, -1 for padding
    last = torch.zeros(size, dtype=torch.long)
    for b, members in enumerate(bins):
        offset = 0
        for row in members:
            n = lengths[row]
            span = slice(offset, offset + n)
            source[b, span] = row * width + width - n + torch.arange(n)
            positions[b, span] = prefix + torch.arange(n)
            segment[b, span] = row
            last[row] = b * width + offset + n - 1
            offset += n
    query = torch.arange(width)
    causal = query.unsqueeze(1) >= query.unsqueeze(0)  # [L, L]
    same = segment.unsqueeze(2) == segment.unsqueeze(1)  # [R, L, L]
    real = segment >= 0
    # Padding slots attend to themselves only, so no softmax row is empty (their output is unused).
    block = (same & causal & real.unsqueeze(2)) | (~real.unsqueeze(2) & torch.eye(width, dtype=torch.bool))
    shared = real.unsqueeze(2).expand(-1, -1, prefix)
    mask = torch.cat([shared, block], dim=2).unsqueeze(1)
    device = attention_mask.device  # planned on the CPU (many small writes), used where the batch is
    return PackedRows(source.flatten().to(device), positions.to(device), mask.to(device), last.to(device))
