"""The pivot's direction and size: probes of the sign of prob_delta and ridge regressions of it, against
scikit-learn on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score

import lens_pivotal as lp
from lens_pivotal.probes.direction import delta_regression, direction_probes, ridge_predict, weighted_r2
from lens_pivotal.probes.examples import ProbeExamples


def planted_examples(n_problems: int = 40, per_problem: int = 8, d_model: int = 24, seed: int = 0):
    """Pivotal rows (and as many non-pivotal ones) whose prob_delta lies along one direction of layer 1; layer 0 is
    noise. Returns the examples, activations and baselines."""
    generator = torch.Generator().manual_seed(seed)
    n = n_problems * per_problem
    delta = (torch.rand(n, generator=generator) - 0.4).clamp(-0.9, 0.9)
    pivotal = torch.arange(n) % 2 == 0
    acts = torch.randn(2, n, d_model, generator=generator)
    acts[1, :, 0] += 8 * delta * pivotal
    examples = ProbeExamples(
        texts=["t"] * n, positions=list(range(n)), labels=pivotal.long().tolist(),
        groups=[f"p{index // per_problem}" for index in range(n)], text_index=[0] * n,
        token_ids=[torch.randint(0, 9, (n,), generator=generator).tolist()],
        prob_deltas=[float(value) if keep else None for value, keep in zip(delta, pivotal)], answer_starts=[0],
    )  # fmt: skip
    baselines = {"entropy": torch.rand(n, generator=generator) + 0.2 * delta, "token": torch.tensor(examples.current_tokens)}
    return examples, acts, baselines


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = train.mean(0), train.std(0, ddof=1)
    return (train - mean) / scale, (test - mean) / scale


def test_ridge_equals_sklearn_ridge_per_layer():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 50, 80, generator=generator, dtype=torch.float64), torch.randn(50, generator=generator, dtype=torch.float64)
    alpha = torch.tensor([0.5, 30.0], dtype=torch.float64)
    predicted = ridge_predict(x[:, :40], y[:40], x[:, 40:], alpha)
    for layer in range(2):
        train, test = standardised(x[layer, :40].numpy(), x[layer, 40:].numpy())
        expected = Ridge(alpha=float(alpha[layer])).fit(train, y[:40].numpy()).predict(test)
        np.testing.assert_allclose(predicted[layer].numpy(), expected, rtol=1e-8, atol=1e-10)


def test_weighted_r2_equals_sklearn_with_sample_weights():
    generator = torch.Generator().manual_seed(4)
    y, predictions = torch.randn(30, generator=generator, dtype=torch.float64), torch.randn(2, 30, generator=generator, dtype=torch.float64)
    weights = torch.randint(0, 3, (4, 30), generator=generator).double()
    values = weighted_r2(predictions, y, weights)
    for k in range(2):
        for r in range(4):
            expected = r2_score(y.numpy(), predictions[k].numpy(), sample_weight=weights[r].numpy())
            assert float(values[k, r]) == pytest.approx(expected, abs=1e-10)


def test_delta_regression_finds_the_planted_layer_and_matches_sklearn():
    examples, acts, baselines = planted_examples()
    settings = lp.probes.ProbeSettings(n_bootstrap=300)
    result = delta_regression(acts, examples, baselines, settings=settings)
    rows = [index for index, delta in enumerate(examples.prob_deltas) if delta is not None]
    y = np.array([examples.prob_deltas[index] for index in rows])
    train, heldout = lp.probes.group_split([examples.groups[index] for index in rows], test_fraction=0.2, seed=0)
    for layer in range(2):
        x_train, x_test = standardised(acts[layer, rows][train].numpy(), acts[layer, rows][heldout].numpy())
        expected = r2_score(y[heldout], Ridge(alpha=result.alpha[layer]).fit(x_train, y[train]).predict(x_test))
        assert result.r2[layer] == pytest.approx(expected, abs=1e-6)  # float32 activations
    entropy = baselines["entropy"][rows].numpy()[:, None]
    entropy_r2 = r2_score(y[heldout], Ridge(alpha=0).fit(entropy[train], y[train]).predict(entropy[heldout]))
    assert result.baseline_r2["entropy"][0] == pytest.approx(entropy_r2, abs=1e-8)
    assert result.best_slot == 1 and result.r2_low[1] > 0.1 and result.versus_best_baseline["low"][1] > 0
    assert result.r2[0] < 0.2 and result.versus_best_baseline["low"][0] < 0.2


def test_direction_probes_train_on_the_pivots_sign_as_sklearn_does():
    examples, acts, baselines = planted_examples()
    settings = lp.probes.ProbeSettings(l2=1e-1, standardize=False, class_weight=None, n_bootstrap=100, n_permutations=0)
    probes = direction_probes(acts, examples, baselines=baselines, settings=settings)
    rows = [index for index, delta in enumerate(examples.prob_deltas) if delta is not None]
    y = np.array([int(examples.prob_deltas[index] > 0) for index in rows])
    train, heldout = lp.probes.group_split([examples.groups[index] for index in rows], test_fraction=0.2, seed=0)
    for layer in range(2):
        x = acts[layer, rows].numpy()
        reference = LogisticRegression(C=1 / (settings.l2 * len(train)), tol=1e-10, max_iter=10_000).fit(x[train], y[train])
        expected = roc_auc_score(y[heldout], reference.decision_function(x[heldout]))
        assert float(probes.metrics.values["auroc"][layer]) == pytest.approx(expected, abs=0.02)
    assert probes.config.n_train + probes.config.n_heldout == len(rows)
    assert float(probes.metrics.values["auroc"][1]) > 0.8 and probes.versus_best_baseline["low"][1] > 0
    one_sign = ProbeExamples(**{**examples.__dict__, "prob_deltas": [abs(d) if d is not None else None for d in examples.prob_deltas]})
    with pytest.raises(ValueError, match="both signs"):
        direction_probes(acts, one_sign)
