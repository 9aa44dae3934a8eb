"""The one-layer probe is a scikit-learn classifier: clone, get_params, cross_val_score, pipelines, and the same
model as scikit-learn's LogisticRegression with the same penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from lens_pivotal.probes import LayerProbes, LinearProbe, ProbeConfig, ProbeSettings

L2 = 0.1


def planted(n_rows: int = 320, d_model: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    y = (generator.random(n_rows) < 0.35).astype(int)
    X = generator.normal(size=(n_rows, d_model)) * 2 + 0.5
    X[:, 0] += 1.5 * (2 * y - 1)
    return X, y, np.arange(n_rows) // 8


@pytest.mark.parametrize("class_weight", ["balanced", None])
def test_it_fits_the_model_logistic_regression_fits(class_weight):
    X, y, _ = planted()
    ours = LinearProbe(L2, standardize=False, class_weight=class_weight).fit(X, y)
    reference = LogisticRegression(C=1 / (L2 * len(y)), class_weight=class_weight, tol=1e-10, max_iter=10_000).fit(X, y)
    assert np.abs(ours.predict_proba(X) - reference.predict_proba(X)).max() < 1e-3
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=2e-3)


def test_standardised_it_is_a_scaler_then_logistic_regression():
    X, y, _ = planted()
    ours = LinearProbe(L2).fit(X, y)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (L2 * len(y)), class_weight="balanced",
                                                                   tol=1e-10, max_iter=10_000)).fit(X, y)
    assert np.abs(ours.predict_proba(X) - reference.predict_proba(X)).max() < 1e-3


def test_it_is_a_scikit_learn_classifier():
    X, y, groups = planted()
    probe = LinearProbe(L2, class_weight=None)
    assert clone(probe).get_params() == probe.get_params() == {
        "l2": L2, "standardize": True, "class_weight": None, "max_iter": 500, "dtype": "float64"}
    scores = cross_val_score(probe, X, y, groups=groups, cv=GroupKFold(4), scoring="roc_auc")
    assert scores.shape == (4,) and scores.min() > 0.7
    fitted = probe.fit(X, y)
    assert fitted.predict_proba(X).shape == (len(y), 2) and np.allclose(fitted.predict_proba(X).sum(1), 1)
    assert fitted.score(X, y) == pytest.approx(accuracy_score(y, fitted.predict(X)))
    assert set(LinearProbe().fit(X, np.where(y == 1, "pivot", "other")).predict(X)) <= {"pivot", "other"}
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        LinearProbe().fit(X, np.zeros(len(y)))


def test_it_is_one_layer_of_layer_probes():
    X, y, _ = planted()
    settings = ProbeSettings(l2=L2, n_bootstrap=0)
    probes = LayerProbes(ProbeConfig("unknown", X.shape[1], 1, ["blocks.0.hook_resid_post"], settings))
    probes.fit(torch.tensor(X)[None], y)
    ours = LinearProbe(L2).fit(X, y).predict_proba(X)[:, 1]
    assert np.abs(probes.predict_proba(torch.tensor(X)[None])[0].numpy() - ours).max() < 1e-4


def test_it_passes_scikit_learns_estimator_checks():
    failed = [check for check in check_estimator(LinearProbe(), on_fail=None) if check["status"] == "failed"]
    assert [(check["check_name"], str(check["exception"])[:200]) for check in failed] == []


def test_a_class_weight_dict_weighs_rows_as_scikit_learns():
    X, y, _ = planted()
    weights = {0: 1.0, 1: 3.0}
    ours = LinearProbe(L2, standardize=False, class_weight=weights).fit(X, y)
    n_weighted = np.where(y == 1, 3.0, 1.0).sum()
    reference = LogisticRegression(C=1 / (L2 * n_weighted), class_weight=weights, tol=1e-10, max_iter=10_000).fit(X, y)
    assert np.abs(ours.predict_proba(X) - reference.predict_proba(X)).max() < 1e-3
