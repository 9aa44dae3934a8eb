"""Logistic-regression heads for every layer at once: one batched tensor program over a layer axis.

A head is ``sigmoid(x @ w + b)``. Heads are laid out ``[n_layers, n_heads, d_model]``: the head axis holds
independent fits on the same layer (cross-validation folds × L2 values, or shuffled-label controls), each with its
own labels, example weights and L2. Because the objective is a sum of independent per-head objectives, one
optimiser over all of them reaches every head's own optimum, and each step is a single batched matmul
(``einsum("lnd,lhd->lhn")``) instead of a Python loop over layers.

The objective of a head is ``sum_i w_i BCE(x_i, y_i) / sum_i w_i + l2 / 2 * |w|^2`` (bias not penalised), which is
scikit-learn's ``LogisticRegression(C=1 / (l2 * sum_i w_i))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


@dataclass
class Heads:
    """Fitted heads: ``weight [n_layers, n_heads, d_model]``, ``bias [n_layers, n_heads]``."""

    weight: Tensor
    bias: Tensor

    def logits(self, x: Float[Tensor, "n_layers n d_model"]) -> Float[Tensor, "n_layers n_heads n"]:
        """Logits of every head on every example of its layer."""
        return torch.einsum("lnd,lhd->lhn", x, self.weight) + self.bias.unsqueeze(-1)


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


def fit_lbfgs(
    x: Float[Tensor, "n_layers n d_model"],
    labels: Float[Tensor, "n_heads n"],
    weights: Float[Tensor, "n_heads n"],
    l2: Tensor,
    *,
    max_iter: int = 500,
    tolerance: float = 1e-6,
    init: Heads | None = None,
) -> Heads:
    """Full-batch L-BFGS (strong-Wolfe line search) on the sum of all heads' objectives, from zero or ``init``.

    One line search serves every head, so heads of very different curvature (e.g. very different L2) slow each other
    down: solve those one group at a time, warm-started (see ``LayerProbes``' L2 path).
    """
    heads = zero_heads(x.shape[0], labels.shape[0], x.shape[-1], x)
    if init is not None:
        with torch.no_grad():
            heads.weight.copy_(init.weight)
            heads.bias.copy_(init.bias)
    optimizer = torch.optim.LBFGS(
        [heads.weight, heads.bias], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=tolerance, tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = head_losses(heads, x, labels, weights, l2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Heads(heads.weight.detach(), heads.bias.detach())


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
) -> Heads:
    """Minibatch Adam (the Algoverse probing project's method), keeping for each head the epoch with the lowest validation loss.

    ``validation`` is ``(x_val, labels_val, weights_val)`` shaped like the training arguments. Every head sees the
    same shuffled minibatches; Adam's update is per parameter, so heads stay independent. Gradients come from
    :func:`loss_gradients` rather than autograd: the steps are tiny and cost per-operation overhead, so fewer
    operations per step is what makes one batched step cheap.
    """
    n_layers, n_heads, d_model = x.shape[0], labels.shape[0], x.shape[-1]
    heads = Heads(torch.zeros(n_layers, n_heads, d_model).to(x), torch.zeros(n_layers, n_heads).to(x))
    optimizer = _adam([heads.weight, heads.bias], lr)
    best = Heads(heads.weight.clone(), heads.bias.clone())
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
    logits = torch.baddbmm(heads.bias.unsqueeze(-1), heads.weight, x.transpose(1, 2))
    residual = (torch.sigmoid(logits) - labels) * (weights / weights.sum(-1, keepdim=True).clamp_min(1e-12))
    data_gradient = torch.bmm(residual, x)
    penalised = data_gradient if not l2.any() else data_gradient.add_(l2.unsqueeze(-1) * heads.weight)
    return penalised, residual.sum(-1)


def balanced_weights(labels: Float[Tensor, "n_heads n"], mask: Float[Tensor, "n_heads n"]) -> Float[Tensor, "n_heads n"]:
    """Per-head example weights ``n / (2 n_class)`` over the examples in ``mask`` (zero elsewhere)."""
    positives = (labels * mask).sum(-1, keepdim=True)
    total = mask.sum(-1, keepdim=True)
    negatives = total - positives
    per_class = torch.where(labels > 0.5, total / (2 * positives.clamp_min(1)), total / (2 * negatives.clamp_min(1)))
    return per_class * mask
