"""A bounded store of frozen soft prompts' key/value caches, for serving many tasks.

A soft prompt that leads its template does not depend on the row's text: its keys and values can
be computed once and reused by every later batch. With thousands of tasks, keeping every cache
costs a few hundred kilobytes per task, so the store keeps the most recently used ones up to a
byte budget and computes a missing one on demand (all of a batch's misses in one forward pass).
A server fills it ahead of requests (:meth:`PromptCaches.warm`): a cold cache is a miss on a
task's first request, which with a thousand tasks is most requests of the first minute. Given a
:class:`~softprompt.core.prompt_cache_folder.PromptCacheFolder`, the store reads a missing cache
from there before computing it, and writes there what it computes.

In memory the store never looks at a prompt's values (the folder names its files by them): its
owner promises that the prompt under a key does not change, and calls :meth:`PromptCaches.forget`
when it replaces one. Training, where prompts
change every step, uses no store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.core.prompt_cache_folder import PromptCacheFolder

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, length, dim]
# What a key's prompt is: soft-token embeddings ``[n, H]`` to run, or one row's keys and values
# already (prefix tuning's prefixes, ``[1, heads, n, dim]`` per layer), kept as they are.
Prompt = torch.Tensor | Layers


@dataclass
class _Entry:
    layers: Layers  # one row, exactly the prompt's length (no padding); empty for an empty prompt
    length: int
    bytes: int


class PromptCaches:
    """Least-recently-used caches of frozen prompts, keyed by whatever the owner chooses.

    Args:
        backbone: the backbone the prompts run through.
        max_bytes: the budget for kept caches (None: no limit). A batch may need more than the
            budget for a moment; what it used is then trimmed after it.
        dtype: the dtype caches are kept in (None: the backbone's). ``torch.float16`` halves a
            float32 backbone's caches, so twice as many fit the budget; they are read back in the
            backbone's dtype (the serving guide measures what that changes in the answers;
            ``torch.bfloat16``'s 8-bit mantissa changed them by more than 1e-3).
        folder: a second tier on disk (in the same dtype): missing caches are read from it before
            they are computed, and computed ones are written to it.
    """

    def __init__(
        self,
        backbone: Backbone,
        max_bytes: int | None = None,
        dtype: torch.dtype | None = None,
        folder: PromptCacheFolder | None = None,
    ):
        self.backbone = backbone
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.folder = folder
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0  # computed: neither kept in memory nor in the folder (which counts its reads)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s cache (its prompt was replaced or removed)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.bytes

    def batch(self, keys: Sequence[Hashable], prompt_of: Callable[[Hashable], Prompt]) -> tuple[Layers, torch.Tensor]:
        """The caches of ``keys`` side by side, left-padded to the longest, and their ``[len(keys),
        width]`` padding mask (the layout of :func:`softprompt.core.forward.prompt_cache`).
        ``prompt_of(key)`` gives a missing key's prompt (see :data:`Prompt`). Needs one key whose
        prompt is not empty."""
        return core.kv_side_by_side(self.own(keys, prompt_of))

    def own(self, keys: Sequence[Hashable], prompt_of: Callable[[Hashable], Prompt]) -> list[Layers | None]:
        """Each key's own cache (one row, exactly its prompt's length; None for an empty prompt),
        in the backbone's dtype; missing ones computed together (see :meth:`batch`)."""
        missing = [key for key in dict.fromkeys(keys) if key not in self._entries]
        self.hits += len(keys) - len(missing)
        if missing:
            self.misses += len(missing) - self._compute(missing, prompt_of)
        dtype = self.backbone.placement.dtype  # kept in self.dtype, computed with in the backbone's
        out = []
        for key in keys:
            self._entries.move_to_end(key)
            entry = self._entries[key]
            out.append([(k.to(dtype), v.to(dtype)) for k, v in entry.layers] if entry.length else None)
        self._trim()
        return out

    def warm(self, keys: Sequence[Hashable], prompt_of: Callable[[Hashable], Prompt], chunk: int = 64) -> int:
        """Compute the caches of ``keys`` not kept yet, ``chunk`` prompts per forward pass, so
        that their requests find them kept (a server warms its tasks at start and when one is
        added). Only when they all fit the budget, judged after the first chunk: a part of them
        would be evicted by the first requests' misses, so computing it would only delay the
        start. Not counted as misses. Returns how many were computed."""
        todo = [key for key in dict.fromkeys(keys) if key not in self._entries]
        done = 0
        for start in range(0, len(todo), chunk):
            before = self.bytes
            self._compute(todo[start : start + chunk], prompt_of)
            done += len(todo[start : start + chunk])
            each = (self.bytes - before) / len(todo[start : start + chunk])
            if self.max_bytes is not None and self.bytes + each * (len(todo) - done) > self.max_bytes:
                break
        self._trim()
        return done

    def _compute(self, keys: list[Hashable], prompt_of: Callable[[Hashable], Prompt]) -> int:
        """Keep the caches of ``keys``: read from the folder, else computed together (and
        written to the folder). Returns how many were read."""
        prompts = {key: prompt_of(key) for key in keys}
        for key in keys:
            prompt = prompts[key]
            if isinstance(prompt, list):  # keys and values already (prefix tuning's): kept as they are
                own = [(k.detach().clone(), v.detach().clone()) for k, v in prompt]
                self._keep(key, own, own[0][0].shape[2])
            elif not len(prompt):
                self._entries[key] = _Entry([], 0, 0)
        running = [key for key in keys if not isinstance(prompts[key], list) and len(prompts[key])]
        read = 0
        if self.folder is not None:
            for key in running:
                found = self.folder.read(prompts[key])
                if found is not None:
                    self._keep(key, found, len(prompts[key]))
                    read += 1
            running = [key for key in running if key not in self._entries]
        if not running:
            return read
        layers, _ = core.prompt_cache(self.backbone, [prompts[key] for key in running])
        width = max(len(prompts[key]) for key in running)
        for row, key in enumerate(running):
            start = width - len(prompts[key])  # left-padded: the prompt's own positions come last
            # Copies, not views that would hold the whole batch's tensors in memory.
            own = [(k[row : row + 1, :, start:].clone(), v[row : row + 1, :, start:].clone()) for k, v in layers]
            kept = self._keep(key, own, len(prompts[key]))
            if self.folder is not None:
                self.folder.write(prompts[key], kept)
        return read

    def _keep(self, key: Hashable, layers: Layers, length: int) -> Layers:
        if self.dtype is not None:
            layers = [(k.to(self.dtype), v.to(self.dtype)) for k, v in layers]
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        self._entries[key] = _Entry(layers, length, size)
        self.bytes += size
        return layers

    def _trim(self) -> None:
        if self.max_bytes is None:
            return
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.bytes


@dataclass(frozen=True)
class PromptCacheSettings:
    """How a server keeps its prompt caches (``softprompt serve --prompt-cache-*``; plain values,
    so that Ray can send them to every replica).

    Attributes:
        megabytes: memory for kept caches (None: no limit).
        dtype: ``"float16"``, or None / ``"auto"`` for the backbone's dtype.
        folder: a folder that keeps computed caches on disk, read back on a miss (None: none).
        folder_megabytes: the folder's budget (None: no limit).
    """

    megabytes: float | None = 768.0
    dtype: str | None = None
    folder: str | None = None
    folder_megabytes: float | None = 4096.0

    def store(self, backbone: Backbone) -> PromptCaches:
        """An empty store for ``backbone`` with these settings.

        Raises:
            SoftpromptError: the folder cannot be written.
        """
        dtype = None if self.dtype in (None, "auto") else getattr(torch, self.dtype)
        folder = None
        if self.folder is not None:
            folder = PromptCacheFolder(self.folder, backbone, dtype, _bytes(self.folder_megabytes))
        return PromptCaches(backbone, _bytes(self.megabytes), dtype, folder)


def _bytes(megabytes: float | None) -> int | None:
    return None if megabytes is None else int(megabytes * 2**20)
