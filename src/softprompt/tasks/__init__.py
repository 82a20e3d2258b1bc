"""Tasks: how examples become batches, and what is predicted and measured."""
