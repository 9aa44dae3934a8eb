"""The batched trainer: hand-written gradients equal autograd's, heads are independent, warm starts, weighting."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.linear_model import LogisticRegression

from sklearn.preprocessing import StandardScaler

from lens_pivotal.probes.training import (
    ConvergenceWarning,
    Heads,
    balanced_weights,
    fit_lbfgs,
    fold_inputs,
    head_losses,
    loss_gradients,
)


def problem(seed=0, n_layers=3, n_heads=4, n=50, d_model=7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_layers, n, d_model, generator=generator, dtype=torch.float64)
    labels = (torch.rand(n_heads, n, generator=generator) < 0.3).double()
    weights = torch.rand(n_heads, n, generator=generator, dtype=torch.float64)
    return x, labels, weights


def test_loss_gradients_match_autograd():
    x, labels, weights = problem()
    weight = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    l2 = torch.tensor([[0.0, 0.1, 1.0, 3.0]], dtype=torch.float64).expand(3, 4)
    head_losses(Heads(weight, bias), x, labels, weights, l2).sum().backward()
    grad_weight, grad_bias = loss_gradients(Heads(weight.detach(), bias.detach()), x, labels, weights, l2)
    assert torch.allclose(grad_weight, weight.grad, atol=1e-12) and torch.allclose(grad_bias, bias.grad, atol=1e-12)


def test_fold_inputs_are_each_heads_rows_through_a_standard_scaler_fitted_on_its_own_rows():
    x, labels, _ = problem(2)
    x = x * torch.linspace(0.5, 20, 7, dtype=torch.float64) + 3
    mask = (torch.rand(4, 50, generator=torch.Generator().manual_seed(3)) < 0.7).double()
    inputs = fold_inputs(x, mask)
    for layer, head in np.ndindex(3, 4):
        scaler = StandardScaler().fit(x[layer][mask[head].bool()].numpy())
        ours = (x[layer] * inputs.scale[layer, head] + inputs.shift[layer, head]).numpy()
        np.testing.assert_allclose(ours, scaler.transform(x[layer].numpy()), atol=1e-9)


def test_gradients_through_head_inputs_match_autograd():
    x, labels, weights = problem(4)
    inputs = fold_inputs(x, (weights > 0.3).double())
    weight = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    l2 = torch.tensor(0.2, dtype=torch.float64)
    head_losses(Heads(weight, bias, inputs), x, labels, weights, l2).sum().backward()
    grad_weight, grad_bias = loss_gradients(Heads(weight.detach(), bias.detach(), inputs), x, labels, weights, l2)
    assert torch.allclose(grad_weight, weight.grad, atol=1e-12) and torch.allclose(grad_bias, bias.grad, atol=1e-12)


def test_heads_fitted_together_equal_heads_fitted_alone():
    x, labels, weights = problem(1)
    together = fit_lbfgs(x, labels, weights, torch.tensor(0.05, dtype=torch.float64))
    alone = fit_lbfgs(x[1:2], labels[2:3], weights[2:3], torch.tensor(0.05, dtype=torch.float64))
    assert torch.allclose(together.weight[1, 2], alone.weight[0, 0], atol=1e-5)
    warm = fit_lbfgs(x, labels, weights, torch.tensor(0.05, dtype=torch.float64), init=together, max_iter=3)
    assert torch.allclose(warm.weight, together.weight, atol=1e-5), "a warm start at the optimum stays there"


def test_balanced_weights_give_each_class_half():
    labels = torch.tensor([[1.0, 0, 0, 0, 1, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    weights = balanced_weights(labels, mask)
    assert weights[0, 5] == 0
    assert (weights * labels).sum() == (weights * (1 - labels)).sum() == mask.sum() / 2


def spread_l2_problem(n=200, d_model=16, seed=0):
    """Two layers of unstandardised activations (features on scales 1 to 100) carrying a noisy planted label."""
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=generator) < 0.4).double()
    x = torch.randn(2, n, d_model, generator=generator, dtype=torch.float64)
    x[..., 0] += 3 * y
    x *= torch.logspace(0, 2, d_model, dtype=torch.float64)
    return x, y


# L2 five orders of magnitude apart ([n_layers, n_heads]): one per layer, or both on the heads of one layer
SPREAD_L2 = {"across layers": [[1e-4], [10.0]], "within a layer": [[1e-4, 10.0]]}


@pytest.mark.parametrize("l2", SPREAD_L2.values(), ids=SPREAD_L2.keys())
def test_heads_whose_l2_differ_by_orders_of_magnitude_each_reach_sklearns_optimum(l2):
    l2 = torch.tensor(l2, dtype=torch.float64)
    x, y = spread_l2_problem()
    x, labels = x[: l2.shape[0]], y.expand(l2.shape[1], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        heads = fit_lbfgs(x, labels, torch.ones_like(labels), l2)
    for layer, head in np.ndindex(*l2.shape):
        reference = LogisticRegression(C=1 / (float(l2[layer, head]) * len(y)), tol=1e-10, max_iter=10_000)
        reference.fit(x[layer].numpy(), y.numpy())
        ours = np.append(heads.weight[layer, head].numpy(), heads.bias[layer, head].item())
        expected = np.append(reference.coef_[0], reference.intercept_)
        assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max(), f"layer {layer}, head {head}"


def test_stopping_at_max_iter_warns_naming_the_layers():
    x, y = spread_l2_problem()
    labels, l2 = y.unsqueeze(0), torch.tensor(SPREAD_L2["across layers"], dtype=torch.float64)
    named = r"max_iter 2\) on layer 0 \(all heads: gradient [\d.e+-]+ after \d iteration\(s\)\); layer 1 \(all heads"
    with pytest.warns(SklearnConvergenceWarning, match=named) as caught:  # scikit-learn's filters catch it too
        fit_lbfgs(x, labels, torch.ones_like(labels), l2, max_iter=2)
    assert all(isinstance(warning.message, ConvergenceWarning) for warning in caught)
