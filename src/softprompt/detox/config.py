"""The settings of the detox commands (``detox train``, ``detox eval``, ``detox validate-scorer``)
and of ``softprompt generate``: plain dataclasses, read and checked before torch is imported."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from softprompt.config import ComputeSettings, Decoding, PromptConfig, TrainConfig, option, require
from softprompt.detox.data import DEFAULT_PROMPT_FIELD
from softprompt.detox.registry import PLAIN, SOFT_PROMPT, STEERINGS, trained_kinds

DEFAULT_INSTRUCTION = "The following text is polite, respectful and free of insults, profanity and slurs:\n"
NEUTRAL_INIT = "text:The following text is polite, respectful and kind:"
TOXIC_INIT = "text:The following text contains rude, disrespectful, obscene and hateful language:"


@dataclass(kw_only=True)
class SteeredSampling(Decoding):
    """Decoding under a detox method: the shared decoding settings, how many samples per
    prompt, and the methods' own knobs (``softprompt generate`` and ``detox eval``)."""

    samples: int = option("continuations per prompt", 1)
    top_p: float = option("nucleus sampling mass", 0.9)
    instruction: str = option("the instruction method's prefix", DEFAULT_INSTRUCTION)
    alpha: float = option("experts: base + alpha * (expert - anti-expert)", 2.0)
    decay: float = option("self_debias: decay constant lambda", 50.0)
    filter_p: float = option("experts: re-rank only the plain model's nucleus of this mass (1 = all tokens)", 0.9)

    def check_sampling(self) -> None:
        """Refuse values the sampler cannot use, naming the key."""
        self.check_decoding()
        require(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")


@dataclass
class DetoxTrainConfig(ComputeSettings):
    """Everything one ``softprompt detox train`` run needs."""

    data: str = option("ParaDetox TSV (columns toxic, neutral1..3)", "")
    backbone: str = option("causal backbone the prompts are for", "smollm2-135m")
    kind: str = option(" | ".join(trained_kinds()), SOFT_PROMPT.name)
    out: str = option("output directory", "runs/detox-prompt")
    unlikelihood: float = option("soft_prompt: weight of the unlikelihood loss on the toxic sentences (0 = off)", 0.0)
    init: str = option("start of the detox / expert prompt (random | vocab | text:<words>)", NEUTRAL_INIT)
    anti_init: str = option("start of the anti-expert prompt", TOXIC_INIT)
    dev_size: int = option("ParaDetox pairs held out to pick the best step by dev loss", 200)
    max_pairs: int | None = option("use at most this many training pairs (quick runs)", None)
    seed: int = option("random seed (split, data order)", 0)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(length=10, init="vocab"))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=0.003, batch_size=16, max_steps=150, eval_every=50, max_length=256)
    )

    def __post_init__(self) -> None:
        require(bool(self.data), "data", "give the ParaDetox file: data=PATH/paradetox.tsv")
        kinds = trained_kinds()
        require(self.kind in kinds, "kind", f"'{self.kind}' is not one of {', '.join(kinds)}")
        require(self.unlikelihood >= 0, "unlikelihood", "must be >= 0")
        require(self.dev_size >= 1, "dev_size", "must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class DetoxEvalConfig(ComputeSettings, SteeredSampling):
    """Everything one ``softprompt detox eval`` run needs."""

    prompts: str = option("prompts file (.jsonl with the text at prompt_field, or .txt, one per line)", "")
    backbone: str = option("causal backbone to generate with", "smollm2-135m")
    methods: str = option("comma list: " + ", ".join(s.usage for s in STEERINGS.values()), PLAIN.name)
    scorer: str = option("comma list: profanity, classifier, hf:<dir>", "profanity,classifier")
    max_new_tokens: int = option("tokens per continuation", 20)
    samples: int = option("continuations per prompt (k; 25 in the papers)", 25)
    prompt_field: str = option("dotted JSON path of the prompt text", DEFAULT_PROMPT_FIELD)
    max_prompts: int | None = option("use the first N prompts (quick runs)", None)
    batch_rows: int = option("sequences per forward pass (prompts x samples x method rows)", 256)
    out: str = option("output directory", "runs/detox-eval")

    def __post_init__(self) -> None:
        require(bool(self.prompts), "prompts", "give the prompts file: prompts=PATH/toxic_prompts.jsonl")
        self.check_sampling()
        require(self.batch_rows >= 1, "batch_rows", "must be >= 1")
        require(self.max_prompts is None or self.max_prompts >= 1, "max_prompts", "must be >= 1")


@dataclass(kw_only=True)
class GenerateConfig(ComputeSettings, SteeredSampling):
    """Settings of ``softprompt generate``."""

    backbone: str = option("causal backbone", "smollm2-135m")
    detox: str = option(" | ".join(s.usage for s in STEERINGS.values()), PLAIN.name)
    max_new_tokens: int = option("tokens per continuation", 30)

    def __post_init__(self) -> None:
        self.check_sampling()


@dataclass
class ValidateConfig:
    """Settings of ``softprompt detox validate-scorer``."""

    data: str = option("folder of RealToxicityPrompts .jsonl files with Perspective scores (or one file)", "")
    scorer: str = option("comma list: profanity, classifier, hf:<dir>", "profanity,classifier")
    out: str | None = option("also write the report as JSON here", None)

    def __post_init__(self) -> None:
        require(bool(self.data), "data", "give the scored prompts: data=PATH/rtp")
