"""Held-out metrics: parity with scikit-learn (weights and ties included) and bootstrap over groups."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from lens_pivotal.probes import metrics as M

SKLEARN = {
    "auroc": lambda y, s, w: skm.roc_auc_score(y, s, sample_weight=w),
    "auprc": lambda y, s, w: skm.average_precision_score(y, s, sample_weight=w),
    "accuracy": lambda y, s, w: skm.accuracy_score(y, s >= 0.5, sample_weight=w),
    "balanced_accuracy": lambda y, s, w: skm.balanced_accuracy_score(y, s >= 0.5, sample_weight=w),
    "f1": lambda y, s, w: skm.f1_score(y, s >= 0.5, sample_weight=w),
}


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(150, generator=generator) < 0.4).double()
    scores = torch.rand(3, 150, generator=generator, dtype=torch.float64)
    scores[0] += 0.3 * labels
    scores[1] = (scores[1] * 4).round() / 4  # many ties
    scores[2] = 0.5  # all tied
    weights = torch.randint(0, 4, (5, 150), generator=generator).double()
    return scores, labels, weights


@pytest.mark.parametrize("name", list(M.METRICS))
def test_every_metric_matches_sklearn_with_weights_and_ties(data, name):
    scores, labels, weights = data
    ours = M.METRICS[name](scores, labels, weights)
    for layer in range(3):
        for resample in range(5):
            expected = SKLEARN[name](labels.numpy(), scores[layer].numpy(), weights[resample].numpy())
            assert ours[layer, resample].item() == pytest.approx(expected, abs=1e-9)


def test_group_bootstrap_draws_whole_groups():
    groups = ["a", "a", "b", "c", "c", "c"]
    weights = M.group_bootstrap_weights(groups, 200, seed=0)
    assert weights.shape == (200, 6)
    assert torch.equal(weights[:, 0], weights[:, 1]) and torch.equal(weights[:, 3], weights[:, 5])
    assert torch.all(weights[:, [0, 2, 3]].sum(1) == 3)  # three groups drawn per resample


def test_heldout_metrics_interval_brackets_the_value(data):
    scores, labels, _ = data
    groups = [str(i // 5) for i in range(150)]
    result = M.heldout_metrics(scores.float(), labels.float(), groups, n_bootstrap=300, seed=1)
    auroc = result.values["auroc"]
    assert auroc[0] > 0.7 and auroc[2] == pytest.approx(0.5)
    assert torch.all(result.low["auroc"][:2] <= auroc[:2]) and torch.all(auroc[:2] <= result.high["auroc"][:2])
    assert result.high["auroc"][0] - result.low["auroc"][0] > 0.02
    again = M.LayerMetrics.from_dict(result.to_dict(), 300, 0.95)
    assert torch.equal(again.values["f1"], result.values["f1"])


def test_the_interval_equals_a_loop_that_resamples_problem_indices(data):
    """heldout_metrics' AUROC interval, and the paired difference interval the probes report, against a written-out
    loop: draw problem indices with replacement (the same seeded draws), concatenate their rows, score with
    scikit-learn, take numpy's percentiles of the draws where both classes are present."""
    import numpy as np

    scores, labels, _ = data
    groups = [f"p{i // 10:02d}" for i in range(150)]  # 15 problems of 10 rows, in sorted name order
    result = M.heldout_metrics(scores[:2], labels, groups, n_bootstrap=200, seed=4)
    draws = np.random.default_rng(4).integers(0, 15, size=(200, 15))
    aurocs, differences = [], []
    for drawn in draws:
        rows = np.concatenate([np.arange(10 * problem, 10 * problem + 10) for problem in drawn])
        y = labels.numpy()[rows]
        if 0 < y.sum() < len(y):
            first, second = (skm.roc_auc_score(y, scores[layer].numpy()[rows]) for layer in (0, 1))
            aurocs.append(first)
            differences.append(first - second)
    assert (result.low["auroc"][0].item(), result.high["auroc"][0].item()) == pytest.approx(
        tuple(np.percentile(aurocs, [2.5, 97.5])), abs=1e-6)
    weights = M.group_bootstrap_weights(groups, 200, seed=4).double()
    paired = M.auroc(scores[:2], labels, weights)
    low, high = M.percentile_interval(paired[:1] - paired[1:])
    assert (low.item(), high.item()) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), abs=1e-9)
