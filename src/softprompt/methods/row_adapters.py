"""LoRA and IA3 weights of many tasks applied per batch row, on one shared frozen backbone.

Training injects peft's layers into the backbone (:mod:`softprompt.methods.peft_tuners`), which
makes the backbone one task's. To serve many such tasks from one backbone in one batch, each
task's weights are read from its artifact into a :class:`RowAdapter` and the backbone is left
untouched but for hooks on the targeted layers: while :meth:`RowAdapters.selected` names each
row's adapter, a LoRA layer adds that row's own low-rank product (the rows' ``A`` and ``B``
gathered side by side, as punica and S-LoRA do), and an IA3 layer rescales that row's keys,
values or feed-forward input by its own vector. Rows without an adapter (soft-prompt and
zero-shot tasks) get nothing added; outside :meth:`RowAdapters.selected`, and on a backbone no
served adapter touches, the hooks do nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.methods.base import RESIDENT_PREFIX

LORA_A, LORA_B, IA3 = ".lora_A.weight", ".lora_B.weight", ".ia3_l"


@dataclass(eq=False)
class LowRank:
    """A LoRA update of one linear layer: ``scale * B @ A`` (``A``: [r, in], ``B``: [out, r])."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


@dataclass(eq=False)
class Rescale:
    """An IA3 vector of one linear layer: its output (``before`` False: keys, values) or its input
    (``before``: a feed-forward layer) multiplied by ``vector``."""

    vector: torch.Tensor
    before: bool


@dataclass(eq=False)  # compared by identity: the key of a row's adapter in a batch
class RowAdapter:
    """One task's per-layer weights, by the layer's path in the backbone's model."""

    method: str
    layers: dict[str, LowRank | Rescale] = field(default_factory=dict)


def read_row_adapter(method: str, state: dict[str, torch.Tensor], lora_alpha: float | None = None) -> RowAdapter:
    """A :class:`RowAdapter` from an artifact's saved state (peft's names: ``base_model.model.PATH.lora_A.weight``,
    ``...lora_B.weight``, ``...ia3_l``); LoRA's scale is ``lora_alpha / r``.

    Raises:
        SoftpromptError: the state holds something else (a bias, a layer saved whole), or LoRA
            matrices without their pair.
    """
    adapter = RowAdapter(method)
    for key, tensor in state.items():
        path = key.removeprefix(RESIDENT_PREFIX)
        if path.endswith(LORA_A):
            path = path.removesuffix(LORA_A)
            pair = state.get(RESIDENT_PREFIX + path + LORA_B)
            if pair is None or lora_alpha is None:
                raise SoftpromptError(f"{key}: a LoRA matrix without its lora_B (or without lora.alpha)")
            adapter.layers[path] = LowRank(tensor.float(), pair.float(), lora_alpha / tensor.shape[0])
        elif path.endswith(IA3):
            # peft keeps a feed-forward layer's vector as [1, in] (the input is scaled), others as [out, 1].
            before = tensor.shape[0] == 1 and tensor.shape[-1] > 1
            adapter.layers[path.removesuffix(IA3)] = Rescale(tensor.float().flatten(), before)
        elif not path.endswith(LORA_B):
            raise SoftpromptError(f"{key}: not a LoRA or IA3 weight; only those are applied per row")
    if not adapter.layers:
        raise SoftpromptError(f"no LoRA or IA3 weights in the {method} artifact")
    return adapter


class RowAdapters:
    """The hooks that apply each row's :class:`RowAdapter` to ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.hooked: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}
        self._rows: torch.Tensor | None = None  # per row, 1 + its adapter's place in _distinct (0: none)
        self._adapted: torch.Tensor | None = None  # the rows with an adapter (None: every row has one)
        self._distinct: tuple[RowAdapter, ...] = ()
        self._stacks: dict[tuple[str, str], tuple[torch.Tensor, ...] | None] = {}  # per kind and layer, for _distinct

    def check(self, adapter: RowAdapter) -> None:
        """That ``adapter`` fits the model's layers (a SoftpromptError naming the first that does not)."""
        for path, weights in adapter.layers.items():
            try:
                layer = self.model.get_submodule(path)
            except AttributeError:
                raise SoftpromptError(f"{adapter.method}: the backbone has no layer {path}") from None
            inputs, outputs = _features(layer)
            if isinstance(weights, LowRank):
                fits = weights.a.shape[1] == inputs and weights.b.shape[0] == outputs
            else:
                fits = len(weights.vector) == (inputs if weights.before else outputs)
            if not fits:
                raise SoftpromptError(f"{adapter.method}: the weights of {path} do not fit the backbone's layer")

    @contextlib.contextmanager
    def selected(self, adapters: Sequence[RowAdapter | None]) -> Iterator[None]:
        """Apply ``adapters[i]`` to row ``i`` of the forward passes run inside (all None: nothing)."""
        distinct = tuple(dict.fromkeys(a for a in adapters if a is not None))
        if not distinct:
            yield
            return
        for adapter in distinct:
            self._hook(adapter)
        if distinct != self._distinct:  # a decoding batch keeps its members for many steps
            self._distinct, self._stacks = distinct, {}
        place = {id(a): i + 1 for i, a in enumerate(distinct)}
        self._rows = torch.tensor([0 if a is None else place[id(a)] for a in adapters])
        # The rows that have an adapter, when not all do: only they run the low-rank product.
        self._adapted = None if all(a is not None for a in adapters) else self._rows.nonzero().squeeze(1)
        try:
            yield
        finally:
            self._rows = self._adapted = None

    def _hook(self, adapter: RowAdapter) -> None:
        for path in adapter.layers:
            if path not in self.hooked:
                layer = self.model.get_submodule(path)
                self.hooked[path] = [
                    layer.register_forward_pre_hook(lambda _, args, p=path: self._before(p, args)),
                    layer.register_forward_hook(lambda _, args, out, p=path: self._after(p, args, out)),
                ]

    def _stack(self, path: str, kind: str, like: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The batch's adapters' weights of ``kind`` (``lora``, ``scale_in``, ``scale_out``) at layer
        ``path``, side by side with row 0 the identity, on ``like``'s device and dtype (None: no
        adapter of the batch has such weights there)."""
        key = (kind, path)
        if key not in self._stacks:
            found = [_of_kind(a.layers.get(path), kind) for a in self._distinct]
            stack = None if all(w is None for w in found) else _stacked(found)
            self._stacks[key] = None if stack is None else tuple(t.to(like.device, like.dtype) for t in stack)
        return self._stacks[key]

    def _before(self, path: str, args: tuple) -> tuple | None:
        if self._rows is None:
            return None
        x = args[0]
        stack = self._stack(path, "scale_in", x)
        if stack is None:
            return None
        return (x * stack[0][self._rows.to(x.device)].unsqueeze(1), *args[1:])

    def _after(self, path: str, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if self._rows is None:
            return None
        rows = self._rows.to(out.device)
        scale = self._stack(path, "scale_out", out)
        if scale is not None:
            out = out * scale[0][rows].unsqueeze(1)
        low_rank = self._stack(path, "lora", out)
        if low_rank is not None:
            a, b = low_rank
            x = args[0]
            if self._adapted is not None:  # rows of other tasks add nothing: leave them out
                adapted = self._adapted.to(out.device)
                rows, x = rows[adapted], x[adapted]
            # Each row's own x @ A^T @ B^T (the scale is in B): two batched products of rank r.
            delta = (x @ a[rows].transpose(1, 2)) @ b[rows].transpose(1, 2)
            out = out + delta if self._adapted is None else out.index_add(0, adapted, delta)
        return out


def _of_kind(weights: LowRank | Rescale | None, kind: str) -> LowRank | Rescale | None:
    if isinstance(weights, LowRank):
        return weights if kind == "lora" else None
    if isinstance(weights, Rescale):
        return weights if kind == ("scale_in" if weights.before else "scale_out") else None
    return None


def _stacked(found: list) -> tuple[torch.Tensor, ...]:
    """Weights of one kind, row ``i + 1`` for ``found[i]`` and the identity (zeros, ones) elsewhere."""
    present = [w for w in found if w is not None]
    if isinstance(present[0], LowRank):
        rank = max(w.a.shape[0] for w in present)
        a = present[0].a.new_zeros(len(found) + 1, rank, present[0].a.shape[1])
        b = present[0].b.new_zeros(len(found) + 1, present[0].b.shape[0], rank)
        for i, w in enumerate(found, start=1):
            if w is not None:
                a[i, : w.a.shape[0]] = w.a
                b[i, :, : w.b.shape[1]] = w.b * w.scale
        return a, b
    vectors = present[0].vector.new_ones(len(found) + 1, len(present[0].vector))
    for i, w in enumerate(found, start=1):
        if w is not None:
            vectors[i] = w.vector
    return (vectors,)


def _features(layer: nn.Module) -> tuple[int, int]:
    """A linear layer's (input, output) features (``nn.Linear``, or GPT-2's ``Conv1D``)."""
    if hasattr(layer, "in_features"):
        return layer.in_features, layer.out_features
    weight = getattr(layer, "weight", None)
    if weight is None or weight.dim() != 2:
        raise SoftpromptError(f"{type(layer).__name__} is not a linear layer")
    return weight.shape[0], weight.shape[1]  # Conv1D keeps [in, out]
