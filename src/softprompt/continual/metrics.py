"""Continual-learning metrics from the accuracy matrix (GEM, Lopez-Paz & Ranzato 2017; forgetting
as in Chaudhry et al. 2018).

``R[i][j]`` is task j's test accuracy after stage i; row 0 is before any training (the baseline
forward transfer is measured against), rows 1..T after each task's stage.
"""

from __future__ import annotations

from statistics import mean


def continual_metrics(matrix: list[list[float]], alone: list[float | None] | None = None) -> dict[str, float | None]:
    """Average final accuracy, backward and forward transfer, forgetting, and (given each task's
    accuracy when trained alone) the gap of the final accuracies to it.

    Args:
        matrix: ``T + 1`` rows of ``T`` accuracies (row 0: before training).
        alone: each task's accuracy trained alone with the same method and budget, or None.
    """
    tasks = len(matrix[0])
    if len(matrix) != tasks + 1 or any(len(row) != tasks for row in matrix):
        raise ValueError(f"expected {tasks + 1} rows of {tasks} accuracies, got {[len(r) for r in matrix]}")
    final = matrix[tasks]
    earlier = range(tasks - 1)  # every task but the last can be forgotten
    out: dict[str, float | None] = {
        "average_accuracy": mean(final),
        # How the final model does on each earlier task against right after learning it.
        "backward_transfer": mean(final[j] - matrix[j + 1][j] for j in earlier) if tasks > 1 else None,
        # How the model before stage j does on task j against the untrained model.
        "forward_transfer": mean(matrix[j][j] - matrix[0][j] for j in range(1, tasks)) if tasks > 1 else None,
        "forgetting": mean(max(matrix[i][j] for i in range(j + 1, tasks)) - final[j] for j in earlier)
        if tasks > 1
        else None,
        "alone_average_accuracy": None,
        "gap_to_alone": None,
    }
    if alone is not None and all(a is not None for a in alone):
        out["alone_average_accuracy"] = mean(alone)
        out["gap_to_alone"] = out["average_accuracy"] - mean(alone)
    return out
