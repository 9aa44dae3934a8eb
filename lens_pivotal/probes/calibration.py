"""Thresholds that mean what they say.

Probes train on balanced classes, so a score of 0.5 means "as likely pivotal as not under a 1:1 prior"; while
generating, pivots are rare, and a gate at 0.5 fires far more often than "likely pivotal" suggests. The held-out
scores saved with the probes (``config.calibration``) turn a false-positive rate into a threshold and a threshold into
its false-positive rate, recall and precision at a stated prior; :func:`gate_precision` measures what a gate does on
whole texts, every answer state scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from lens_pivotal.model import Layer

if TYPE_CHECKING:
    from lens_pivotal.probes.examples import ProbeExamples
    from lens_pivotal.probes.layer_probes import LayerProbes


@dataclass(frozen=True)
class FalsePositiveRate:
    """A threshold given as the fraction of held-out negatives it may let through, e.g. ``FalsePositiveRate(0.05)``:
    accepted wherever a probe threshold is (``gate=(probes, FalsePositiveRate(0.05))``,
    ``generate_with_scores(threshold=...)``)."""

    rate: float

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"a false-positive rate lies in [0, 1], got {self.rate}")


Threshold = float | FalsePositiveRate


def heldout_scores(probes: LayerProbes, layer: Layer | None, label: int) -> np.ndarray:
    """The held-out scores of one class at ``layer`` (default: the best layer), as saved by ``train_probes``."""
    calibration = probes.config.calibration
    if calibration is None:
        raise RuntimeError("these probes hold no held-out scores: train them with train_probes (or a newer version)")
    slot = probes.slot(probes.best_layer if layer is None else layer)
    return np.asarray(calibration["positive_scores" if label else "negative_scores"][slot], dtype=np.float64)


def threshold_at_fpr(probes: LayerProbes, rate: float, layer: Layer | None = None) -> float:
    """The lowest score threshold at which at most ``rate`` of the held-out negatives score at or above it."""
    FalsePositiveRate(rate)
    negatives = np.sort(heldout_scores(probes, layer, 0))[::-1]
    allowed = math.floor(rate * len(negatives) + 1e-9)
    return 0.0 if allowed >= len(negatives) else float(np.nextafter(negatives[allowed], np.inf))


def resolve_threshold(probes: LayerProbes, threshold: Threshold, layer: Layer | None = None) -> float:
    """A score threshold: ``threshold`` itself, or :func:`threshold_at_fpr` of a :class:`FalsePositiveRate`."""
    if isinstance(threshold, FalsePositiveRate):
        return threshold_at_fpr(probes, threshold.rate, layer)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a probability or a FalsePositiveRate, got {threshold!r}")
    return float(threshold)


def operating_point(
    probes: LayerProbes, threshold: Threshold, layer: Layer | None = None, prior: float | None = None
) -> dict[str, float]:
    """On the held-out rows at ``layer``: the threshold, its false-positive rate, recall, and precision at ``prior``
    (the share of pivotal states where the probe is used; default: the held-out rows' own share)."""
    value = resolve_threshold(probes, threshold, layer)
    positives, negatives = heldout_scores(probes, layer, 1), heldout_scores(probes, layer, 0)
    prior = len(positives) / (len(positives) + len(negatives)) if prior is None else prior
    fpr, recall = float((negatives >= value).mean()), float((positives >= value).mean())
    fired = prior * recall + (1 - prior) * fpr
    return {"threshold": value, "fpr": fpr, "recall": recall, "prior": prior,
            "precision": prior * recall / fired if fired else float("nan")}  # fmt: skip


def gate_precision(
    probes: LayerProbes,
    model: Any,
    examples: ProbeExamples,
    thresholds: Sequence[Threshold],
    *,
    groups: Sequence[str] | None = None,
    layer: Layer | None = None,
) -> list[dict[str, float]]:
    """What a gate at each threshold does on whole texts: every answer state of the texts of ``groups`` (default: the
    probes' held-out problems) scored at ``layer``, a state pivotal where ``examples`` holds it as a positive and
    not pivotal elsewhere (true for texts that are whole searched solutions, ``negatives="matched"`` on rows with
    ``solution``). Per threshold: the threshold, the fraction of states it fires on, its precision and recall."""
    chosen = set(probes.config.heldout_groups if groups is None else groups)
    positives = {(text, position) for text, position, label in zip(examples.text_index, examples.positions, examples.labels) if label}
    scores, labels = [], []
    for text in sorted({text for text, group in zip(examples.text_index, examples.groups) if group in chosen}):
        ids, start = examples.token_ids[text], max(examples.answer_starts[text] - 1, 0)
        scored = probes.score_text(model, ids, layer).scores[0]
        scores.append(scored[start : len(ids) - 1])
        labels += [int((text, position) in positives) for position in range(start, len(ids) - 1)]
    states, pivotal = torch.cat(scores).double(), torch.tensor(labels, dtype=torch.bool)
    return [_gate_row(states, pivotal, resolve_threshold(probes, threshold, layer)) for threshold in thresholds]


def _gate_row(scores: Tensor, pivotal: Tensor, threshold: float) -> dict[str, float]:
    fired = scores >= threshold
    hits = int((fired & pivotal).sum())
    return {"threshold": threshold, "fired": float(fired.double().mean()), "pivotal_share": float(pivotal.double().mean()),
            "precision": hits / int(fired.sum()) if fired.any() else float("nan"),
            "recall": hits / int(pivotal.sum()) if pivotal.any() else float("nan")}  # fmt: skip
