"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use").

A prompted model's label probabilities carry a bias of the prompt itself: towards the majority
or the last demonstration's label, or towards a common word. The bias is measured by giving the
model content-free inputs ("N/A", "", the mask token) in the same template, with the same
demonstrations, and averaging their label probabilities ``p_cf``; every prediction is then
divided by it and renormalised: ``q = (p / p_cf) / sum(p / p_cf)``. The predicted label is the
paper's (``argmax W p`` with ``W = diag(p_cf)^-1``); the probabilities are a proper distribution,
so a content-free input comes out uniform.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.data.records import Example
from softprompt.errors import SoftpromptError
from softprompt.tasks.classification.model import PromptedClassifier, label_probabilities

CONTENT_FREE = ("N/A", "", "[MASK]")  # the paper's three; [MASK] becomes the tokenizer's own mask token


def content_free_inputs(model: PromptedClassifier) -> list[str]:
    """The content-free texts for this model's tokenizer."""
    mask = model.task.tokenizer.mask_token or "[MASK]"
    return [mask if text == "[MASK]" else text for text in CONTENT_FREE]


@torch.inference_mode()
def contextual_bias(model: PromptedClassifier) -> torch.Tensor:
    """``[labels]`` log of the mean label probabilities over the content-free inputs, each filling
    every field of the template, measured without any calibration."""
    fields = set(model.task.template.fields) | {"text"}
    examples = [Example(dict.fromkeys(fields, text)) for text in content_free_inputs(model)]
    before, model.calibration = model.calibration, None
    try:
        probabilities = label_probabilities(model, examples)
    finally:
        model.calibration = before
    return probabilities.double().mean(0).log().float()


def calibrate(model: PromptedClassifier) -> None:
    """Measure the model's bias and divide it out of its predictions from now on."""
    model.calibration = contextual_bias(model)


def load_calibration(model: PromptedClassifier, record: dict[str, Any] | None) -> None:
    """Apply an artifact's recorded calibration (none when it has no record)."""
    if not record:
        return
    bias = record.get("log_bias")
    missing = [label for label in model.task.labels if not isinstance(bias, dict) or label not in bias]
    if missing:
        raise SoftpromptError(f"the artifact's calibration has no bias for label '{missing[0]}'; retrain it")
    model.calibration = torch.tensor([float(bias[label]) for label in model.task.labels])
