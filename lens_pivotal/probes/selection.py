"""Model selection over problems: held-out splits, grouped cross-validation folds, the bootstrap over problems, and
the cross-validated fits built on them.

Rows of one problem are correlated, so every split keeps problems whole. Cross-validated heads are fitted as
scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(...))`` would be inside each fold: the
standardisation is fitted on the rows a head trains on (:func:`~lens_pivotal.probes.training.fold_inputs`), never on
the rows it is scored on. :func:`choose_l2` picks each layer's L2 on the training problems (what ``fit`` does, like
``LogisticRegressionCV``); :func:`out_of_fold_logits` scores every training row with heads that never saw its fold,
choosing their L2 inside each fold when the L2 is not fixed (nested cross-validation), so the cross-validated AUROC
is an estimate of the whole procedure, L2 selection included.
"""

from __future__ import annotations

import random
from typing import Collection, Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.model_selection import StratifiedGroupKFold
from torch import Tensor

from lens_pivotal.probes.config import ProbeSettings
from lens_pivotal.probes.training import Heads, balanced_weights, fit_adam, fit_lbfgs, fold_inputs, head_losses

CV_PATIENCE = 2  # grid steps past a selection's best CV loss before it leaves the L2 path


def group_split(
    groups: Sequence[str], *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` splitting examples by group, so that no group is in both.

    ``ceil(test_fraction * n_groups)`` groups (at least one, and at least one left for training) go to the test side.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"a grouped split needs at least 2 groups, got {len(names)}")
    random.Random(seed).shuffle(names)
    n_test = min(max(1, int(np.ceil(test_fraction * len(names)))), len(names) - 1)
    test_groups = set(names[:n_test])
    is_test = np.array([group in test_groups for group in groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def heldout_split(groups: Sequence[str], heldout_groups: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, heldout)``: the rows of every group but ``heldout_groups``, and the rows of those."""
    heldout_groups = set(heldout_groups)
    if not heldout_groups:
        raise ValueError("heldout_groups is empty: name at least one group to hold out")
    unknown = sorted(heldout_groups - set(groups))
    if unknown:
        raise ValueError(f"heldout_groups names {len(unknown)} groups not in groups, e.g. {unknown[0]!r}")
    is_heldout = np.array([group in heldout_groups for group in groups])
    if is_heldout.all():
        raise ValueError("heldout_groups must leave at least one group for training")
    return np.flatnonzero(~is_heldout), np.flatnonzero(is_heldout)


def group_folds(groups: Sequence[str], n_folds: int, seed: int = 0, labels: Sequence[int] | Tensor | None = None) -> Tensor:
    """Fold index per example for grouped cross-validation: whole groups per fold, ``min(n_folds, n_groups)`` folds.

    With ``labels``, scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded) deals the groups so that every fold
    keeps about the classes' overall ratio (a fold without positives would score nothing); without, groups are
    shuffled and dealt round-robin. Folds are numbered from 0 without gaps.
    """
    names = sorted(set(groups))
    n_folds = min(n_folds, len(names))
    if labels is None or n_folds < 2:
        np.random.default_rng(seed).shuffle(names)
        fold_of = {name: index % n_folds for index, name in enumerate(names)}
        return torch.tensor([fold_of[group] for group in groups])
    folds = np.zeros(len(groups), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(groups)), np.asarray(labels), np.asarray(groups))):
        folds[test] = fold
    return torch.from_numpy(np.unique(folds, return_inverse=True)[1])


def group_bootstrap_weights(groups: Sequence, n_resamples: int, seed: int = 0) -> Float[Tensor, "n_resamples n"]:
    """How many times each example is drawn when whole groups are resampled with replacement."""
    names, group_of = np.unique(np.asarray([str(group) for group in groups]), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_resamples, len(names)))
    counts = np.stack([np.bincount(row, minlength=len(names)) for row in draws]) if n_resamples else np.zeros((0, len(names)))
    return torch.from_numpy(counts[:, group_of]).float()


def percentile_interval(draws: Tensor, confidence: float = 0.95) -> tuple[Tensor, Tensor]:
    """The percentile bootstrap interval of each row of ``draws`` (resamples on the last axis), ignoring NaN draws
    (resamples in which the statistic is undefined, e.g. an AUROC without both classes)."""
    tail = (1 - confidence) / 2
    return draws.nanquantile(tail, dim=-1), draws.nanquantile(1 - tail, dim=-1)


def example_weights(labels: Tensor, mask: Tensor, settings: ProbeSettings) -> Tensor:
    """Per-head example weights over the rows of ``mask``: balanced classes or equal rows, as ``settings`` says."""
    return balanced_weights(labels, mask) if settings.class_weight == "balanced" else mask


def fit_heads(
    x: Float[Tensor, "n_layers n d_model"],
    labels: Float[Tensor, "n_heads n"],
    groups: list[str],
    l2: Tensor,
    settings: ProbeSettings,
    mask: Float[Tensor, "n_heads n"] | None = None,
) -> Heads:
    """A head per row of ``labels`` on every layer, with ``l2`` (broadcast to ``[n_layers, n_heads]``), each fitted
    on the rows its row of ``mask`` keeps (default all) and, with ``settings.standardize``, on those rows
    standardised with their own statistics (``x`` is then already standardised over every row)."""
    mask = torch.ones_like(labels) if mask is None else mask
    inputs = fold_inputs(x, mask) if settings.standardize and not bool(mask.all()) else None
    if settings.solver == "lbfgs":
        return fit_lbfgs(x, labels, example_weights(labels, mask, settings), l2, max_iter=settings.max_iter, inputs=inputs)
    fit_rows, check_rows = group_split(groups, test_fraction=settings.val_fraction, seed=settings.seed + 1)
    fit_labels, check_labels = labels[:, fit_rows], labels[:, check_rows]
    validation = (x[:, check_rows], check_labels, example_weights(check_labels, mask[:, check_rows], settings))
    return fit_adam(
        x[:, fit_rows], fit_labels, example_weights(fit_labels, mask[:, fit_rows], settings), l2, validation,
        lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed, inputs=inputs,
    )  # fmt: skip


def choose_l2(
    x: Float[Tensor, "n_layers n d_model"], y: Float[Tensor, " n"], groups: list[str], settings: ProbeSettings
) -> tuple[Float[Tensor, " n_layers"], Float[Tensor, "n_layers n_grid"]]:
    """Each layer's L2 from ``settings.l2_grid``: the lowest mean held-out log loss over grouped folds of these rows
    (``x`` standardised over them when ``settings.standardize``). Returns the L2s and the loss table (``inf`` for
    the grid values the path stopped before)."""
    folds = group_folds(groups, settings.cv_folds, settings.seed, y.cpu()).to(x.device)
    fit = _outside(folds, x.dtype)
    chosen, table = _l2_path(x, y, fit, 1 - fit, torch.zeros(len(fit), dtype=torch.long), settings)
    return chosen[:, 0], table[:, 0]


def out_of_fold_logits(
    x: Float[Tensor, "n_layers n d_model"],
    y: Float[Tensor, " n"],
    groups: list[str],
    settings: ProbeSettings,
    l2: Float[Tensor, " n_layers"] | None = None,
) -> Float[Tensor, "n_layers n"] | None:
    """Every row's logit from heads fitted on the other grouped folds (standardised inside each fold), per layer.

    With ``l2=None`` each fold's heads take the L2 that grouped cross-validation inside that fold's training rows
    picks (nested cross-validation: the row being scored never chose its own L2); otherwise ``l2``. ``None`` when
    the rows hold fewer than 2 groups, or, for the nested case, when a fold leaves fewer than 2 groups to choose in.
    """
    if len(set(groups)) < 2:
        return None
    folds = group_folds(groups, settings.cv_folds, settings.seed, y.cpu()).to(x.device)
    n_folds = int(folds.max()) + 1
    if l2 is None:
        inner = _inner_folds(folds, y, groups, settings)
        if inner is None:
            return None
        l2 = _l2_path(x, y, *inner, settings)[0]  # [n_layers, n_folds]
    else:
        l2 = l2.to(x).unsqueeze(-1).expand(-1, n_folds)
    heads = fit_heads(x, y.to(x).expand(n_folds, -1), groups, l2, settings, mask=_outside(folds, x.dtype))
    logits = heads.logits(x)  # [n_layers, n_folds, n]
    return logits.gather(1, folds.view(1, 1, -1).expand(len(logits), 1, -1)).squeeze(1)


def _outside(folds: Tensor, dtype: torch.dtype) -> Float[Tensor, "n_folds n"]:
    """Row ``f``: 1 on the rows outside fold ``f`` (those its head trains on)."""
    n_folds = int(folds.max()) + 1
    return (folds.unsqueeze(0) != torch.arange(n_folds, device=folds.device).unsqueeze(1)).to(dtype)


def _inner_folds(
    folds: Tensor, y: Tensor, groups: list[str], settings: ProbeSettings
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The heads of nested cross-validation: for each outer fold, grouped folds of its training rows. Returns the
    ``fit`` and ``check`` masks (``[n_heads, n]``) and each head's outer fold; ``None`` when an outer fold leaves
    fewer than 2 groups."""
    fit, check, outer = [], [], []
    for fold in range(int(folds.max()) + 1):
        rows = torch.nonzero(folds != fold).squeeze(-1)
        inner_groups = [groups[index] for index in rows.tolist()]
        if len(set(inner_groups)) < 2:
            return None
        inner = group_folds(inner_groups, settings.cv_folds, settings.seed, y[rows].cpu()).to(folds.device)
        for inner_fold in range(int(inner.max()) + 1):
            for masks, side in ((fit, inner != inner_fold), (check, inner == inner_fold)):
                masks.append(torch.zeros(len(folds), dtype=y.dtype, device=y.device).index_fill_(0, rows[side], 1))
            outer.append(fold)
    return torch.stack(fit), torch.stack(check), torch.tensor(outer, device=folds.device)


def _l2_path(
    x: Tensor, y: Tensor, fit: Tensor, check: Tensor, selection: Tensor, settings: ProbeSettings
) -> tuple[Float[Tensor, "n_layers n_selections"], Float[Tensor, "n_layers n_selections n_grid"]]:
    """The L2 of each layer and selection (heads sharing a ``selection`` index are its folds): the grid value with
    the lowest mean held-out log loss over its heads, and the loss table (``inf`` where the path stopped before)."""
    labels = y.to(x).unsqueeze(0).expand(len(fit), -1)
    fit_weights, check_weights = example_weights(labels, fit, settings), example_weights(labels, check, settings)
    inputs = fold_inputs(x, fit) if settings.standardize else None
    members = torch.nn.functional.one_hot(selection).to(x)  # [n_heads, n_selections]
    members = members / members.sum(0, keepdim=True)
    # Along the L2 path from the strongest penalty: each solve has heads of like curvature and starts close by.
    # Weak penalties are the slow solves (n < d_model makes the data separable), so a selection leaves the path
    # once its CV loss has risen for CV_PATIENCE steps past its minimum; its heads are not solved again.
    active = torch.ones(len(x), len(members[0]), dtype=torch.bool, device=x.device)  # [n_layers, n_selections]
    heads, losses = None, {}
    for l2 in sorted(settings.l2_grid, reverse=True):
        penalty = torch.tensor(l2, dtype=torch.float64).to(x)
        heads = fit_lbfgs(x, labels, fit_weights, penalty, max_iter=settings.max_iter, init=heads, inputs=inputs,
                          active=active[:, selection])  # fmt: skip
        loss = head_losses(heads, x, labels, check_weights, torch.zeros(1).to(x)) @ members
        losses[l2] = torch.where(active, loss, torch.full_like(loss, float("inf")))
        path = torch.stack(list(losses.values()), dim=-1)
        if path.shape[-1] > CV_PATIENCE:
            active &= path.argmin(-1) >= path.shape[-1] - CV_PATIENCE
        if not active.any():
            break
    missing = torch.full(path.shape[:-1], float("inf")).to(x)
    table = torch.stack([losses.get(l2, missing) for l2 in settings.l2_grid], dim=-1)
    return torch.tensor(settings.l2_grid, dtype=torch.float64).to(x)[table.argmin(-1)], table
