"""Prompt-based detoxification: scorers, metrics, steering methods, sampling, training, evaluation."""
