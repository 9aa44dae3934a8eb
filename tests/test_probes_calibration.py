"""Thresholds as false-positive rates on held-out negatives and precision at a stated prior, against written-out
counts (a gate's precision on whole texts is in test_probes_evaluation)."""

from __future__ import annotations

import pytest
import torch

import lens_pivotal as lp
from lens_pivotal.probes import FalsePositiveRate
from test_probes_baselines import planted


@pytest.fixture(scope="module")
def trained():
    acts, labels, groups, _ = planted(n_problems=60)
    probes = lp.train_probes(acts, labels, groups=groups, settings=lp.probes.ProbeSettings(n_bootstrap=20, n_permutations=0))
    _, heldout = lp.probes.group_split(groups, test_fraction=0.2, seed=0)
    scores = probes.predict_proba(acts[:, heldout])
    return probes, scores, labels[heldout]


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.3, 1.0])
def test_threshold_at_fpr_lets_through_at_most_that_share_of_heldout_negatives(trained, rate):
    probes, scores, y = trained
    for layer in (0, 1):
        negatives = scores[layer, y == 0].double().numpy()
        threshold = probes.threshold_at_fpr(rate, layer)
        assert (negatives >= threshold).mean() <= rate + 1e-12
        lower = negatives[negatives < threshold]  # any lower threshold lets through more than the rate
        assert len(lower) == 0 or (negatives >= lower.max()).mean() > rate


def test_operating_point_at_a_stated_prior(trained):
    probes, scores, y = trained
    point = probes.operating_point(FalsePositiveRate(0.1), layer=1, prior=0.05)
    positives, negatives = scores[1, y == 1].double().numpy(), scores[1, y == 0].double().numpy()
    recall, fpr = (positives >= point["threshold"]).mean(), (negatives >= point["threshold"]).mean()
    assert (point["recall"], point["fpr"]) == pytest.approx((recall, fpr))
    assert point["precision"] == pytest.approx(0.05 * recall / (0.05 * recall + 0.95 * fpr))
    natural = probes.operating_point(0.5, layer=1)
    assert natural["prior"] == pytest.approx(float(y.float().mean()))


def test_calibration_is_saved_and_reaches_the_gate(trained, tmp_path):
    probes, _, _ = trained
    loaded = lp.LayerProbes.load(probes.save(tmp_path / "probes"))
    assert loaded.threshold_at_fpr(0.1, 1) == probes.threshold_at_fpr(0.1, 1)
    assert probes[1].threshold_at_fpr(0.1, 1) == probes.threshold_at_fpr(0.1, 1)
    hook = lp.steering_hook(torch.ones(32), 1.0, layer=1, absolute=True, gate=(probes, FalsePositiveRate(0.1)))
    assert hook.gate[1] == probes.threshold_at_fpr(0.1, 1)
    with pytest.raises(ValueError, match="false-positive rate lies in"):
        FalsePositiveRate(1.5)


def test_a_refit_replaces_the_saved_heldout_scores_and_fit_alone_has_none(trained):
    probes, _, _ = trained
    acts, labels, groups, _ = planted(n_problems=60, seed=1)
    settings = lp.probes.ProbeSettings(n_bootstrap=20, n_permutations=0)
    refit = lp.train_probes(acts, labels, groups=groups, settings=settings)
    _, heldout = lp.probes.group_split(groups, test_fraction=0.2, seed=0)
    negatives = refit.predict_proba(acts[:, heldout])[1, labels[heldout] == 0].double().numpy()
    assert sorted(refit.config.calibration["negative_scores"][1]) == pytest.approx(sorted(negatives))
    refit.fit(acts, labels, groups)  # scikit-learn's convention: fit starts afresh and evaluates nothing
    with pytest.raises(RuntimeError, match="hold no held-out scores: train them with train_probes"):
        refit.threshold_at_fpr(0.1, 1)
