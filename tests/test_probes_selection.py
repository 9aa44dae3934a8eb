"""Model selection: grouped splits and folds, and cross-validated fits equal to scikit-learn pipelines fitted inside
each fold (the standardisation too), nested when the L2 is chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from lens_pivotal.probes import ProbeSettings, train_probes
from lens_pivotal.probes.selection import choose_l2, group_folds, group_split, heldout_split, out_of_fold_logits
from conftest import sklearn_group_folds

GRID = (1e-2, 1e-1, 1.0)  # three values: the L2 path never stops early, so the reference may try every one


def test_group_split_keeps_groups_whole():
    groups = [f"q{i % 13}" for i in range(200)]
    train, test = group_split(groups, test_fraction=0.25, seed=3)
    assert sorted([*train, *test]) == list(range(200))
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert len({groups[i] for i in test}) == 4
    assert (train == group_split(groups, test_fraction=0.25, seed=3)[0]).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: group_split(["a", "a"]), "at least 2 groups"),
        (lambda: group_split(["a", "b"], test_fraction=1.0), "test_fraction"),
        (lambda: heldout_split(["a", "b"], []), "heldout_groups is empty"),
        (lambda: heldout_split(["a", "b"], ["c"]), "not in groups"),
        (lambda: heldout_split(["a", "b"], ["a", "b"]), "at least one group for training"),
    ],
)
def test_bad_splits_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_group_folds_keep_groups_whole():
    groups = [f"g{i % 11}" for i in range(100)]
    folds = group_folds(groups, 5, seed=2)
    assert set(folds.tolist()) == set(range(5))
    for group in set(groups):
        assert len({int(folds[i]) for i, g in enumerate(groups) if g == group}) == 1
    assert int(group_folds(["a", "b", "a"], 5).max()) == 1


def test_stratified_group_folds_are_scikit_learns_and_each_holds_both_classes():
    groups = [f"g{i // 4}" for i in range(80)]  # 20 groups of 4 rows; positives only in 6 groups
    labels = [int(i // 4 in (0, 1, 2, 3, 4, 5)) for i in range(80)]
    folds = group_folds(groups, 5, seed=1, labels=labels).numpy()
    expected = sklearn_group_folds(groups, labels, 5, seed=1)
    assert {tuple(np.flatnonzero(folds == f)) for f in range(5)} == {tuple(np.flatnonzero(expected == f)) for f in range(5)}
    assert all(0 < sum(labels[i] for i in np.flatnonzero(folds == f)) for f in range(5))


def uneven(n_layers=2, n_rows=240, d_model=10, seed=0):
    """Rows of 30 problems whose features' spread differs from problem to problem (so each fold's standardisation
    differs from the whole set's), with a label carried weakly by two features."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n_rows, generator=generator) < 0.4).double()
    groups = [f"q{i // 8}" for i in range(n_rows)]
    spread = torch.rand(30, 1, d_model, generator=generator, dtype=torch.float64).repeat_interleave(8, 0) * 20 + 0.5
    acts = torch.randn(n_layers, n_rows, d_model, generator=generator, dtype=torch.float64) * spread.transpose(0, 1) + 3
    acts[:, :, :2] += (2 * labels - 1)[:, None] * torch.tensor([3.0, 1.5], dtype=torch.float64)
    return acts, labels, groups


def scaler_then_logistic(x: np.ndarray, y: np.ndarray, l2: float, scaler: StandardScaler | None = None):
    """scikit-learn's model of one fold: standardise (fitted on these rows, or ``scaler``), then the balanced,
    L2-penalised logistic regression the probes solve (C = 1 / (l2 * sum of weights))."""
    weights = compute_sample_weight("balanced", y)
    regression = LogisticRegression(C=1 / (l2 * weights.sum()), tol=1e-10, max_iter=10_000)
    if scaler is not None:
        return regression.fit(scaler.transform(x), y, sample_weight=weights), scaler
    pipeline = make_pipeline(StandardScaler(), regression)
    return pipeline.fit(x, y, logisticregression__sample_weight=weights), None


def reference_out_of_fold(x: np.ndarray, y: np.ndarray, groups: list[str], l2: float | None, settings: ProbeSettings,
                          global_scaler: bool = False) -> np.ndarray:
    """Out-of-fold logits from a hand-written loop: each fold's pipeline fitted on the other folds; with ``l2=None``
    its L2 is the grid value with the lowest mean balanced log loss over folds of those rows (nested)."""
    outer = sklearn_group_folds(groups, y, settings.cv_folds, settings.seed)
    scaler = StandardScaler().fit(x) if global_scaler else None
    logits = np.zeros(len(y))
    for fold in np.unique(outer):
        train = outer != fold
        chosen = l2 if l2 is not None else inner_choice(x[train], y[train], [g for g, t in zip(groups, train) if t], settings)
        model, fitted_scaler = scaler_then_logistic(x[train], y[train], chosen, scaler)
        rows = x[~train] if fitted_scaler is None else fitted_scaler.transform(x[~train])
        logits[~train] = model.decision_function(rows)
    return logits


def inner_choice(x: np.ndarray, y: np.ndarray, groups: list[str], settings: ProbeSettings) -> float:
    inner = sklearn_group_folds(groups, y, settings.cv_folds, settings.seed)
    losses = {}
    for l2 in settings.l2_grid:
        per_fold = []
        for fold in np.unique(inner):
            fit = inner != fold
            model, _ = scaler_then_logistic(x[fit], y[fit], l2)
            check = compute_sample_weight("balanced", y[~fit])
            per_fold.append(log_loss(y[~fit], model.predict_proba(x[~fit])[:, 1], sample_weight=check))
        losses[l2] = np.mean(per_fold)
    return min(losses, key=losses.get)


def test_out_of_fold_logits_standardise_inside_each_fold_as_a_scikit_learn_pipeline():
    acts, labels, groups = uneven()
    settings = ProbeSettings(l2=0.1, l2_grid=GRID)
    ours = out_of_fold_logits(acts, labels, groups, settings, l2=torch.full((2,), 0.1, dtype=torch.float64))
    for layer in range(2):
        expected = reference_out_of_fold(acts[layer].numpy(), labels.numpy(), groups, 0.1, settings)
        leaky = reference_out_of_fold(acts[layer].numpy(), labels.numpy(), groups, 0.1, settings, global_scaler=True)
        assert np.abs(ours[layer].numpy() - expected).max() < 2e-3
        assert np.abs(leaky - expected).max() > 0.05, "the data must tell a fold's standardisation from the whole set's"


def test_nested_out_of_fold_logits_choose_each_folds_l2_inside_it():
    acts, labels, groups = uneven(seed=1)
    settings = ProbeSettings(l2_grid=GRID)
    ours = out_of_fold_logits(acts, labels, groups, settings)
    for layer in range(2):
        expected = reference_out_of_fold(acts[layer].numpy(), labels.numpy(), groups, None, settings)
        assert np.abs(ours[layer].numpy() - expected).max() < 2e-3


def test_choose_l2_is_the_grid_value_with_the_lowest_mean_fold_loss():
    acts, labels, groups = uneven(seed=2)
    settings = ProbeSettings(l2_grid=GRID)
    chosen, table = choose_l2(acts, labels, groups, settings)
    for layer in range(2):
        assert float(chosen[layer]) == inner_choice(acts[layer].numpy(), labels.numpy(), groups, settings)
    assert table.shape == (2, 3) and torch.isfinite(table).all()


def test_train_probes_reports_the_nested_cross_validated_auroc_on_the_training_problems():
    acts, labels, groups = uneven(seed=3)
    settings = ProbeSettings(l2_grid=GRID, n_bootstrap=0, n_permutations=0)
    probes = train_probes(acts.float(), labels, groups=groups, settings=settings)
    train, _ = group_split(groups, test_fraction=settings.val_fraction, seed=settings.seed)
    train_groups = [groups[i] for i in train]
    for layer in range(2):
        x = probes.standardize(acts[layer : layer + 1, train].float())[0].numpy()
        expected = reference_out_of_fold(x, labels[train].numpy(), train_groups, None, settings)
        assert probes.config.cv_auroc[layer] == pytest.approx(roc_auc_score(labels[train].numpy(), expected), abs=2e-3)


def test_nested_cross_validation_needs_two_groups_left_in_every_fold():
    acts, labels, groups = uneven()
    two = ["a" if group < "q2" else "b" for group in groups]
    assert out_of_fold_logits(acts, labels, two, ProbeSettings(l2_grid=GRID)) is None
    assert out_of_fold_logits(acts, labels, two, ProbeSettings(l2=0.1), l2=torch.full((2,), 0.1)) is not None


def test_each_layer_leaves_the_l2_path_once_its_loss_has_risen_twice_past_its_minimum():
    acts, labels, groups = uneven(seed=4)
    grid = ProbeSettings().l2_grid
    chosen, table = choose_l2(acts, labels, groups, ProbeSettings())
    for layer in range(2):
        finite = torch.isfinite(table[layer])
        n_evaluated = int(finite.sum())
        assert finite.tolist() == [False] * (len(grid) - n_evaluated) + [True] * n_evaluated  # from the strongest
        best = int(torch.where(finite, table[layer], torch.inf).argmin())
        assert float(chosen[layer]) == grid[best]
        weakest = len(grid) - n_evaluated
        assert n_evaluated == len(grid) or best - weakest == 2, "stopped two steps past the minimum, not before"
    assert not torch.isfinite(table).all(), "some layer left the path before its end"
