"""The running batch's key/value cache: in buffers with room to grow, written in place
(:class:`KvSlots`), or, for models with sliding-window layers, transformers' own cache
(:class:`ConcatKv`). Both keep a row's place until it leaves, and give a leaving row's place to
the last row.

transformers' ``DynamicCache`` concatenates every layer's cache with each new token, so every
decoding step copies the whole batch's keys and values, and a request joining or leaving the
batch costs another whole copy. :class:`KvSlots` keeps each layer's keys and values in buffers
``[row capacity, heads, column capacity, dim]``: rows ``[0, rows)`` are in use, columns
``[start, end)`` hold the cache (rows end in the same column: left-padded, as the masks say).

- a step writes its new column in place and attention reads a view (:meth:`cache`);
- a joining request's rows are written into the next free rows, its columns ending at ``end``
  (only its own rows are copied; the others do not move);
- a leaving row is replaced by the last row (one row copied, never the batch), and columns no
  row attends to any more are dropped by moving ``start``.

The buffers grow by a quarter when a request needs more rows or columns than they have (then
everything is copied: :attr:`KvSlots.regrown` counts it). A long prompt read a chunk per step
would make that copy at once when it joins, every row widened to its length (a second's stall
for every decoding row with 2,000 columns); :meth:`KvSlots.reserve` instead lays out the room
as soon as the prompt's length is known and :meth:`KvSlots.grow` moves a few layers into it at
each chunk. Until a layer is moved it keeps its old buffers, at its own column offset from the
mask's columns. Only models whose every layer is a plain full-attention layer can use it
(:func:`supports`); sliding-window layers keep their own cache class, and the batch falls back
to ``DynamicCache`` for them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, width, dim]


def supports(config: object) -> bool:
    """Whether a model's layers are all plain full attention (what :class:`KvSlots` holds)."""
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    sliding = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return sliding is None


class _SlotLayer(DynamicLayer):
    """One layer of a :class:`KvSlots` as transformers' attention sees it: its update writes the
    new columns into the buffers and returns a view of the rows' whole cache."""

    def __init__(self, slots: KvSlots, index: int):
        super().__init__()
        self.slots, self.index = slots, index
        keys = slots.buffers[index][0]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = slots.view(index, slots.end)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        slots, width = self.slots, key_states.shape[-2]
        keys, values = slots.buffers[self.index]
        end = slots.end + slots.offsets[self.index]
        keys[: slots.rows, :, end : end + width] = key_states
        values[: slots.rows, :, end : end + width] = value_states
        self.keys, self.values = slots.view(self.index, slots.end + width)
        return self.keys, self.values


class KvSlots:
    """The running batch's keys and values, attention mask and each row's last position, in
    buffers (see the module docstring). Starts empty: rows come with :meth:`join`.

    Columns are counted as the mask counts them; layer ``i`` keeps column ``c`` at ``c +
    offsets[i]`` of its buffers (0 for a layer laid out as the mask is)."""

    def __init__(self) -> None:
        self.buffers: Layers = []
        self.offsets: list[int] = []
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.last = torch.zeros(0, 1, dtype=torch.long)
        self.rows, self.start, self.end = 0, 0, 0
        self.regrown = 0  # times the room was (re)laid out, everything in use to be copied into it

    @property
    def width(self) -> int:
        return self.end - self.start

    def view(self, index: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        (keys, values), offset = self.buffers[index], self.offsets[index]
        used = slice(self.start + offset, end + offset)
        return keys[: self.rows, :, used], values[: self.rows, :, used]

    def join(self, layers: Layers, mask: torch.Tensor, last: torch.Tensor) -> range:
        """Write new rows (their cache ``[m, heads, width, dim]`` per layer, mask, last position)
        after the rows in use, their columns ending at ``end``; the rows they take."""
        added, width = mask.shape
        if not self.buffers:
            self.buffers = [(k.new_zeros(0, *k.shape[1:]), v.new_zeros(0, *v.shape[1:])) for k, v in layers]
            self.offsets = [0] * len(layers)
            self.mask, self.last = mask.new_zeros(0, 0), last.new_zeros(0, 1)
        self._room(added, 0, left=width)
        rows, first = range(self.rows, self.rows + added), self.end - width
        self.mask[rows.start : rows.stop].zero_()
        self.mask[rows.start : rows.stop, first : self.end] = mask
        self.last[rows.start : rows.stop] = last
        for (keys, values), offset, (new_keys, new_values) in zip(self.buffers, self.offsets, layers, strict=True):
            keys[rows.start : rows.stop, :, first + offset : self.end + offset] = new_keys
            values[rows.start : rows.stop, :, first + offset : self.end + offset] = new_values
        self.rows, self.start = rows.stop, min(self.start, first) if self.rows else first
        return rows

    def remove(self, row: int) -> int | None:
        """Free ``row``: the last row in use moves into it (its number returned; None when
        ``row`` was the last). One row is copied, in the columns in use."""
        last = self.rows - 1
        self.rows = last
        if row == last:
            return None
        for (keys, values), offset in zip(self.buffers, self.offsets, strict=True):
            used = slice(self.start + offset, self.end + offset)
            keys[row, :, used] = keys[last, :, used]
            values[row, :, used] = values[last, :, used]
        self.mask[row] = self.mask[last]
        self.last[row] = self.last[last]
        return last

    def trim(self) -> None:
        """Drop leading columns that no row attends to any more (by moving ``start``: no copy)."""
        used = self.mask[: self.rows, self.start : self.end].any(0).nonzero()
        self.start = self.start + int(used[0]) if len(used) else self.end

    def step(self) -> tuple[Cache, torch.Tensor, torch.Tensor]:
        """What one decoding step feeds the model: a cache whose update writes the new column in
        place, the mask with that column, and the rows' positions (one after their last)."""
        self._room(0, 1)
        self.mask[: self.rows, self.end] = 1
        self.last[: self.rows] += 1
        cache = Cache(layers=[_SlotLayer(self, index) for index in range(len(self.buffers))])
        return cache, self.mask[: self.rows, self.start : self.end + 1], self.last[: self.rows]

    def stepped(self, cache: Cache) -> None:
        """The step's forward pass wrote its column (through :meth:`step`'s cache)."""
        self.end += 1

    def reserve(self, rows: int, left: int) -> None:
        """Lay out room for ``rows`` more rows whose cache is ``left`` columns wide (a prompt
        being read in chunks), without moving any layer yet: :meth:`grow` moves them, the join
        moves whichever are left."""
        if self.buffers and not self._fits(self.mask.shape, 0, rows, 0, left):
            self._lay_out(rows, 0, left)

    def grow(self, parts: int) -> int:
        """Move one ``parts``-th (at least one) of the layers not yet laid out as the mask is
        into buffers that are; how many are still to move."""
        waiting = [i for i, (keys, _) in enumerate(self.buffers) if not self._laid_out(i, keys)]
        moving = -(-len(waiting) // max(parts, 1))
        for index in waiting[:moving]:
            self._move(index)
        return len(waiting) - moving

    def _room(self, rows: int, right: int, left: int = 0) -> None:
        """Make room for ``rows`` more rows, ``right`` columns after ``end`` and ``left`` before
        it: a new layout when the mask lacks it, then every layer that lacks it moved into it."""
        if not self._fits(self.mask.shape, 0, rows, right, left):
            self._lay_out(rows, right, left)
        for index, (keys, _) in enumerate(self.buffers):
            if not self._fits((keys.shape[0], keys.shape[2]), self.offsets[index], rows, right, left):
                self._move(index)

    def _fits(self, shape: tuple[int, ...], offset: int, rows: int, right: int, left: int) -> bool:
        capacity_rows, capacity = shape[0], shape[1]
        return (
            self.rows + rows <= capacity_rows
            and self.end + right + offset <= capacity
            and self.end - left + offset >= 0
        )

    def _lay_out(self, rows: int, right: int, left: int) -> None:
        """A new mask with room to spare (the layers follow: :meth:`_move`)."""
        # A quarter more room on each side (geometric growth: regrowing stays rare), not double:
        # every row has every column, so a long prompt's width is paid by all the rows.
        width = self.width
        spare = max(max(left, width) // 4, 16)
        end = max(left, width) + spare  # room on the left for a longer prompt joining
        capacity = end + right + spare  # and on the right for new tokens
        needed = self.rows + rows  # and a quarter more rows: every row costs all the columns
        capacity_rows = needed + max(needed // 4, 2)
        mask = self.mask.new_zeros(capacity_rows, capacity)
        mask[: self.rows, end - width : end] = self.mask[: self.rows, self.start : self.end]
        last = self.last.new_zeros(capacity_rows, 1)
        last[: self.rows] = self.last[: self.rows]
        shift = end - self.end  # every column moves by as much; the layers' buffers stay where they are
        self.offsets = [offset - shift for offset in self.offsets]
        self.mask, self.last, self.start, self.end = mask, last, end - width, end
        self.regrown += 1

    def _laid_out(self, index: int, keys: torch.Tensor) -> bool:
        return self.offsets[index] == 0 and (keys.shape[0], keys.shape[2]) == tuple(self.mask.shape)

    def _move(self, index: int) -> None:
        """Copy layer ``index``'s cache in use into new buffers laid out as the mask is."""
        offset, (rows, capacity) = self.offsets[index], self.mask.shape
        moved = []
        for t in self.buffers[index]:
            new = t.new_zeros(rows, t.shape[1], capacity, t.shape[3])
            new[: self.rows, :, self.start : self.end] = t[: self.rows, :, self.start + offset : self.end + offset]
            moved.append(new)
        self.buffers[index], self.offsets[index] = (moved[0], moved[1]), 0


class ConcatKv:
    """The same rows and operations over transformers' ``DynamicCache`` (for models with
    sliding-window layers, whose cache class trims itself): a step, a join and a trim copy the
    cache, as concatenation does."""

    def __init__(self, config: object):
        self.config = config
        self.layers: Layers = []
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.last = torch.zeros(0, 1, dtype=torch.long)

    @property
    def rows(self) -> int:
        return len(self.mask)

    def join(self, layers: Layers, mask: torch.Tensor, last: torch.Tensor) -> range:
        rows = range(self.rows, self.rows + len(mask))
        if not self.layers:
            self.layers, self.mask, self.last = layers, mask, last
            return rows
        width = max(self.mask.shape[1], mask.shape[1])
        self.layers = [
            (
                torch.cat([_left_pad(k, width, 2), _left_pad(nk, width, 2)]),
                torch.cat([_left_pad(v, width, 2), _left_pad(nv, width, 2)]),
            )
            for (k, v), (nk, nv) in zip(self.layers, layers, strict=True)
        ]
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.last = torch.cat([self.last, last])
        return rows

    def remove(self, row: int) -> int | None:
        last = self.rows - 1
        moved = None
        if row != last:
            for keys, values in self.layers:
                keys[row], values[row] = keys[last], values[last]
            self.mask[row], self.last[row], moved = self.mask[last], self.last[last], last
        self.layers = [(k[:last], v[:last]) for k, v in self.layers]
        self.mask, self.last = self.mask[:last], self.last[:last]
        return moved

    def reserve(self, rows: int, left: int) -> None:
        """Nothing to lay out: a join concatenates."""

    def grow(self, parts: int) -> int:
        return 0

    def trim(self) -> None:
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start:
            self.layers = [(k[:, :, start:], v[:, :, start:]) for k, v in self.layers]
            self.mask = self.mask[:, start:]

    def step(self) -> tuple[Cache, torch.Tensor, torch.Tensor]:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        self.last = self.last + 1
        return DynamicCache(self.layers, config=self.config), self.mask, self.last

    def stepped(self, cache: Cache) -> None:
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if not missing:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
