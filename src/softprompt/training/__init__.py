"""Training: one loop over the :class:`Trainable` protocol, its checkpoint, and a whole run."""

from softprompt.training.checkpoint import CHECKPOINT, Progress
from softprompt.training.loop import LOG_FILE, SaveBest, fit
from softprompt.training.trainable import Trainable

__all__ = ["CHECKPOINT", "LOG_FILE", "Progress", "SaveBest", "Trainable", "fit"]
