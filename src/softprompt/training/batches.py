"""Which training rows form batch ``step``: a pure function of (seed, step), so a resumed run
draws exactly the batches an uninterrupted one would."""

from __future__ import annotations

import functools

import torch

GROUP = 50  # batches whose samples are sorted together by length


@functools.lru_cache(maxsize=4)
def _epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def _sample(n: int, count: int, seed: int) -> int:
    epoch, offset = divmod(n, count)
    return _epoch_order(count, seed, epoch)[offset]


def batch_indices(
    step: int, size: int, count: int, seed: int, lengths: list[int] | None = None, classes: list[int] | None = None
) -> list[int]:
    """Indices of the examples in batch ``step``: epochs are seeded permutations, so any step's
    batch can be recomputed on resume.

    With ``lengths``, batches are grouped by length (less padding, faster steps): the samples of
    each run of ``GROUP`` consecutive batches are sorted by length, cut into batches, and those
    batches are taken in a seeded random order. With ``classes`` too, the sort key is a sample's
    length rank within its own class, so every batch keeps the run's class mix.
    """
    if lengths is None:
        return [_sample(n, count, seed) for n in range(step * size, (step + 1) * size)]
    group, position = divmod(step, GROUP)
    first = group * GROUP * size
    pool = _by_length([_sample(n, count, seed) for n in range(first, first + GROUP * size)], lengths, classes)
    order = torch.randperm(GROUP, generator=torch.Generator().manual_seed(seed * 100_003 + group)).tolist()
    start = order[position] * size
    return pool[start : start + size]


def _by_length(pool: list[int], lengths: list[int], classes: list[int] | None) -> list[int]:
    """``pool`` sorted by length, or by length quantile within each class.

    Why the quantile: length often goes with the label (long reviews are mostly positive in
    chinese-reviews), so a plain sort makes the longest batches nearly one class, and each such
    step pulls the whole model towards that class; full fine-tuning swung by 10-20 dev points.
    """
    if classes is None:
        return sorted(pool, key=lengths.__getitem__)
    members: dict[int, list[int]] = {}
    for i in pool:
        members.setdefault(classes[i], []).append(i)
    quantile = {}
    for same_class in members.values():
        same_class.sort(key=lengths.__getitem__)
        quantile.update({i: (rank + 0.5) / len(same_class) for rank, i in enumerate(same_class)})
    return sorted(pool, key=quantile.__getitem__)
