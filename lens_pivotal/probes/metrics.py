"""Held-out metrics of per-layer probes, all layers and all bootstrap resamples at once.

Every metric takes scores ``[n_layers, n]``, labels ``[n]`` and example weights ``[n_resamples, n]`` and returns
``[n_layers, n_resamples]``. A bootstrap over groups is a weight matrix (how often each example's group was drawn),
so confidence intervals cost one batched call per metric instead of a Python loop per resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.probes.selection import group_bootstrap_weights, percentile_interval

THRESHOLD = 0.5
MAX_ELEMENTS = 20_000_000  # bounds the [n_layers, n_resamples, n] intermediates of one bootstrap chunk


def auroc(
    scores: Float[Tensor, "n_layers n"], labels: Float[Tensor, " n"], weights: Float[Tensor, "n_resamples n"]
) -> Float[Tensor, "n_layers n_resamples"]:
    """Weighted area under the ROC curve (ties count one half), as ``sklearn.metrics.roc_auc_score``."""
    ordered, order = scores.sort(dim=-1)
    positive = labels[order].unsqueeze(1) * weights[:, order].transpose(0, 1)  # [L, B, n]
    negative = (1 - labels[order]).unsqueeze(1) * weights[:, order].transpose(0, 1)
    negatives_before = _cumsum_exclusive(negative)
    first, last = _tie_blocks(ordered)
    below = negatives_before.gather(-1, _expand(first, negative))
    tied = negatives_before.gather(-1, _expand(last, negative)) + negative.gather(-1, _expand(last, negative)) - below
    area = (positive * (below + 0.5 * tied)).sum(-1)
    return area / (positive.sum(-1) * negative.sum(-1))


def average_precision(
    scores: Float[Tensor, "n_layers n"], labels: Float[Tensor, " n"], weights: Float[Tensor, "n_resamples n"]
) -> Float[Tensor, "n_layers n_resamples"]:
    """Weighted area under the precision-recall curve, as ``sklearn.metrics.average_precision_score``."""
    ordered, order = (-scores).sort(dim=-1)
    positive = labels[order].unsqueeze(1) * weights[:, order].transpose(0, 1)
    everything = weights[:, order].transpose(0, 1)
    _, last = _tie_blocks(ordered)
    true_positives = positive.cumsum(-1).gather(-1, _expand(last, positive))
    predicted = everything.cumsum(-1).gather(-1, _expand(last, positive))
    precision = true_positives / predicted.clamp_min(torch.finfo(predicted.dtype).tiny)
    return (positive * precision).sum(-1) / positive.sum(-1)


def accuracy(scores: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Weighted fraction of examples on the right side of 0.5."""
    right = ((scores >= THRESHOLD).to(scores.dtype) == labels).to(scores.dtype)
    return _weighted_sum(right, weights) / weights.sum(-1)


def balanced_accuracy(scores: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Mean of the true-positive and true-negative rates."""
    predicted = (scores >= THRESHOLD).to(scores.dtype)
    recall = _weighted_sum(predicted * labels, weights) / (weights * labels).sum(-1)
    specificity = _weighted_sum((1 - predicted) * (1 - labels), weights) / (weights * (1 - labels)).sum(-1)
    return (recall + specificity) / 2


def f1(scores: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """F1 of the positive class at threshold 0.5 (0 when nothing is predicted positive and nothing is positive)."""
    predicted = (scores >= THRESHOLD).to(scores.dtype)
    true_positive = _weighted_sum(predicted * labels, weights)
    denominator = _weighted_sum(predicted, weights) + (weights * labels).sum(-1)
    return torch.where(denominator > 0, 2 * true_positive / denominator.clamp_min(1e-12), torch.zeros_like(denominator))


METRICS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1": f1,
    "auroc": auroc,
    "auprc": average_precision,
}


@dataclass
class LayerMetrics:
    """Per-layer held-out metrics: ``values[name]`` is ``[n_layers]``; ``low``/``high`` bound its bootstrap interval."""

    values: dict[str, Tensor]
    low: dict[str, Tensor]
    high: dict[str, Tensor]
    n_bootstrap: int
    confidence: float

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        """JSON-ready: ``{metric: {"value": [...], "low": [...], "high": [...]}}``."""
        return {
            name: {"value": _floats(self.values[name]), "low": _floats(self.low[name]), "high": _floats(self.high[name])}
            for name in self.values
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, list[float]]], n_bootstrap: int, confidence: float) -> LayerMetrics:
        """Inverse of :meth:`to_dict`."""
        as_tensor = {part: {name: torch.tensor(d[part]) for name, d in data.items()} for part in ("value", "low", "high")}
        return cls(as_tensor["value"], as_tensor["low"], as_tensor["high"], n_bootstrap, confidence)


def heldout_metrics(
    scores: Float[Tensor, "n_layers n"],
    labels: Float[Tensor, " n"],
    groups: Sequence[str] | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LayerMetrics:
    """Every metric of :data:`METRICS` per layer, with a percentile bootstrap interval over groups (examples when
    ``groups`` is ``None``): resamples lacking either class are left out of the interval."""
    scores = scores.double()
    labels = labels.to(scores)
    ones = torch.ones(1, labels.shape[0], dtype=scores.dtype)
    resampled = group_bootstrap_weights(groups if groups is not None else range(len(labels)), n_bootstrap, seed).to(scores)
    chunk_size = max(1, MAX_ELEMENTS // max(1, scores.numel()))
    values, low, high = {}, {}, {}
    for name, metric in METRICS.items():
        values[name] = metric(scores, labels, ones)[:, 0].float()
        if n_bootstrap:
            draws = torch.cat([metric(scores, labels, chunk) for chunk in resampled.split(chunk_size)], dim=-1)
            low[name], high[name] = (bound.float() for bound in percentile_interval(draws, confidence))
        else:
            low[name] = high[name] = torch.full_like(values[name], float("nan"))
    return LayerMetrics(values, low, high, n_bootstrap, confidence)


def auroc_per_row(scores: Float[Tensor, "k n"], labels: Tensor) -> Float[Tensor, " k"]:
    """The AUROC of each row of ``scores`` against ``labels`` (float64)."""
    return auroc(scores.double(), labels.double(), torch.ones(1, len(labels), dtype=torch.float64))[:, 0]


def paired_auroc_difference(
    scores: Float[Tensor, "k n"], reference: Float[Tensor, " n"], labels: Tensor, groups: Sequence[str], *,
    n_bootstrap: int, seed: int, confidence: float = 0.95,
) -> dict[str, list[float]]:
    """AUROC of each row of ``scores`` minus ``reference``'s, with a percentile interval over the same bootstrap
    resamples of the groups (paired): ``{"value", "low", "high"}``."""
    compared = torch.cat([scores.double(), reference.double().unsqueeze(0)])
    value = auroc_per_row(compared, labels)
    resampled = group_bootstrap_weights(groups, n_bootstrap, seed).double()
    draws = auroc(compared, labels.double(), resampled) if n_bootstrap else torch.full((len(compared), 1), float("nan"))
    low, high = percentile_interval(draws[:-1] - draws[-1:], confidence)
    return {"value": (value[:-1] - value[-1]).tolist(), "low": low.tolist(), "high": high.tolist()}


def _weighted_sum(values: Tensor, weights: Tensor) -> Tensor:
    """``values [L, n]`` against ``weights [B, n]`` → ``[L, B]``."""
    return values @ weights.T


def _cumsum_exclusive(values: Tensor) -> Tensor:
    return values.cumsum(-1) - values


def _tie_blocks(ordered: Tensor) -> tuple[Tensor, Tensor]:
    """For each element of sorted rows, the index of the first and the last element equal to it."""
    first = torch.searchsorted(ordered, ordered, side="left")
    last = torch.searchsorted(ordered, ordered, side="right") - 1
    return first, last


def _expand(index: Tensor, like: Tensor) -> Tensor:
    return index.unsqueeze(1).expand_as(like)


def _floats(values: Tensor) -> list[float]:
    return [float(value) for value in values]
