"""The config sections of the methods that have one (``lora.r=16``): each the options dataclass
its method registers with ``@register(..., options=...)``, with per-field help, checked in
``__post_init__``.

They live here, apart from their methods, because a config is read and checked before torch is
imported and the method modules import it (and peft); the registering decorator still names the
method, and :mod:`softprompt.config.catalogue` finds a section's class by the name it gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.errors import SoftpromptError


def top_blocks(value: str, key: str) -> int | None:
    """K of a ``top:K`` layer choice, None for ``all``; ``key`` names the config field in errors."""
    if value == "all":
        return None
    prefix, _, count = value.partition(":")
    if prefix != "top" or not count.isdigit() or int(count) < 1:
        raise SoftpromptError(f"config field '{key}': '{value}' is not 'all' or 'top:K' (K >= 1)")
    return int(count)


@dataclass
class LoraOptions:
    """``lora.*``"""

    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: float = field(default=16, metadata={"help": "scaling: the update is multiplied by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input (training only)"})
    target_modules: str | None = field(
        default=None, metadata={"help": "comma-separated module names, 'all-linear', or peft's default for the model"}
    )
    layers: str = field(
        default="all", metadata={"help": "all | top:K (only the top K blocks: backpropagation stops below them)"}
    )
    merge: bool = field(default=False, metadata={"help": "merge the update into the weights when loaded for eval"})

    def __post_init__(self) -> None:
        top_blocks(self.layers, "lora.layers")


@dataclass
class Ia3Options:
    """``ia3.*``"""

    target_modules: str | None = field(default=None, metadata={"help": "comma-separated module names (peft's default)"})
    feedforward_modules: str | None = field(
        default=None, metadata={"help": "which targets are feed-forward layers (scaled at the input)"}
    )


@dataclass
class AdapterOptions:
    """``adapter.*``"""

    bottleneck: int = field(default=16, metadata={"help": "width of the adapter's bottleneck"})

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise SoftpromptError(f"config field 'adapter.bottleneck': must be >= 1, got {self.bottleneck}")


@dataclass
class FullOptions:
    """``full.*``"""

    layers: str = field(default="all", metadata={"help": "all | top:K (train only the top K blocks)"})

    def top(self) -> int | None:
        """K of ``top:K``, or None for all weights."""
        return top_blocks(self.layers, "full.layers")

    def __post_init__(self) -> None:
        self.top()


@dataclass
class PrefixTuningOptions:
    """``prefix_tuning.*``: the prefix length is ``prompt.length``."""

    reparam: bool = field(default=False, metadata={"help": "train through an MLP (folded away at save)"})
    hidden: int = field(default=64, metadata={"help": "hidden size of the reparameterisation MLP"})

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise SoftpromptError(f"config field 'prefix_tuning.hidden': must be >= 1, got {self.hidden}")


@dataclass
class PtuningOptions:
    """``ptuning.*``: the prompt encoder."""

    encoder: str = field(default="lstm", metadata={"help": "lstm (bi-LSTM + MLP, as in the paper) | mlp"})
    hidden: int = field(default=128, metadata={"help": "hidden size of the prompt encoder"})

    def __post_init__(self) -> None:
        if self.encoder not in ("lstm", "mlp"):
            raise SoftpromptError(f"config field 'ptuning.encoder': '{self.encoder}' is not one of lstm, mlp")
        least = 2 if self.encoder == "lstm" else 1  # the bi-LSTM gives each direction hidden // 2
        if self.hidden < least:
            raise SoftpromptError(
                f"config field 'ptuning.hidden': must be >= {least} with encoder={self.encoder}, got {self.hidden}"
            )


@dataclass
class ProgressiveOptions:
    """``progressive_prompts.previous=ARTIFACT``: the earlier tasks' prompts, frozen in front."""

    previous: str | None = None
