"""Sharding the frozen backbone across training processes with FSDP, as asked for by accelerate's
own launch config (``accelerate launch --use_fsdp ...`` or an FSDP ``--config_file``).

softprompt trains few parameters on a large frozen backbone, so the weights worth sharding are the
frozen ones: each transformer block is wrapped by torch's ``fully_shard`` (FSDP2), and each of N
processes keeps 1/N of every block's frozen weights, gathering a block only while it runs. The
trained parameters (a prompt, or LoRA matrices inside the blocks) stay whole on every process
(``ignored_params``) and DDP averages their gradients exactly as without FSDP, so checkpoints,
artifacts and resume see plain tensors. Accelerate's own FSDP wrapping is not used because it
would shard the trained parameters and not the frozen backbone (the loop hands accelerate only the
trained ones, see ``loop.Objective``).

Because the blocks are sharded, every process must run every forward pass of the backbone
together: training, dev and test evaluation all run on each process; only the main one writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from softprompt.errors import SoftpromptError
from softprompt.training.processes import processes

logger = logging.getLogger(__name__)

FSDP_FLAG = "ACCELERATE_USE_FSDP"
DEEPSPEED_FLAG = "ACCELERATE_USE_DEEPSPEED"
# FSDP1 sharding strategies by number, as an accelerate config may give them
V1_STRATEGIES = dict(enumerate(("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"), 1))


@dataclass(frozen=True)
class Sharding:
    """How to shard the frozen blocks, read from accelerate's FSDP settings."""

    reshard_after_forward: bool  # FULL_SHARD (True) or SHARD_GRAD_OP (False)
    block_names: tuple[str, ...] = ()  # fsdp_transformer_layer_cls_to_wrap; empty: the model's own


def _flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).lower() in ("true", "1", "yes")


def requested_sharding() -> Sharding | None:
    """The sharding the launch config asks for, or None (no FSDP, or FSDP's NO_SHARD).

    Raises:
        SoftpromptError: a DeepSpeed launch, or FSDP settings this loop cannot honour.
    """
    if _flag(DEEPSPEED_FLAG):
        raise SoftpromptError(
            "DeepSpeed launch configs are not supported: softprompt trains a few parameters on a frozen "
            "backbone; to shard the backbone across GPUs, launch with an FSDP config (--use_fsdp)"
        )
    if not _flag(FSDP_FLAG) or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    # The FSDP_* variables are how `accelerate launch` hands its FSDP config to each process
    # (accelerate's own FullyShardedDataParallelPlugin reads them too, but needs a GPU to build).
    if os.environ.get("FSDP_VERSION", "1") == "2":
        reshard = _flag("FSDP_RESHARD_AFTER_FORWARD", default="true")
    else:
        strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        # `accelerate config` saves FSDP1's strategy as fsdp_reshard_after_forward, while the
        # launcher sets FSDP_SHARDING_STRATEGY to its FULL_SHARD default: a name there wins.
        named = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "").upper()
        if named not in ("", "TRUE", "FALSE", "1", "FULL_SHARD"):
            strategy = named
        strategy = V1_STRATEGIES.get(int(strategy), strategy) if strategy.isdigit() else strategy
        if strategy == "NO_SHARD":
            return None  # plain data parallel: DDP alone
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise SoftpromptError(f"fsdp_sharding_strategy {strategy}: use FULL_SHARD, SHARD_GRAD_OP or NO_SHARD")
        reshard = strategy == "FULL_SHARD"
    if _flag("FSDP_OFFLOAD_PARAMS"):
        raise SoftpromptError("fsdp_offload_params is not supported: set it to false in the accelerate config")
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",")
    return Sharding(reshard, tuple(name.strip() for name in names if name.strip()))


def refuse_sharded_launch(command: str) -> None:
    """For the training commands that do not shard the backbone: refuse an FSDP (or DeepSpeed)
    launch before anything is loaded or written.

    Raises:
        SoftpromptError: the launch config asks for sharding.
    """
    if requested_sharding() is not None:
        raise SoftpromptError(
            f"{command} does not shard the backbone with FSDP (softprompt train does); "
            "launch it without the FSDP config, as plain data parallel"
        )


def shard_for_launch(model: Any) -> bool:
    """Shard ``model``'s frozen backbone blocks when the launch config asks for FSDP, and mark
    the model so (see ``TaskModel.inline_soft_prompt``); True if it did."""
    sharding = requested_sharding()
    if sharding is None:
        return False
    if model.backbone.quantized:
        raise SoftpromptError("FSDP: a quantized backbone cannot be sharded; load it with quantize=none")
    blocks = shard_frozen_blocks(model.backbone.model, model.trainable_parameters(), sharding)
    model.sharded = True
    logger.info("FSDP: the frozen weights of %d blocks are sharded across %d processes", blocks, processes().count)
    return True


def shard_frozen_blocks(model: nn.Module, trained: Iterable[nn.Parameter], sharding: Sharding) -> int:
    """Wrap each transformer block of ``model`` in FSDP2, sharding its frozen weights across the
    processes and leaving ``trained`` parameters whole. Returns the number of blocks sharded.

    Raises:
        SoftpromptError: no block of the named classes, or no block with frozen weights.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if any(isinstance(module, FSDPModule) for module in model.modules()):
        raise SoftpromptError("FSDP: this backbone was sharded by an earlier run; load a fresh one for this run")
    blocks = _blocks(model, sharding.block_names)
    if not blocks:
        names = sharding.block_names or getattr(model, "_no_split_modules", None) or ()
        raise SoftpromptError(
            f"FSDP: {type(model).__name__} has no module of the classes {sorted(names) or '(none named)'} "
            "outside its input embeddings; "
            "set fsdp_transformer_layer_cls_to_wrap in the accelerate config to its block class"
        )
    trained_ids = {id(param) for param in trained}
    frozen_blocks = [b for b in blocks if any(id(p) not in trained_ids for p in b.parameters())]
    if not frozen_blocks:
        raise SoftpromptError("FSDP: this method trains every weight of the blocks; nothing frozen is left to shard")
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in frozen_blocks:
        kept_whole = {p for p in block.parameters() if id(p) in trained_ids}
        fully_shard(block, mesh=mesh, reshard_after_forward=sharding.reshard_after_forward, ignored_params=kept_whole)
    return len(frozen_blocks)


def _blocks(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The modules of the named classes (by default the model's ``_no_split_modules``) to shard,
    outermost first and none inside another. Any module holding the input embeddings is left
    whole (BERT lists ``BertEmbeddings``): soft prompts call the embedding layer directly, not
    through its owner's forward, where FSDP would gather it."""
    wanted = set(names or getattr(model, "_no_split_modules", None) or ())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    chosen: list[nn.Module] = []
    covered: set[int] = set()  # ids of the modules inside a chosen block
    for module in model.modules():  # parents come before their children
        if type(module).__name__ not in wanted or id(module) in covered:
            continue
        if embeddings is not None and any(m is embeddings for m in module.modules()):
            continue
        chosen.append(module)
        covered.update(id(m) for m in module.modules())
    return chosen


@contextlib.contextmanager
def accelerate_fsdp_hidden() -> Iterator[None]:
    """Build the Accelerator inside this: it then wraps the loss in DDP, as for a plain data
    parallel launch, instead of FSDP-wrapping the trained parameters (the blocks are already
    sharded by :func:`shard_frozen_blocks`)."""
    flag = os.environ.pop(FSDP_FLAG, None)
    try:
        yield
    finally:
        if flag is not None:
            os.environ[FSDP_FLAG] = flag
