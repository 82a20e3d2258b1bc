"""softprompt: adapt a frozen language model with a tiny learned prompt.

The public API (``softprompt.train``, ``load``, ``build``, ``retrain``, ``load_backbone``...) is
imported on first use, so ``import softprompt`` stays light. Importing softprompt changes no
environment variable and no logging setting; the ``softprompt`` command quiets the libraries'
logging for itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from softprompt.version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "Model": "softprompt.api",
    "build": "softprompt.api",
    "load": "softprompt.api",
    "train": "softprompt.api",
    "retrain": "softprompt.api",
    "RetrainResult": "softprompt.api",
    "TrainResult": "softprompt.training.run",
    "Callback": "softprompt.training.callbacks",
    "load_backbone": "softprompt.backbones",
    "Backbone": "softprompt.backbones",
    "RunConfig": "softprompt.config",
    "load_config": "softprompt.config",
    "SoftpromptError": "softprompt.errors",
    "Template": "softprompt.prompts",
    "Verbalizer": "softprompt.prompts",
}

__all__ = [
    "Backbone",
    "Callback",
    "Model",
    "RetrainResult",
    "RunConfig",
    "SoftpromptError",
    "Template",
    "TrainResult",
    "Verbalizer",
    "__version__",
    "build",
    "load",
    "load_backbone",
    "load_config",
    "retrain",
    "train",
]

if TYPE_CHECKING:
    from softprompt.api import Model, RetrainResult, build, load, retrain, train
    from softprompt.backbones import Backbone, load_backbone
    from softprompt.config import RunConfig, load_config
    from softprompt.errors import SoftpromptError
    from softprompt.prompts import Template, Verbalizer
    from softprompt.training.callbacks import Callback
    from softprompt.training.run import TrainResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'softprompt' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
