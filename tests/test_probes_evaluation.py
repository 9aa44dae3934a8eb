"""train_probes and evaluate_probes: the planted layer is found, parity with scikit-learn, the best layer chosen by
cross-validation on the training problems, the control task and the permutation null, a gate's precision on whole
texts (against a plain Hugging Face model), and bad inputs named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM

import lens_pivotal as lp
from lens_pivotal.probes import (
    ADAM_PROBE_SETTINGS,
    LayerProbes,
    ProbeConfig,
    ProbeSettings,
    evaluate_probes,
    gate_precision,
    group_split,
    train_probes,
)
from lens_pivotal.testing import tiny_qwen_dir
from conftest import hf_resid_states, sklearn_group_folds
from test_probes_layer_probes import PLANTED, fitted, planted  # noqa: F401 (fitted is a fixture)


def test_finds_the_planted_layer_and_the_control_is_chance(fitted):
    probes, _ = fitted
    auroc = probes.metrics.values["auroc"]
    assert probes.best_layer == PLANTED and auroc[PLANTED] > 0.95
    others = [layer for layer in range(5) if layer != PLANTED]
    assert torch.all((auroc[others] - 0.5).abs() < 0.2)
    assert probes.permutation_p[PLANTED] == pytest.approx(1 / 20) and probes.permutation_p[others].min() > 1 / 20
    assert probes.metrics.low["auroc"][PLANTED] > 0.9 and probes.config.control_task_auroc is None
    with pytest.raises(RuntimeError, match="pass control_types="):
        probes.selectivity
    assert probes.config.l2[PLANTED] in ProbeSettings().l2_grid and len(probes.config.cv_loss) == 5


def test_seed_a_adam_settings_also_find_it():
    acts, labels, groups = planted(strength=3.0)
    probes = train_probes(acts, labels, groups=groups, settings=dataclasses.replace(ADAM_PROBE_SETTINGS, n_bootstrap=0))
    assert probes.best_layer == PLANTED and probes.metrics.values["auroc"][PLANTED] > 0.95
    assert probes.config.settings.solver == "adam" and probes.config.cv_loss is None


def test_matches_sklearn_logistic_regression_per_layer():
    acts, labels, groups = planted(strength=1.0)
    l2 = 1e-2
    settings = ProbeSettings(l2=l2, standardize=False, class_weight=None, n_bootstrap=0)
    probes = train_probes(acts, labels, groups=groups, settings=settings)
    train, heldout = group_split(groups, test_fraction=0.2, seed=0)
    ours = probes.predict_proba(acts)
    for layer in range(acts.shape[0]):
        reference = LogisticRegression(C=1 / (l2 * len(train)), tol=1e-10, max_iter=10_000)
        reference.fit(acts[layer, train].numpy(), labels[train].numpy())
        expected = reference.predict_proba(acts[layer].numpy())[:, 1]
        assert np.abs(ours[layer].numpy() - expected).max() < 2e-3
    heldout_auroc = probes.score(acts[:, heldout], labels[heldout])
    assert torch.allclose(heldout_auroc, probes.metrics.values["auroc"], atol=1e-6)


def test_best_layer_is_chosen_by_grouped_cross_validation_on_the_training_problems():
    acts, labels, groups = planted(strength=1.0)
    l2 = 1e-2
    settings = ProbeSettings(l2=l2, standardize=False, class_weight=None, n_bootstrap=0)
    train, heldout = group_split(groups, test_fraction=0.2, seed=0)
    # Layer 0 carries the label on the training problems only; the held-out AUROC favours layer PLANTED.
    acts[0, train, 0] += 3 * labels[train]
    probes = train_probes(acts, labels, groups=groups, settings=settings)
    train_groups = [groups[i] for i in train]
    folds = sklearn_group_folds(train_groups, labels[train].numpy(), settings.cv_folds, settings.seed)
    for layer in range(acts.shape[0]):
        out_of_fold = np.zeros(len(train))
        for fold in np.unique(folds):
            fit = folds != fold
            reference = LogisticRegression(C=1 / (l2 * fit.sum()), tol=1e-10, max_iter=10_000)
            reference.fit(acts[layer, train][fit].numpy(), labels[train][fit].numpy())
            out_of_fold[~fit] = reference.decision_function(acts[layer, train][~fit].numpy())
        expected = roc_auc_score(labels[train].numpy(), out_of_fold)
        assert probes.config.cv_auroc[layer] == pytest.approx(expected, abs=2e-3)
    assert probes.best_layer == 0 and probes.best_heldout_layer == PLANTED
    assert probes.metrics.values["auroc"][0] < probes.metrics.values["auroc"][PLANTED]


def test_without_two_training_problems_the_best_layer_is_the_optimistic_one():
    acts, labels, _ = planted(n_rows=48)
    groups = ["a"] * 40 + ["b"] * 8
    with pytest.warns(UserWarning, match="too few training problems"):
        probes = train_probes(acts, labels, groups=groups, settings=ProbeSettings(l2=1.0, val_fraction=0.5, n_bootstrap=0))
    assert probes.config.cv_auroc is None and probes.best_layer == probes.best_heldout_layer


def test_no_heldout_group_was_trained_on(fitted):
    probes, (_, _, groups) = fitted
    heldout = set(probes.config.heldout_groups)
    assert probes.config.n_heldout == sum(group in heldout for group in groups)
    assert probes.config.n_train + probes.config.n_heldout == len(groups)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, y, g: (a[0], y, g), r"\[n_layers, n_rows, d_model\]"),
        (lambda a, y, g: (a, y[:-1], g), "labels has 479 entries but acts has 480 rows"),
        (lambda a, y, g: (a, y * 2, g), "labels must be 0 or 1; row"),
        (lambda a, y, g: (a, torch.ones_like(y), g), "single class"),
        (lambda a, y, g: (a, y, g[:-1]), "one group per row"),
        (lambda a, y, g: (a, y, ["only"] * len(y)), "at least 2 groups"),
    ],
)
def test_bad_training_input(change, message):
    changed_acts, changed_labels, changed_groups = change(*planted(n_rows=480))
    with pytest.raises(ValueError, match=message):
        train_probes(changed_acts, changed_labels, groups=changed_groups, settings=ProbeSettings(n_bootstrap=0))


def test_fit_trains_on_every_row_and_evaluate_probes_scores_like_sklearn(fitted):
    _, (acts, labels, groups) = fitted
    settings = ProbeSettings(l2=1.0, standardize=False, class_weight=None, n_bootstrap=0)
    probes = LayerProbes(ProbeConfig("unknown", 48, 5, [f"blocks.{i}.hook_resid_post" for i in range(5)], settings))
    probes.fit(acts, labels, groups)
    assert probes.config.n_train == len(labels)
    with pytest.raises(RuntimeError, match="no held-out evaluation"):
        probes.best_layer
    reference = LogisticRegression(C=1 / (1.0 * len(labels)), tol=1e-10, max_iter=10_000)
    x = acts[PLANTED].numpy()
    reference.fit(x, labels.numpy())
    assert np.abs(probes.predict_proba(acts)[PLANTED].numpy() - reference.predict_proba(x)[:, 1]).max() < 2e-3
    metrics = evaluate_probes(probes, acts, labels, groups, n_bootstrap=0)
    expected = roc_auc_score(labels.numpy(), probes.predict_proba(acts)[PLANTED].numpy())
    assert abs(float(metrics.values["auroc"][PLANTED]) - expected) < 1e-6


def test_bad_heldout_groups_are_named():
    acts, labels, groups = planted(n_rows=48)
    settings = ProbeSettings(l2=1.0, n_bootstrap=0)
    with pytest.raises(ValueError, match="heldout_groups is empty"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=[])
    with pytest.raises(ValueError, match="heldout_groups names 1 groups not in groups, e.g. 'nope'"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=["q0", "nope"])
    with pytest.raises(ValueError, match="must leave at least one group for training"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=set(groups))


def typed(label_of_type: bool, n_types: int = 150, n_rows: int = 600, d_model: int = 48, seed: int = 0):
    """Residuals that carry the current token's type (a random embedding per type) plus noise; the label is a random
    function of the type, or planted along a direction the type does not predict."""
    generator = torch.Generator().manual_seed(seed)
    types = torch.randint(0, n_types, (n_rows,), generator=generator)
    acts = torch.randn(n_types, d_model, generator=generator)[types] + 0.5 * torch.randn(n_rows, d_model, generator=generator)
    if label_of_type:
        labels = (torch.rand(n_types, generator=generator) < 0.5).float()[types]
    else:
        labels = (torch.rand(n_rows, generator=generator) < 0.5).float()
        acts += 2.0 * (2 * labels - 1)[:, None] * torch.nn.functional.normalize(torch.randn(d_model, generator=generator), dim=0)
    return acts[None], labels, [f"q{i // 6}" for i in range(n_rows)], types.tolist()


@pytest.mark.parametrize("label_of_type", [True, False])
def test_the_control_task_is_what_sklearn_learns_from_random_labels_of_the_token_types(label_of_type):
    from lens_pivotal.probes.controls import control_task_labels

    acts, labels, groups, types = typed(label_of_type)
    settings = ProbeSettings(l2=1e-2, standardize=False, class_weight=None, n_bootstrap=0, n_permutations=9)
    probes = train_probes(acts, labels, groups=groups, settings=settings, control_types=types)
    train, heldout = group_split(groups, test_fraction=settings.val_fraction, seed=settings.seed)
    control = control_task_labels(types, float(labels[train].mean()), settings.seed, both_classes_in=train).numpy()
    assert all(len({control[i] for i in range(len(types)) if types[i] == t}) == 1 for t in set(types))  # one per type
    x = acts[0].numpy()
    reference = LogisticRegression(C=1 / (1e-2 * len(train)), tol=1e-10, max_iter=10_000).fit(x[train], control[train])
    expected = roc_auc_score(control[heldout], reference.decision_function(x[heldout]))
    assert probes.config.control_task_auroc[0] == pytest.approx(expected, abs=2e-3)
    selectivity = float(probes.selectivity[0])
    if label_of_type:  # the task is itself a random labelling of the types: nothing beyond memorising them
        assert abs(selectivity) < 0.1
    else:  # the label lives along a direction the type does not give
        assert selectivity > 0.15 and probes.permutation_p[0] == pytest.approx(1 / 10)


def test_gate_precision_counts_every_answer_state_of_heldout_solutions(tiny_qwen3_model, qwen3_tok, synthetic_rows):
    model = tiny_qwen3_model
    examples = lp.probe_examples(model, synthetic_rows, negatives_per_positive=2)
    acts = examples.cache(model, progress=False)
    probes = lp.train_probes(acts, examples.labels, groups=examples.groups, model=model,
                             settings=lp.probes.ProbeSettings(n_bootstrap=10, n_permutations=0))  # fmt: skip
    layer = probes.best_layer
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    direction, offset = probes.residual_direction(layer)
    scores, pivotal = [], []
    heldout = [row for row in synthetic_rows if f"{row.dataset_id}#{row.dataset_item_id}" in probes.config.heldout_groups]
    for solution in sorted({row.solution for row in heldout}):
        ids = qwen3_tok(solution, add_special_tokens=False)["input_ids"]
        answer = len(qwen3_tok(solution[: solution.index("?") + 1], add_special_tokens=False)["input_ids"])
        state = hf_resid_states(reference, torch.tensor([ids]))[layer + 1][0]
        scores += torch.sigmoid(state @ direction + offset)[answer - 1 : len(ids) - 1].tolist()
        pivots = {len(qwen3_tok(row.pivot_context, add_special_tokens=False)["input_ids"]) - 1 for row in heldout if row.solution == solution}
        pivotal += [position in pivots for position in range(answer - 1, len(ids) - 1)]
    scores, pivotal = np.array(scores), np.array(pivotal)
    for threshold, row in zip((0.5, 0.9), gate_precision(probes, model, examples, [0.5, 0.9])):
        fired = scores >= threshold
        assert row["fired"] == pytest.approx(fired.mean(), abs=1e-9) and row["pivotal_share"] == pytest.approx(pivotal.mean())
        expected = (fired & pivotal).sum() / fired.sum() if fired.any() else float("nan")
        assert row["precision"] == pytest.approx(expected, nan_ok=True)
        assert row["recall"] == pytest.approx((fired & pivotal).sum() / pivotal.sum())
