"""Logistic-regression heads for every layer at once: one batched tensor program over a layer axis.

A head is ``sigmoid(x @ w + b)``. Heads are laid out ``[n_layers, n_heads, d_model]``: the head axis holds
independent fits on the same layer (cross-validation folds × L2 values, or shuffled-label controls), each with its
own labels, example weights and L2. Because the objective is a sum of independent per-head objectives, one
optimiser over all of them reaches every head's own optimum (L-BFGS takes the heads of like L2 together, see
:func:`fit_lbfgs`), and each step is a single batched matmul (``einsum("lnd,lhd->lhn")``) instead of a Python loop
over layers.

The objective of a head is ``sum_i w_i BCE(x_i, y_i) / sum_i w_i + l2 / 2 * |w|^2`` (bias not penalised), which is
scikit-learn's ``LogisticRegression(C=1 / (l2 * sum_i w_i))``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import sklearn.exceptions
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

MIN_SCALE = 1e-6  # the smallest standard deviation a feature is divided by (a constant feature stays 0)

@dataclass
class HeadInputs:
    """A per-head affine view of the shared rows: head ``h`` of layer ``l`` reads ``x * scale[l, h] + shift[l, h]``
    (``[n_layers, n_heads, d_model]`` each). Cross-validation uses it to standardise each fold's rows with the
    statistics of the rows that fold trains on, without a copy of the activations per fold."""

    scale: Tensor
    shift: Tensor

    def __getitem__(self, layers: Tensor) -> HeadInputs:
        return HeadInputs(self.scale[layers], self.shift[layers])


def fold_inputs(x: Float[Tensor, "n_layers n d_model"], fit_mask: Float[Tensor, "n_heads n"]) -> HeadInputs:
    """Each head's view of ``x`` standardised (mean 0, population standard deviation 1, as scikit-learn's
    ``StandardScaler``) over the rows its row of ``fit_mask`` keeps."""
    count = fit_mask.sum(-1).clamp_min(1).view(1, -1, 1)
    mean = torch.einsum("hn,lnd->lhd", fit_mask.to(x), x) / count
    second = torch.einsum("hn,lnd->lhd", fit_mask.to(x), x * x) / count
    scale = 1 / (second - mean * mean).clamp_min(0).sqrt().clamp_min(MIN_SCALE)
    return HeadInputs(scale, -mean * scale)


@dataclass
class Heads:
    """Fitted heads: ``weight [n_layers, n_heads, d_model]``, ``bias [n_layers, n_heads]``, read through ``inputs``
    when given (see :class:`HeadInputs`); ``n_iter``: the most iterations a solve that fitted them took."""

    weight: Tensor
    bias: Tensor
    inputs: HeadInputs | None = None
    n_iter: int = 0

    def logits(self, x: Float[Tensor, "n_layers n d_model"]) -> Float[Tensor, "n_layers n_heads n"]:
        """Logits of every head on every example of its layer."""
        weight, bias = self.weight, self.bias
        if self.inputs is not None:
            weight, bias = weight * self.inputs.scale, bias + (weight * self.inputs.shift).sum(-1)
        return torch.einsum("lnd,lhd->lhn", x, weight) + bias.unsqueeze(-1)

    def layers(self, layers: Tensor) -> Heads:
        """The heads of ``layers`` only."""
        return Heads(self.weight[layers], self.bias[layers], None if self.inputs is None else self.inputs[layers])


def head_losses(
    heads: Heads, x: Tensor, labels: Float[Tensor, "n_heads n"], weights: Float[Tensor, "n_heads n"], l2: Tensor
) -> Float[Tensor, "n_layers n_heads"]:
    """Each head's regularised mean weighted cross-entropy (``l2`` broadcasts against ``[n_layers, n_heads]``)."""
    logits = heads.logits(x)
    bce = F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none")
    data = (bce * weights).sum(-1) / weights.sum(-1).clamp_min(1e-12)
    return data + 0.5 * l2 * heads.weight.pow(2).sum(-1)


def zero_heads(n_layers: int, n_heads: int, d_model: int, like: Tensor) -> Heads:
    """All-zero heads (probability 0.5 everywhere), trainable."""
    weight = torch.zeros(n_layers, n_heads, d_model, dtype=like.dtype, device=like.device, requires_grad=True)
    bias = torch.zeros(n_layers, n_heads, dtype=like.dtype, device=like.device, requires_grad=True)
    return Heads(weight, bias)


class ConvergenceWarning(sklearn.exceptions.ConvergenceWarning):
    """L-BFGS ran out of iterations with some head's gradient still above the tolerance. A ``UserWarning`` and a
    scikit-learn ``ConvergenceWarning``, so a filter on either category (or on this one) catches it."""


@dataclass
class _Unconverged:
    """Heads of one layer that a solve left with a gradient above the tolerance."""

    layer: int
    heads: list[int]
    n_heads: int  # of the layer
    gradient: float  # the largest of those heads'
    iterations: int

    def describe(self) -> str:
        heads = "all heads" if len(self.heads) == self.n_heads else f"heads {', '.join(map(str, self.heads))}"
        return f"layer {self.layer} ({heads}: gradient {self.gradient:.2g} after {self.iterations} iteration(s))"


def fit_lbfgs(
    x: Float[Tensor, "n_layers n d_model"],
    labels: Float[Tensor, "n_heads n"],
    weights: Float[Tensor, "n_heads n"],
    l2: Tensor,
    *,
    max_iter: int = 500,
    tolerance: float = 1e-6,
    init: Heads | None = None,
    inputs: HeadInputs | None = None,
    active: Tensor | None = None,
) -> Heads:
    """Full-batch L-BFGS (strong-Wolfe line search) on the sum of the heads' objectives, from zero or ``init``.

    One line search serves every head of a solve, so heads of very different curvature slow each other down: the
    heads whose L2 (broadcast to ``[n_layers, n_heads]``) differ by orders of magnitude are solved apart, one decade
    of L2 at a time over the layers that hold it (``max_iter`` iterations each). Warns :class:`ConvergenceWarning`,
    naming the layers and heads, where a solve runs out of iterations (``max_iter``) or function evaluations before a
    head's largest gradient component is down to ``tolerance`` (a solve that stops because the loss no longer changes
    counts as converged, as scikit-learn's ``lbfgs`` counts it). ``inputs`` gives each head its own view of ``x``;
    ``active`` (``[n_layers, n_heads]`` booleans, default all) names the heads to solve, the others keep ``init``.
    """
    n_layers, n_heads = x.shape[0], labels.shape[0]
    l2 = torch.as_tensor(l2).to(x).expand(n_layers, n_heads)
    start = zero_heads(n_layers, n_heads, x.shape[-1], x) if init is None else init
    weight, bias = start.weight.detach().to(x, copy=True), start.bias.detach().to(x, copy=True)
    unconverged: list[_Unconverged] = []
    n_iter = 0
    for cells in _same_decade_of_l2(l2):
        cells = cells if active is None else cells & active
        if not cells.any():
            continue
        layers = cells.any(-1).nonzero().squeeze(-1)
        solved, iterations, out_of_budget = _solve_lbfgs(
            x[layers], labels, weights, l2[layers], cells[layers], Heads(weight, bias, inputs).layers(layers), max_iter,
            tolerance,
        )  # fmt: skip
        n_iter = max(n_iter, iterations)
        weight[layers] = torch.where(cells[layers].unsqueeze(-1), solved.weight, weight[layers])
        bias[layers] = torch.where(cells[layers], solved.bias, bias[layers])
        if out_of_budget:
            gradient = _largest_gradients(solved, x[layers], labels, weights, l2[layers])
            unconverged += _unconverged_heads(gradient, cells[layers], layers, iterations, tolerance)
    if unconverged:
        warnings.warn(_convergence_message(unconverged, max_iter, tolerance), ConvergenceWarning, stacklevel=2)
    return Heads(weight, bias, inputs, n_iter)


def _same_decade_of_l2(l2: Float[Tensor, "n_layers n_heads"]) -> list[Tensor]:
    """``[n_layers, n_heads]`` masks of the heads whose L2 share an order of magnitude (L2 0 is one of its own)."""
    decade = torch.log10(l2).floor()
    return [decade == value for value in decade.unique()]


def _solve_lbfgs(
    x: Tensor, labels: Tensor, weights: Tensor, l2: Tensor, cells: Tensor, init: Heads, max_iter: int, tolerance: float
) -> tuple[Heads, int, bool]:
    """One L-BFGS run on the heads in ``cells`` (the others are left out of the objective, so they stay put): the
    heads, the iterations it took, and whether it stopped on ``max_iter`` iterations or its function-evaluation
    budget (rather than on the gradient or loss tolerance)."""
    heads = Heads(init.weight.clone().requires_grad_(), init.bias.clone().requires_grad_(), init.inputs)
    optimizer = torch.optim.LBFGS(
        [heads.weight, heads.bias], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=tolerance, tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = head_losses(heads, x, labels, weights, l2)[cells].sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    state, budget = optimizer.state[heads.weight], optimizer.param_groups[0]
    iterations, evaluations = state.get("n_iter", 0), state.get("func_evals", 0)
    out_of_budget = iterations >= budget["max_iter"] or evaluations >= budget["max_eval"]
    return Heads(heads.weight.detach(), heads.bias.detach(), init.inputs), iterations, out_of_budget


def _largest_gradients(heads: Heads, x: Tensor, labels: Tensor, weights: Tensor, l2: Tensor) -> Tensor:
    """Each head's largest |gradient| component (weight or bias), ``[n_layers, n_heads]``: what L-BFGS stops on."""
    weight_gradient, bias_gradient = loss_gradients(heads, x, labels, weights, l2)
    return torch.maximum(weight_gradient.abs().amax(-1), bias_gradient.abs())


def _unconverged_heads(
    gradient: Tensor, cells: Tensor, layers: Tensor, iterations: int, tolerance: float
) -> list[_Unconverged]:
    """The heads in ``cells`` whose largest gradient is above ``tolerance``, by layer (``layers`` maps rows to
    layer indices)."""
    stuck = cells & (gradient > tolerance)
    return [
        _Unconverged(
            int(layers[row]), stuck[row].nonzero().squeeze(-1).tolist(), len(cells[row]),
            float(gradient[row][stuck[row]].max()), iterations,
        )  # fmt: skip
        for row in stuck.any(-1).nonzero().squeeze(-1).tolist()
    ]


def _convergence_message(unconverged: list[_Unconverged], max_iter: int, tolerance: float) -> str:
    layers = "; ".join(item.describe() for item in sorted(unconverged, key=lambda item: item.layer))
    return (
        f"L-BFGS stopped before converging (gradient tolerance {tolerance:g}, max_iter {max_iter}) on {layers}. "
        "Raise max_iter, standardize the activations, or train in float64."
    )


def fit_adam(
    x: Float[Tensor, "n_layers n d_model"],
    labels: Float[Tensor, "n_heads n"],
    weights: Float[Tensor, "n_heads n"],
    l2: Tensor,
    validation: tuple[Tensor, Tensor, Tensor],
    *,
    lr: float = 1e-3,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    inputs: HeadInputs | None = None,
) -> Heads:
    """Minibatch Adam (the Algoverse probing project's method), keeping for each head the epoch with the lowest validation loss.

    ``validation`` is ``(x_val, labels_val, weights_val)`` shaped like the training arguments. Every head sees the
    same shuffled minibatches; Adam's update is per parameter, so heads stay independent. Gradients come from
    :func:`loss_gradients` rather than autograd: the steps are tiny and cost per-operation overhead, so fewer
    operations per step is what makes one batched step cheap. ``inputs`` gives each head its own view of ``x``.
    """
    n_layers, n_heads, d_model = x.shape[0], labels.shape[0], x.shape[-1]
    heads = Heads(torch.zeros(n_layers, n_heads, d_model).to(x), torch.zeros(n_layers, n_heads).to(x), inputs)
    optimizer = _adam([heads.weight, heads.bias], lr)
    best = Heads(heads.weight.clone(), heads.bias.clone(), inputs)
    best_loss = torch.full(heads.bias.shape, float("inf")).to(x)
    l2 = torch.as_tensor(l2).to(x).expand(n_layers, n_heads)
    generator = torch.Generator().manual_seed(seed)
    rows = x.transpose(0, 1).contiguous()  # [n, n_layers, d_model]: a batch is whole rows, gathered while cache-hot
    for _ in range(epochs):
        order = torch.randperm(x.shape[1], generator=generator).to(x.device)
        for batch in order.split(batch_size):
            heads.weight.grad, heads.bias.grad = loss_gradients(
                heads, rows[batch].transpose(0, 1), labels[:, batch], weights[:, batch], l2
            )
            optimizer.step()
        validation_loss = head_losses(heads, *validation, torch.zeros(1).to(x))
        improved = validation_loss < best_loss
        best_loss = torch.where(improved, validation_loss, best_loss)
        best.weight[improved] = heads.weight[improved]
        best.bias[improved] = heads.bias[improved]
    return best


def _adam(parameters: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where this torch has one for the device (one kernel instead of ~10 per step)."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(parameters, lr=lr)


def loss_gradients(
    heads: Heads, x: Tensor, labels: Tensor, weights: Tensor, l2: Tensor
) -> tuple[Float[Tensor, "n_layers n_heads d_model"], Float[Tensor, "n_layers n_heads"]]:
    """Gradients of :func:`head_losses` with respect to ``heads.weight`` and ``heads.bias``, without autograd."""
    logits = heads.logits(x)
    residual = (torch.sigmoid(logits) - labels) * (weights / weights.sum(-1, keepdim=True).clamp_min(1e-12))
    data_gradient = torch.bmm(residual, x)
    if heads.inputs is not None:  # the chain rule through x * scale + shift
        data_gradient = data_gradient * heads.inputs.scale + heads.inputs.shift * residual.sum(-1, keepdim=True)
    penalised = data_gradient if not l2.any() else data_gradient.add_(l2.unsqueeze(-1) * heads.weight)
    return penalised, residual.sum(-1)


def balanced_weights(labels: Float[Tensor, "n_heads n"], mask: Float[Tensor, "n_heads n"]) -> Float[Tensor, "n_heads n"]:
    """Per-head example weights ``n / (2 n_class)`` over the examples in ``mask`` (zero elsewhere)."""
    positives = (labels * mask).sum(-1, keepdim=True)
    total = mask.sum(-1, keepdim=True)
    negatives = total - positives
    per_class = torch.where(labels > 0.5, total / (2 * positives.clamp_min(1)), total / (2 * negatives.clamp_min(1)))
    return per_class * mask
