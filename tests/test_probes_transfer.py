"""Transfer between problem families: every cell trains on one set's training problems and scores another's held-out
problems, checked against scikit-learn fitted on exactly those rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lens_pivotal.probes import ProbeSettings, group_split, probe_examples
from lens_pivotal.probes.transfer import format_transfer_table, transfer_matrix
from tests.conftest import synthetic_pts_rows

L2 = 1e-1
SETTINGS = ProbeSettings(l2=L2, standardize=False, class_weight=None, n_bootstrap=50)


@pytest.fixture(scope="module")
def families(qwen3_tok):
    first = synthetic_pts_rows(qwen3_tok, n_problems=10)
    second = [dataclasses.replace(row, dataset_id="other") for row in synthetic_pts_rows(qwen3_tok, n_problems=10)]
    return {"first": first, "second": second}


@pytest.fixture(scope="module")
def results(tiny_qwen3_model, families):
    return transfer_matrix(tiny_qwen3_model, families, settings=SETTINGS)


def test_every_training_set_meets_every_evaluation_set(results):
    cells = [(result.train, result.evaluate) for result in results]
    assert cells == [(train, evaluate) for train in ("first", "second", "all") for evaluate in ("first", "second", "all")]
    by_cell = {(result.train, result.evaluate): result for result in results}
    assert by_cell["first", "second"].n_train_problems == 8 and by_cell["first", "second"].n_eval_problems == 2
    assert by_cell["all", "all"].n_train_problems == 16 and by_cell["all", "all"].n_eval_problems == 4
    for result in results:
        assert result.auroc_low <= result.auroc <= result.auroc_high
        assert result.minus_baseline == pytest.approx(result.auroc - result.baseline_auroc, abs=1e-6)
    table = format_transfer_table(results)
    assert table.count("\n") == 2 + len(results) - 1 and "probe - baseline" in table


def test_a_cross_family_cell_equals_sklearn_trained_on_the_other_family(tiny_qwen3_model, families, results):
    cell = next(result for result in results if (result.train, result.evaluate) == ("first", "second"))
    layer = int(cell.layer)
    split = {}
    for name, rows in families.items():
        examples = probe_examples(tiny_qwen3_model, rows)
        acts = examples.cache(tiny_qwen3_model, progress=False)[layer].numpy()
        train, heldout = group_split(examples.groups, test_fraction=SETTINGS.val_fraction, seed=SETTINGS.seed)
        split[name] = (acts, np.array(examples.labels), train, heldout)
    acts, labels, train, _ = split["first"]
    reference = LogisticRegression(C=1 / (L2 * len(train)), tol=1e-10, max_iter=10_000).fit(acts[train], labels[train])
    acts, labels, _, heldout = split["second"]
    expected = roc_auc_score(labels[heldout], reference.decision_function(acts[heldout]))
    assert cell.auroc == pytest.approx(expected, abs=2e-3)


def test_one_dataset_is_not_a_matrix(tiny_qwen3_model, families):
    with pytest.raises(ValueError, match="at least 2 datasets"):
        transfer_matrix(tiny_qwen3_model, {"first": families["first"]})


def test_families_that_share_problem_names_never_trade_rows(tiny_qwen3_model, qwen3_tok):
    first, clash = synthetic_pts_rows(qwen3_tok, n_problems=10), synthetic_pts_rows(qwen3_tok, n_problems=14)
    results = transfer_matrix(tiny_qwen3_model, {"first": first, "clash": clash}, settings=SETTINGS)
    cell = next(result for result in results if (result.train, result.evaluate) == ("first", "clash"))
    layer = int(cell.layer)
    split = {}
    for name, rows in (("first", first), ("clash", clash)):
        examples = probe_examples(tiny_qwen3_model, rows)
        acts = examples.cache(tiny_qwen3_model, progress=False)[layer].numpy()
        train, heldout = group_split(examples.groups, test_fraction=SETTINGS.val_fraction, seed=SETTINGS.seed)
        split[name] = (acts, np.array(examples.labels), train, heldout, np.array(examples.groups))
    acts, labels, train, _, groups = split["first"]
    assert cell.n_train_problems == len(set(groups[train]))
    reference = LogisticRegression(C=1 / (L2 * len(train)), tol=1e-10, max_iter=10_000).fit(acts[train], labels[train])
    acts, labels, _, heldout, groups = split["clash"]
    assert cell.n_eval_problems == len(set(groups[heldout]))
    expected = roc_auc_score(labels[heldout], reference.decision_function(acts[heldout]))
    assert cell.auroc == pytest.approx(expected, abs=2e-3)
    with pytest.raises(ValueError, match="'all' names the union"):
        transfer_matrix(tiny_qwen3_model, {"first": first, "all": clash})
