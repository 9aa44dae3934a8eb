"""Thresholds that mean what they say.

Probes train on balanced classes, so a score of 0.5 means "as likely pivotal as not under a 1:1 prior"; while
generating, pivots are rare, and a gate at 0.5 fires far more often than "likely pivotal" suggests. The held-out
scores saved with the probes (``config.calibration``, read by ``LayerProbes.heldout_scores``) turn a false-positive
rate into a threshold and a threshold into its false-positive rate, recall and precision at a stated prior;
:func:`~lens_pivotal.probes.evaluation.gate_precision` measures what a gate does on whole texts, every answer state
scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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


def threshold_at_fpr(negative_scores: np.ndarray, rate: float) -> float:
    """The lowest score threshold at which at most ``rate`` of ``negative_scores`` score at or above it."""
    FalsePositiveRate(rate)
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = math.floor(rate * len(negatives) + 1e-9)
    return 0.0 if allowed >= len(negatives) else float(np.nextafter(negatives[allowed], np.inf))


def operating_point(
    threshold: float, positive_scores: np.ndarray, negative_scores: np.ndarray, prior: float | None = None
) -> dict[str, float]:
    """A threshold's false-positive rate and recall on held-out scores of each class, and its precision at
    ``prior`` (the share of pivotal states where the probe is used; default: the scores' own share)."""
    positives, negatives = np.asarray(positive_scores), np.asarray(negative_scores)
    prior = len(positives) / (len(positives) + len(negatives)) if prior is None else prior
    fpr, recall = float((negatives >= threshold).mean()), float((positives >= threshold).mean())
    fired = prior * recall + (1 - prior) * fpr
    return {"threshold": threshold, "fpr": fpr, "recall": recall, "prior": prior,
            "precision": prior * recall / fired if fired else float("nan")}  # fmt: skip
