"""What the residual stream knows beyond uncertainty: which way a pivot goes.

The model's own uncertainty (entropy, top-1 probability) can say "a choice is coming", but not whether the token that
follows will raise or lower the chance of success. Two questions it cannot answer, asked of the pivotal rows only:

- :func:`direction_probes`: per layer, a probe of the pivot's sign (1 when ``prob_delta > 0``), trained, evaluated
  and compared with the same baselines, control task and permutation null as the pivotal probes
  (:func:`~lens_pivotal.probes.train_probes`);
- :func:`delta_regression`: per layer, a ridge regression of ``prob_delta`` itself, its held-out R² beside the
  baselines' (each a linear fit of one feature; the token as its training mean delta) with a paired interval over
  the same resampled problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.probes.baselines import per_token_totals
from lens_pivotal.probes.config import ProbeSettings
from lens_pivotal.probes.evaluation import train_probes
from lens_pivotal.probes.examples import ProbeExamples
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.probes.selection import group_bootstrap_weights, group_folds, group_split, percentile_interval
from lens_pivotal.viz import format_table

RIDGE_GRID = (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # scikit-learn's ``alpha`` on standardised features
TOKEN_PRIOR_ROWS = 1.0  # the token baseline shrinks each token's mean delta toward the training mean by this many rows


def pivotal_rows(examples: ProbeExamples) -> Tensor:
    """Indices of the pivotal examples (the rows with a ``prob_delta``)."""
    return torch.tensor([index for index, delta in enumerate(examples.prob_deltas) if delta is not None], dtype=torch.long)


def direction_probes(
    acts: Float[Tensor, "n_layers n_examples d_model"],
    examples: ProbeExamples,
    *,
    baselines: dict[str, Tensor] | None = None,
    **train_kwargs: Any,
) -> LayerProbes:
    """Probes of the pivot's direction: on the pivotal rows of ``examples``, label 1 where the pivot raised P(success).

    ``acts`` and ``baselines`` are those of all examples (``examples.cache``, ``example_baselines``); the control
    task uses the current tokens. Keyword arguments go to :func:`~lens_pivotal.probes.train_probes` (``model``,
    ``layers``, ``embeddings``, ``settings``).
    """
    rows = pivotal_rows(examples)
    labels = [int(examples.prob_deltas[index] > 0) for index in rows]
    if len(set(labels)) < 2:
        raise ValueError("direction probes need pivots of both signs; these examples have one sign only")
    return train_probes(
        acts[:, rows], labels, groups=[examples.groups[index] for index in rows],
        baselines=None if baselines is None else {name: values[rows] for name, values in baselines.items()},
        control_types=[examples.current_tokens[index] for index in rows], **train_kwargs,
    )  # fmt: skip


@dataclass
class DeltaRegression:
    """Held-out results of :func:`delta_regression`, per probed layer (slot order, like the probes).

    ``r2`` (with bootstrap ``r2_low``/``r2_high`` over problems) is each layer's held-out R² of ``prob_delta``;
    ``cv_r2`` the grouped cross-validated R² on the training problems, which picks ``best_slot``; ``alpha`` the ridge
    penalty chosen per layer; ``baseline_r2`` each baseline's held-out R² with its interval; ``versus_best_baseline``
    each layer's R² minus the best baseline's, with a paired interval.
    """

    r2: list[float]
    r2_low: list[float]
    r2_high: list[float]
    cv_r2: list[float]
    alpha: list[float]
    best_slot: int
    baseline_r2: dict[str, tuple[float, float, float]]
    versus_best_baseline: dict[str, Any]
    n_train: int
    n_heldout: int


def delta_regression(
    acts: Float[Tensor, "n_layers n_examples d_model"],
    examples: ProbeExamples,
    baselines: dict[str, Tensor],
    *,
    settings: ProbeSettings | None = None,
) -> DeltaRegression:
    """Ridge regressions of ``prob_delta`` on each layer's residual at the pivotal rows, against the baselines.

    Problems are split as :func:`~lens_pivotal.probes.train_probes` splits them (``settings.val_fraction``,
    ``settings.seed``); each layer's ``alpha`` is chosen from :data:`RIDGE_GRID` by grouped cross-validation on the
    training problems; intervals resample the held-out problems (``settings.n_bootstrap``).
    """
    settings = settings or ProbeSettings()
    rows = pivotal_rows(examples)
    y = torch.tensor([examples.prob_deltas[index] for index in rows], dtype=torch.float64)
    groups = [examples.groups[index] for index in rows]
    train, heldout = (torch.as_tensor(part) for part in group_split(groups, test_fraction=settings.val_fraction, seed=settings.seed))
    x = acts[:, rows].double()
    folds = group_folds([groups[index] for index in train], settings.cv_folds, settings.seed)
    cv = torch.stack([_cv_r2(x[:, train], y[train], folds, alpha) for alpha in RIDGE_GRID], dim=-1)  # [layers, grid]
    alpha = torch.tensor(RIDGE_GRID, dtype=torch.float64)[cv.argmax(-1)]
    layer_predictions = ridge_predict(x[:, train], y[train], x[:, heldout], alpha)
    baseline_predictions = torch.stack([_baseline_predict(values[rows], y, train, heldout) for values in baselines.values()])
    held_groups = [groups[index] for index in heldout]
    predictions = torch.cat([layer_predictions, baseline_predictions])
    value = weighted_r2(predictions, y[heldout], torch.ones(1, len(heldout), dtype=torch.float64))[:, 0]
    draws = weighted_r2(predictions, y[heldout], group_bootstrap_weights(held_groups, settings.n_bootstrap, settings.seed).double())
    low, high = percentile_interval(draws)
    n_layers, names = len(x), list(baselines)
    best = n_layers + int(value[n_layers:].argmax())
    difference_low, difference_high = percentile_interval(draws[:n_layers] - draws[best : best + 1])
    return DeltaRegression(
        r2=value[:n_layers].tolist(), r2_low=low[:n_layers].tolist(), r2_high=high[:n_layers].tolist(),
        cv_r2=cv.max(-1).values.tolist(), alpha=alpha.tolist(), best_slot=int(cv.max(-1).values.argmax()),
        baseline_r2={name: (float(value[n_layers + k]), float(low[n_layers + k]), float(high[n_layers + k])) for k, name in enumerate(names)},
        versus_best_baseline={
            "baseline": names[best - n_layers], "value": (value[:n_layers] - value[best]).tolist(),
            "low": difference_low.tolist(), "high": difference_high.tolist(),
        },
        n_train=len(train), n_heldout=len(heldout),
    )  # fmt: skip


def ridge_predict(
    x_train: Float[Tensor, "n_layers n d"], y_train: Float[Tensor, " n"], x_test: Float[Tensor, "n_layers m d"],
    alpha: Float[Tensor, " n_layers"],
) -> Float[Tensor, "n_layers m"]:
    """Each layer's ridge regression (scikit-learn's ``Ridge(alpha)`` with an intercept, on features standardised
    with the training rows' mean and spread), fitted on the training rows and evaluated on ``x_test``; solved in the
    dual (``n x n``), as the residual stream is wider than the data."""
    mean, scale = x_train.mean(1, keepdim=True), x_train.std(1, keepdim=True).clamp_min(1e-12)
    train, test = (x_train - mean) / scale, (x_test - mean) / scale
    gram = train @ train.transpose(1, 2) + alpha.view(-1, 1, 1) * torch.eye(train.shape[1], dtype=train.dtype)
    dual = torch.linalg.solve(gram, (y_train - y_train.mean()).expand(len(train), -1).unsqueeze(-1))
    return (test @ (train.transpose(1, 2) @ dual)).squeeze(-1) + y_train.mean()


def weighted_r2(
    predictions: Float[Tensor, "k m"], y: Float[Tensor, " m"], weights: Float[Tensor, "r m"]
) -> Float[Tensor, "k r"]:
    """R² of each row of ``predictions`` under each row of ``weights`` (bootstrap counts; ones for the plain R²)."""
    total = weights.sum(-1, keepdim=True)
    mean = (weights * y).sum(-1, keepdim=True) / total
    spread = (weights * (y - mean) ** 2).sum(-1)
    residual = torch.einsum("rm,km->kr", weights, (predictions - y) ** 2)
    return 1 - residual / spread


def _cv_r2(x: Tensor, y: Tensor, folds: Tensor, alpha: float) -> Float[Tensor, " n_layers"]:
    """R² of out-of-fold predictions (every training row predicted by the fit without its fold)."""
    predictions = torch.zeros(x.shape[0], len(y), dtype=torch.float64)
    penalty = torch.full((x.shape[0],), alpha, dtype=torch.float64)
    for fold in folds.unique():
        inside = folds == fold
        predictions[:, inside] = ridge_predict(x[:, ~inside], y[~inside], x[:, inside], penalty)
    return weighted_r2(predictions, y, torch.ones(1, len(y), dtype=torch.float64))[:, 0]


def _baseline_predict(values: Tensor, y: Tensor, train: Tensor, heldout: Tensor) -> Float[Tensor, " m"]:
    """A baseline's held-out prediction of ``y``: least squares on the feature (a token id: its training mean)."""
    feature = _token_means(values, y, train) if not values.is_floating_point() else values.double()
    design = torch.stack([feature, torch.ones_like(feature)], dim=-1)
    solution = torch.linalg.lstsq(design[train], y[train].unsqueeze(-1)).solution
    return (design[heldout] @ solution).squeeze(-1)


def _token_means(token_ids: Tensor, y: Tensor, train: Tensor) -> Float[Tensor, " n"]:
    """Each row's token scored by its mean ``y`` over the training rows, shrunk toward the training mean."""
    sums, counts, inverse = per_token_totals(token_ids, y, train)
    return ((sums + TOKEN_PRIOR_ROWS * y[train].mean()) / (counts + TOKEN_PRIOR_ROWS))[inverse]


def format_delta_table(result: DeltaRegression, layer_labels: Sequence[str]) -> str:
    """One row per layer: held-out R² of ``prob_delta`` [95% CI], CV R², alpha, and R² minus the best baseline's."""
    versus = result.versus_best_baseline
    rows = [
        [label, f"{result.r2[k]:+.3f} [{result.r2_low[k]:+.2f}, {result.r2_high[k]:+.2f}]", f"{result.cv_r2[k]:+.3f}",
         f"{result.alpha[k]:g}", f"{versus['value'][k]:+.3f} [{versus['low'][k]:+.2f}, {versus['high'][k]:+.2f}]"]
        for k, label in enumerate(layer_labels)
    ]  # fmt: skip
    notes = ["<- best (CV)" if k == result.best_slot else "" for k in range(len(rows))]
    baselines = ", ".join(f"{name} {value:+.3f} [{low:+.2f}, {high:+.2f}]" for name, (value, low, high) in result.baseline_r2.items())
    header = ["layer", "R² [95% CI]", "CV R²", "alpha", f"R² - {versus['baseline']} [95% CI]"]
    caption = (
        f"Ridge regression of prob_delta on the pivotal rows ({result.n_train} training, {result.n_heldout} held-out); "
        f"baselines' held-out R²: {baselines}"
    )
    return f"{caption}\n{format_table(header, rows, align='lrrrr', notes=notes)}"
