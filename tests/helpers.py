"""Builders shared by tests."""

from __future__ import annotations

from softprompt.backbones import Backbone
from softprompt.config import PromptConfig
from softprompt.data import Example
from softprompt.model import PromptedClassifier
from softprompt.prompts import Template, Verbalizer
from softprompt.tasks.classification import build_classifier

EXAMPLES = [
    Example({"text": t})
    for t in ["a great movie", "dull and boring and badly acted film", "superb", "the cast was fine but the plot awful"]
]


def classifier(
    backbone: Backbone,
    template: str,
    verbalizer: dict | None = None,
    method: str = "prompt_tuning",
    init: str = "random",
    seed: int = 0,
) -> PromptedClassifier:
    verbalizer = verbalizer or {"positive": "positive", "negative": "negative"}
    return build_classifier(
        backbone, method, Template(template), Verbalizer(verbalizer), PromptConfig(init=init), seed=seed, max_length=128
    )
