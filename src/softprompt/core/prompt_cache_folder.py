"""A folder of frozen soft prompts' key/value caches: the second tier of :class:`PromptCaches`.

With thousands of tasks asked at random, most requests find their task's prompt cache evicted
from memory (or never computed: a task's first request after a start), and computing it again
runs the prompt's soft tokens through every layer. Reading the same cache from a file costs a
small fraction of that, so a server given a folder writes each cache it computes there and reads
it back on a later miss, across evictions, restarts and reloads (the role LMCache's disk tier
plays for vLLM).

Entries are named by what they hold, never by task: a hash of the backbone's identity (its
weights' fingerprint, the dtype it computes in, quantization, the kept dtype) and of the
prompt's own values. A replaced prompt therefore never finds its predecessor's cache, two tasks
with the same prompt share one entry, and several servers may share a folder. Each file is a
safetensors file (nothing is unpickled) with a checksum of its tensors, written atomically; one
that does not check out is deleted and counts as a miss. The folder is bounded: past its budget
the least recently used files are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import safetensors.torch
import torch

from softprompt.atomic import atomic_write
from softprompt.backbones import Backbone
from softprompt.errors import SoftpromptError

logger = logging.getLogger(__name__)

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, heads, length, dim]
FORMAT = b"softprompt prompt kv 1"  # part of every name: a new layout never reads an old file
SUFFIX = ".safetensors"
CHECKSUM = "sha256"
TRIM_TO = 0.9  # past the budget, remove the oldest files down to this share of it (not one per write)


class PromptCacheFolder:
    """Prompt caches kept in ``folder`` for ``backbone``, in ``dtype`` (None: the backbone's),
    up to ``max_bytes`` (None: no limit).

    Raises:
        SoftpromptError: ``folder`` cannot be created or written.
    """

    def __init__(
        self, folder: str | Path, backbone: Backbone, dtype: torch.dtype | None = None, max_bytes: int | None = None
    ):
        self.folder = Path(folder)
        self.backbone = backbone
        self.dtype = dtype or backbone.placement.dtype
        self.max_bytes = max_bytes
        check_writable(self.folder)
        placement, quantized = backbone.placement.dtype, backbone.quantized
        identity = [backbone.fingerprint, placement, self.dtype, quantized, backbone.modified_by]
        self._identity = hashlib.sha256(FORMAT + repr(identity).encode()).digest()
        self.bytes = sum(size for _, _, size in self._files())
        self.reads = 0  # caches found here
        self.writes = 0
        self._write_failed = False

    def path_of(self, prompt: torch.Tensor) -> Path:
        """Where the cache of soft-token embeddings ``prompt`` (``[n, H]``) is kept."""
        values = prompt.detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha256(self._identity + repr(tuple(values.shape)).encode())
        digest.update(values.numpy().tobytes())
        name = digest.hexdigest()
        return self.folder / name[:2] / f"{name}{SUFFIX}"

    def read(self, prompt: torch.Tensor) -> Layers | None:
        """The cache of ``prompt`` kept here (on the backbone's device, in the kept dtype), or None."""
        path = self.path_of(prompt)
        try:
            data = path.read_bytes()
        except OSError:  # not kept (or removed by another server sharing the folder)
            return None
        layers = self._decode(data, len(prompt))
        if layers is None:
            logger.warning("prompt cache %s is damaged; removed, computed again", path)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # removed meanwhile by a server sharing the folder: still read
            os.utime(path)  # used now: the last to be removed
        self.reads += 1
        device = self.backbone.device
        return [(k.to(device), v.to(device)) for k, v in layers]

    def write(self, prompt: torch.Tensor, layers: Layers) -> None:
        """Keep ``layers``, the cache of ``prompt`` in the kept dtype. A failed write (a full
        disk) is logged once and otherwise ignored: the cache is only slower to find."""
        path = self.path_of(prompt)
        tensors = {}
        for i, (keys, values) in enumerate(layers):
            tensors[f"k{i}"], tensors[f"v{i}"] = keys.detach().cpu().contiguous(), values.detach().cpu().contiguous()
        tensors[CHECKSUM] = _checksum(tensors)
        data = safetensors.torch.save(tensors)
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:
            if not self._write_failed:
                logger.warning("cannot write prompt caches to %s (%s); they are computed when missed", self.folder, exc)
            self._write_failed = True
            return
        self.writes += 1
        self.bytes += len(data)
        if self.max_bytes is not None and self.bytes > self.max_bytes:
            self._trim()

    def _decode(self, data: bytes, length: int) -> Layers | None:
        try:
            tensors = safetensors.torch.load(data)
        except Exception:  # any damage: safetensors raises its own error types
            return None
        checksum = tensors.pop(CHECKSUM, None)
        if checksum is None or not torch.equal(checksum, _checksum(tensors)):
            return None
        count = len(tensors) // 2
        if count == 0 or set(tensors) != {f"{kind}{i}" for kind in "kv" for i in range(count)}:
            return None
        layers = [(tensors[f"k{i}"], tensors[f"v{i}"]) for i in range(count)]
        if any(k.shape[-2] != length or k.dtype != self.dtype for k, _ in layers):
            return None
        return layers

    def _files(self) -> list[tuple[float, Path, int]]:
        """Every kept file: when it was last used, where, its size."""
        found = []
        for sub in os.scandir(self.folder):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(SUFFIX):
                    try:
                        stat = entry.stat()
                    except OSError:  # removed meanwhile
                        continue
                    found.append((stat.st_mtime, Path(entry.path), stat.st_size))
        return found

    def _trim(self) -> None:
        """Remove the least recently used files down to :data:`TRIM_TO` of the budget (counted
        again from the folder: other servers may share it)."""
        files = sorted(self._files())
        self.bytes = sum(size for _, _, size in files)
        target = TRIM_TO * self.max_bytes
        for _, path, size in files:
            if self.bytes <= target:
                break
            path.unlink(missing_ok=True)
            self.bytes -= size


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it.

    Raises:
        SoftpromptError: it cannot be written (one line, naming the flag and the folder).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".writable", lambda tmp: tmp.write_bytes(b""))
    except OSError as exc:
        where = f"--prompt-cache-dir {folder}"
        raise SoftpromptError(f"{where}: cannot write there ({exc.strerror}); give a writable folder") from None


def _checksum(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)
