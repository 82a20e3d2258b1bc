"""A frozen backbone, a method's trainable parameters and an optional trainable linear head, as one
module: the state handling every task model shares (training state, export, L2), the encoder
forward pass, and gradient checkpointing. The classifier (:mod:`softprompt.tasks.classification.model`), the tagger and
the detox LM build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.core import forward as core
from softprompt.errors import SoftpromptError
from softprompt.methods.base import Method
from softprompt.seeding import seeded

HEAD_PREFIX = "classifier."


def trainables_in_float32(params: list[nn.Parameter], device: torch.device) -> None:
    """Trainable parameters live in float32 on the backbone's device, whatever the backbone's
    dtype (mixed precision: autocast computes in the low dtype, the update stays exact)."""
    for param in params:
        if param.dtype != torch.float32 or param.device != device:
            param.data = param.data.to(device=device, dtype=torch.float32)


class TaskModel(nn.Module):
    """A frozen backbone, a method's trainable parameters, and an optional trainable linear head:
    the state handling and the encoder forward pass every task shares."""

    metric = "accuracy"  # the dev metric that selects the best checkpoint
    checkpointing = False  # train.gradient_checkpointing: recompute activations in the backward pass
    sharded = False  # the backbone's blocks are sharded across processes (training.sharding)
    # A LoRA or IA3 artifact loaded apart from the backbone (load_model(..., apart=True)): its
    # weights, applied per row by methods.row_adapters; None when the method is attached as usual.
    row_adapter = None

    @property
    def inline_soft_prompt(self) -> bool:
        """Whether each training row runs its leading soft block itself instead of sharing one
        key/value cache per batch. Checkpointed layers drop caches; FSDP gathers a block's weights
        for the backward pass only when the block's own output gets a gradient, which the shared
        block's last layer output never does."""
        return self.checkpointing or self.sharded

    def __init__(self, backbone: Backbone, method: Method, head_outputs: int = 0, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.method = method
        self.head: nn.Linear | None = None
        if head_outputs:
            with seeded(seed):
                self.head = nn.Linear(backbone.hidden_size, head_outputs)
        trainables_in_float32(self.trainable_parameters(), backbone.device)

    # ---- trainable state ---------------------------------------------------------------------
    def _head_state(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        return {HEAD_PREFIX + k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def _split_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Load the head's part of ``state``; return the method's part."""
        if self.head is not None:
            self.head.load_state_dict({k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)})
        return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}

    def training_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores to resume training."""
        return {**self.method.training_state(), **self._head_state()}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.method.load_training_state(self._split_head(state))

    def export_state(self) -> dict[str, torch.Tensor]:
        """What an artifact stores (reparameterisations folded away)."""
        return {**self.method.export_state(), **self._head_state()}

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        self.method.load_export(self._split_head(state))

    def l2_penalty(self) -> torch.Tensor:
        """Sum of squares of the method's trained parameters (the optional ``train.l2`` term)."""
        return self.method.l2_penalty()

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = self.method.trainable_parameters()
        if self.head is not None:
            params += list(self.head.parameters())
        return params

    # ---- forward ------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, soft_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the method's soft tokens placed at their slots."""
        return core.embed(self.backbone, input_ids, soft_index, self.method.soft_embeddings())

    def encoder_hidden(
        self, input_ids: torch.Tensor, soft_index: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[B, L, hidden]`` last hidden states of an encoder backbone, with the method applied."""
        embeds = self.embed(input_ids, soft_index)
        # Prefix tuning's per-layer key/value prefixes: every row attends to them. Positions
        # continue after them (the model's default with a cache), so at init, when the prefixes
        # are the backbone's own keys/values of the init tokens, the input reads "init tokens + text".
        context = core.leading_context(self.backbone, self.method, input_ids.shape[0])
        extra = {"past_key_values": context.cache} if context.cache is not None else {}
        out = core.hidden_states(
            self.backbone, inputs_embeds=embeds, attention_mask=context.mask(attention_mask), **extra
        )
        return out.last_hidden_state

    def enable_gradient_checkpointing(self) -> None:
        """Train with activation checkpointing (``train.gradient_checkpointing``).

        Raises:
            SoftpromptError: a method whose rows continue from a key/value cache (prefix tuning),
                which transformers' checkpointing drops.
        """
        if self.method.prefix_length():
            raise SoftpromptError(
                f"train.gradient_checkpointing does not work with method={self.method.name}: its prefixes are a "
                "key/value cache, which checkpointed layers drop; use prompt_tuning, lora or another method"
            )
        self.checkpointing = True

    def evaluate_examples(
        self, examples: list, batch_size: int = 32, encoded: list | None = None, where: str = "data", progress=None
    ) -> dict:
        """The task's metrics on labelled ``examples`` (``encoded``: their encodings, when known;
        ``where`` names them in errors; ``progress``: a progress-bar label, or None for none)."""
        raise NotImplementedError

    def selection_metrics(
        self, examples: list, batch_size: int, encoded: list | None, where: str, progress: str | None = None
    ) -> dict:
        """The dev metrics that pick the best checkpoint during training (by default the full
        evaluation; a task may choose something cheaper)."""
        return self.evaluate_examples(examples, batch_size, encoded, where, progress)

    def row_class(self, row) -> int | None:
        """The one gold class of a training row, by which length-grouped batches keep the class
        mix; None (the default) where a row has no single class, such as a tagger's window."""
        return None


def evaluate(
    model: TaskModel,
    examples: list,
    batch_size: int = 32,
    encoded: list | None = None,
    where: str = "data",
    progress: str | None = None,
) -> dict:
    """Metrics of ``model`` on labelled ``examples`` (tagged sentences for a tagger, text pairs for
    a writer): each task model measures itself."""
    return model.evaluate_examples(examples, batch_size, encoded, where, progress)


@torch.no_grad()
def mean_token_loss(
    token_losses: Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]], rows: Sequence[Any], batch_size: int
) -> dict[str, float]:
    """The mean loss per token over ``rows``, batch by batch: ``token_losses(batch)`` gives each
    position's loss and a mask of the positions that count. Also ``neg_loss`` (a dev metric that
    rises as the loss falls) and ``n``, the number of rows."""
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        losses, valid = token_losses(list(rows[start : start + batch_size]))
        total += float((losses * valid).sum())
        tokens += int(valid.sum())
    loss = total / max(tokens, 1)
    return {"loss": loss, "neg_loss": -loss, "n": len(rows)}
