"""Controls a probe's number is judged against: Hewitt & Liang's control task and a permutation null.

- **Control task** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"): every type of the
  current token gets one random label, drawn with the task's positive rate, and a probe of the same kind is trained on
  those labels and scored on held-out rows against them. It measures what a probe scores by memorising token types:
  *selectivity* is the task's held-out AUROC minus the control task's.
- **Permutation null**: probes trained on permuted labels, scored against the true held-out labels; their AUROCs are
  the null distribution of the task's, and ``(1 + #{null >= observed}) / (1 + n_permutations)`` its p-value.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

MAX_DRAWS = 100


def control_task_labels(
    types: Sequence[int], positive_rate: float, seed: int, *, both_classes_in: Sequence[int] | None = None
) -> Float[Tensor, " n_rows"]:
    """One random 0/1 label per distinct value of ``types`` (``P(1) = positive_rate``), given to every row of that type.

    ``both_classes_in``: rows (e.g. the training rows) that must hold both labels; the draw is repeated (seeded) until
    they do.

    Raises:
        ValueError: ``positive_rate`` outside (0, 1), or no draw gives those rows both labels (one type only).
    """
    if not 0 < positive_rate < 1:
        raise ValueError(f"positive_rate must lie in (0, 1), got {positive_rate}")
    distinct, row_type = torch.unique(torch.as_tensor(list(types), dtype=torch.long), return_inverse=True)
    rows = torch.as_tensor(list(range(len(row_type)) if both_classes_in is None else both_classes_in), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(MAX_DRAWS):
        labels = (torch.rand(len(distinct), generator=generator) < positive_rate).float()[row_type]
        if 0 < labels[rows].sum() < len(rows):
            return labels
    raise ValueError(f"the control task needs rows of two token types or more; got {len(distinct)} type(s)")


def permutation_labels(labels: Tensor, n_permutations: int, seed: int) -> Float[Tensor, "n_permutations n_rows"]:
    """``n_permutations`` seeded permutations of ``labels``."""
    generator = torch.Generator().manual_seed(seed)
    permuted = [labels[torch.randperm(len(labels), generator=generator)] for _ in range(n_permutations)]
    return torch.stack(permuted) if permuted else labels.new_zeros(0, len(labels))


def permutation_p_values(
    observed: Float[Tensor, " n_layers"], null: Float[Tensor, "n_layers n_permutations"]
) -> Float[Tensor, " n_layers"]:
    """Per layer, ``(1 + #{null >= observed}) / (1 + n_permutations)``: never 0, as a permutation test's p-value."""
    return (1 + (null >= observed.unsqueeze(-1)).sum(-1)) / (1 + null.shape[-1])
