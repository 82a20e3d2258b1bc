"""Templates (text with fields and soft-token slots) and verbalizers (label words)."""

from softprompt.prompts.template import EncodedInput, Template
from softprompt.prompts.verbalizer import Candidate, Verbalizer

__all__ = ["Candidate", "EncodedInput", "Template", "Verbalizer"]
