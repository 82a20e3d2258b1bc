"""The config sections of what a prompt does without training: few-shot demonstrations and
decoding settings."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.config.fields import MAX_GEN_SEED, option, require

FEWSHOT_CHOICES = {
    "select": ("balanced", "random", "similar"),
    "order": ("auto", "shuffled", "nearest_last", "nearest_first"),
}


@dataclass
class FewshotConfig:
    """In-context demonstrations (no training needed)."""

    k: int = option("labelled demonstrations from the train split put before each input", 0)
    select: str = option(
        "balanced | random | similar: drawn round-robin over the labels, drawn at random, or for each input "
        "the k nearest training rows under a sentence embedding (Liu et al. 2022, KATE)",
        "balanced",
    )
    order: str = option(
        "auto | shuffled | nearest_last | nearest_first (the last two need select=similar); "
        "auto: nearest_last for similar, else shuffled",
        "auto",
    )
    pool: int | None = option("select=similar: draw from at most this many training rows (seeded); none: all", None)
    embedder: str = option("select=similar: the sentence-transformers model (name, directory or Hub id)", "minilm-l6")

    def __post_init__(self) -> None:
        require(self.k >= 0, "fewshot.k", "must be >= 0")
        for key, allowed in FEWSHOT_CHOICES.items():
            value = getattr(self, key)
            require(value in allowed, f"fewshot.{key}", f"'{value}' is not one of {', '.join(allowed)}")
        require(
            self.select == "similar" or not self.order.startswith("nearest"),
            "fewshot.order",
            f"{self.order} orders by likeness to the input: it needs fewshot.select=similar",
        )
        require(self.pool is None or self.pool >= 1, "fewshot.pool", "must be >= 1")


@dataclass(kw_only=True)
class Decoding:
    """How continuations are decoded: the one set of decoding settings, shared by ``gen.*``
    (task=generation), ``softprompt generate``, ``detox eval`` and the server's defaults."""

    max_new_tokens: int = option("most tokens written per input", 48)
    temperature: float = option("sampling temperature", 1.0)
    top_p: float = option("nucleus sampling: keep the smallest token set holding this probability", 1.0)
    seed: int = option("seed of the sampling generator (same seed, same outputs)", 0)

    def check_decoding(self, prefix: str = "") -> None:
        """Refuse values no decoder can use, naming the key as the user writes it."""
        require(0 <= self.seed <= MAX_GEN_SEED, f"{prefix}seed", f"must be from 0 to 2**63 - 1, got {self.seed!s:.40}")
        require(self.max_new_tokens >= 1, f"{prefix}max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, f"{prefix}temperature", f"must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"{prefix}top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(kw_only=True)
class GenConfig(Decoding):
    """Decoding settings of task=generation (transformers' ``generate``)."""

    num_beams: int = option("beam search width (1 = greedy or sampling)", 1)
    do_sample: bool = option("sample instead of taking the most likely token", False)

    def __post_init__(self) -> None:
        self.check_decoding("gen.")
        require(self.num_beams >= 1, "gen.num_beams", f"must be >= 1 (1 = no beam search), got {self.num_beams}")
