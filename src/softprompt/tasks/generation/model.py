"""The prompted generator: a frozen causal LM + a method + a template, trained with the
language-model loss on the target tokens and the end-of-sequence token only.

A row is the rendered template (soft tokens anywhere) followed by the target and EOS. Rows are
left-padded; the output projection runs only at the positions that predict a target token. A
leading soft block is the same in every row, so it runs once per batch and its key/value cache
is shared (exact, as in the classifier).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from softprompt.backbones import Backbone
from softprompt.config import GenConfig
from softprompt.core import forward as core
from softprompt.data.pairs import TextPair
from softprompt.generation.decode import decode
from softprompt.methods.base import Method
from softprompt.prompts import EncodedInput, Template
from softprompt.prompts.template import NO_SOFT
from softprompt.tasks.base import TaskModel, mean_token_loss
from softprompt.tasks.fewshot import SimilarDemonstrations
from softprompt.tasks.generation.baselines import FluencyFit, score_outputs

SHOWN = 3  # outputs kept in the metrics as examples


@dataclass
class Encoded:
    """A pair ready for the model: its encoded prompt and its references' token ids (+ EOS)."""

    prompt: EncodedInput
    targets: list[list[int]]
    shortened: bool = False  # the input or a target was cut to fit max_length


@dataclass
class Row:
    """One training row: a prompt and one reference."""

    prompt: EncodedInput
    target: list[int]


class PromptedGenerator(TaskModel):
    """``loss(rows)``: mean next-token loss over the target tokens of ``rows``."""

    metric = "neg_loss"  # dev selection: minus the target loss (higher is better)

    def __init__(
        self, backbone: Backbone, method: Method, template: Template, max_length: int = 256, demonstrations: str = ""
    ):
        super().__init__(backbone, method)
        backbone.require_token_prediction("task=generation")
        self.template = template
        self.max_length = max_length
        self.demonstrations = demonstrations  # few-shot pairs put before each input
        self.chooser: SimilarDemonstrations | None = None  # or few-shot pairs chosen per input
        self.decoding = GenConfig()  # how evaluation and ``generate`` decode
        self.extra_metrics: list[str] = []  # e.g. ["detox"]: the rewriting metrics of a dataset
        self.fluency: FluencyFit | None = None  # held-out pairs for the rewriting metrics' SLOR scale

    # ---- encoding ------------------------------------------------------------------------------
    def target_ids(self, text: str) -> list[int]:
        """A reference's token ids as it follows the prompt, ending with EOS."""
        tokenizer = self.backbone.tokenizer
        space = "" if self.template.ends_with_space() else " "
        return tokenizer(space + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def encode_pair(self, pair: TextPair) -> Encoded:
        """Targets get at most half of ``max_length`` (cut, and counted); the prompt the rest."""
        budget = self.max_length // 2
        targets = [self.target_ids(t) for t in pair.targets]
        cut = any(len(t) > budget for t in targets)
        targets = [t[: budget - 1] + t[-1:] if len(t) > budget else t for t in targets]
        prompt = self.encode_prompt(pair.fields, self.max_length - max(len(t) for t in targets))
        return Encoded(prompt, targets, cut or prompt.shortened)

    def encode_prompt(self, fields: dict[str, str], max_length: int | None = None) -> EncodedInput:
        """The rendered template of one input, as the model reads it before writing."""
        tokenizer = self.backbone.tokenizer
        demos = self.demonstrations_for(fields)
        return self.template.encode(
            fields, tokenizer, True, max_length or self.max_length, demos, setting=self.max_length
        )

    def demonstrations_for(self, fields: dict[str, str]) -> str:
        """The few-shot text put before this input."""
        return self.chooser.for_input(fields) if self.chooser else self.demonstrations

    def encode_split(self, pairs: list[TextPair], where: str | None = None) -> list[Encoded]:
        if self.chooser:
            self.chooser.prepare([pair.fields for pair in pairs])
        return [self.encode_pair(pair) for pair in pairs]

    def training_rows(self, pairs: list[TextPair], encoded: list[Encoded], where: str) -> list[Row]:
        return [Row(e.prompt, target) for e in encoded for target in e.targets]

    def row_length(self, row: Row) -> int:
        return len(row.prompt.ids) + len(row.target)

    def row_weight(self, row: Row) -> int:
        """The loss averages over target tokens (EOS included): a row weighs its token count."""
        return len(row.target)

    def describe(self) -> dict[str, Any]:
        """The task's part of the artifact's record."""
        template = self.template
        return {
            "template": template.source,
            "soft_prefix": template.leading_soft == template.num_soft > 0,
            "demonstrations": self.demonstrations,
            **({"fewshot": self.chooser.record()} if self.chooser else {}),
            "extra_metrics": self.extra_metrics,
        }

    # ---- loss ----------------------------------------------------------------------------------
    def loss(self, rows: list[Row]) -> torch.Tensor:
        losses, valid = self.target_losses(rows)
        return (losses * valid).sum() / valid.sum().clamp(min=1)

    def target_losses(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` negative log-likelihoods of each row's target tokens and their mask."""
        share = bool(self.template.leading_soft) and not self.inline_soft_prompt
        cut = self.template.leading_soft if share else 0
        device = self.backbone.device
        pad_id = self.backbone.tokenizer.pad_token_id or 0
        padded = core.pad(
            [r.prompt.ids[cut:] + r.target for r in rows],
            pad_id,
            left=True,
            device=device,
            soft=[r.prompt.soft[cut:] + [NO_SOFT] * len(r.target) for r in rows],
        )
        size = len(rows)
        context = core.leading_context(self.backbone, self.method, size, cut)
        mask, positions = context.mask(padded.attention_mask), context.positions(padded.attention_mask)
        cache = context.cache
        embeds = self.embed(padded.input_ids, padded.soft_index)
        with core.checkpointed(self.backbone) if self.checkpointing else contextlib.nullcontext():
            hidden = core.hidden_states(
                self.backbone,
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state
        # Left-padded: row b's target fills its last T_b columns; the column before each target
        # token predicts it. Only those columns go through the (large) output projection.
        steps = max(len(r.target) for r in rows)
        width = padded.input_ids.shape[1]
        targets = core.pad([r.target for r in rows], 0, left=True, device=device, width=steps)
        predicting = hidden[:, width - steps - 1 : width - 1]
        logits = core.project(self.backbone, predicting.flatten(0, 1)).view(size, steps, -1)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.input_ids.flatten(), reduction="none")
        return nll.view(size, steps), targets.attention_mask

    # ---- evaluation ----------------------------------------------------------------------------
    def mean_loss(self, encoded: list[Encoded], batch_size: int = 32) -> dict[str, float]:
        """Mean loss per target token over every reference of ``encoded``."""
        rows = [Row(e.prompt, t) for e in encoded for t in e.targets]
        return {**mean_token_loss(self.target_losses, rows, batch_size), "n": len(encoded)}

    def selection_metrics(
        self, pairs: list[TextPair], batch_size: int, encoded: list | None, where: str, progress: str | None = None
    ) -> dict[str, Any]:
        """Dev metrics during training: the target loss only (decoding every evaluation would
        cost more than the training steps between them)."""
        return self.mean_loss(encoded if encoded is not None else self.encode_split(pairs), batch_size)

    def evaluate_examples(
        self, pairs: list[TextPair], batch_size: int, encoded: list | None, where: str, progress: str | None = None
    ) -> dict[str, Any]:
        """Decode every input, then text metrics against the references, the target loss, and the
        dataset's extra metrics (detox: STA, SIM, FL, J)."""
        encoded = encoded if encoded is not None else self.encode_split(pairs, where)
        with tqdm(total=len(pairs), desc=progress, leave=False, disable=progress is None, unit="text") as bar:
            prompts = [e.prompt for e in encoded]
            outputs = decode(self.backbone, self.method, prompts, self.decoding, batch_size, bar)
        metrics = score_outputs(self.backbone, pairs, outputs, self.extra_metrics, fluency=self.fluency)
        metrics["loss"] = self.mean_loss(encoded, batch_size)["loss"]
        metrics["examples"] = [
            {"input": p.text, "output": out, "references": list(p.targets)}
            for p, out in zip(pairs[:SHOWN], outputs[:SHOWN], strict=False)
        ]
        return metrics
