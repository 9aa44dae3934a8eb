"""Per-layer probes: the planted layer is found, parity with scikit-learn, save/load, and every bad input's error."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import lens_pivotal.probes.layer_probes as layer_probes_module
from lens_pivotal.probes import (
    ProbeRecorder,
    ADAM_PROBE_SETTINGS,
    LayerProbes,
    ProbeConfig,
    ProbeSettings,
    evaluate_probes,
    group_split,
    train_probes,
)
from conftest import sklearn_group_folds

PLANTED = 3


def planted(n_layers=5, n_rows=480, d_model=48, strength=3.0, seed=0):
    """Activations where only layer PLANTED carries the label along one direction; 8 rows per group."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n_rows, generator=generator) < 0.5).float()
    acts = torch.randn(n_layers, n_rows, d_model, generator=generator) * 2 + 0.5
    direction = torch.nn.functional.normalize(torch.randn(d_model, generator=generator), dim=0)
    acts[PLANTED] += strength * (2 * labels - 1)[:, None] * direction
    return acts, labels, [f"q{i // 8}" for i in range(n_rows)]


@pytest.fixture(scope="module")
def fitted():
    acts, labels, groups = planted()
    return train_probes(acts, labels, groups=groups, settings=ProbeSettings(n_bootstrap=200)), (acts, labels, groups)


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


def test_save_load_round_trip_is_exact(fitted, tmp_path):
    probes, (acts, _, _) = fitted
    probes.save(tmp_path / "probes")
    loaded = LayerProbes.load(tmp_path / "probes")
    for name in ("weight", "bias", "mean", "scale"):
        assert torch.equal(getattr(loaded, name), getattr(probes, name))
    assert torch.equal(loaded.predict_proba(acts), probes.predict_proba(acts))
    assert loaded.config == probes.config and loaded.best_layer == PLANTED
    umask = os.umask(0)
    os.umask(umask)
    for name in ("", "config.json", "probes.safetensors"):  # as open() would make them, not private scratch files
        mode = (tmp_path / "probes" / name).stat().st_mode & 0o777
        assert mode == (0o777 if not name else 0o666) & ~umask
    saved = json.loads((tmp_path / "probes" / "config.json").read_text())
    assert saved["config"]["settings"]["solver"] == "lbfgs" and len(saved["config"]["hook_names"]) == 5
    assert {"metrics", "l2", "best_layer", "permutation_p"} <= set(saved["results"]) and "metrics" not in saved["config"]


def test_loading_onto_another_model_shape_is_an_error(fitted, tmp_path, tiny_qwen3_model):
    probes, _ = fitted
    probes.save(tmp_path / "probes")
    with pytest.raises(ValueError, match=r"d_model 48, 5 layers\).*has d_model 64 and 3 layers"):
        LayerProbes.load(tmp_path / "probes", model=tiny_qwen3_model)


def test_loading_onto_another_model_of_the_same_shape_warns(tmp_path, tiny_qwen3_model):
    acts, labels = torch.randn(3, 40, 64), torch.arange(40) % 2
    groups = [str(i // 4) for i in range(40)]
    probes = train_probes(acts, labels, groups=groups, model=tiny_qwen3_model, settings=ProbeSettings(l2=1.0, n_bootstrap=0))
    probes.save(tmp_path / "probes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerProbes.load(tmp_path / "probes", model=tiny_qwen3_model)
    config = json.loads((tmp_path / "probes" / "config.json").read_text())
    config["config"].update(model_name="Qwen/Qwen3-0.6B-Base", from_the_future=1)
    config["config"]["settings"]["new_knob"] = 2
    (tmp_path / "probes" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="made from 'Qwen/Qwen3-0.6B-Base', not from") as caught:
        loaded = LayerProbes.load(tmp_path / "probes", model=tiny_qwen3_model)
    ignored = [str(w.message) for w in caught if "ignoring keys" in str(w.message)]
    assert any("from_the_future" in m for m in ignored) and any("new_knob" in m for m in ignored)
    assert torch.equal(loaded.predict_proba(acts), probes.predict_proba(acts))


def test_a_failed_save_leaves_nothing(fitted, tmp_path, monkeypatch):
    probes, _ = fitted

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(layer_probes_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        probes.save(tmp_path / "probes")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(fitted, tmp_path):
    probes, _ = fitted
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        LayerProbes.load(tmp_path)
    probes.save(tmp_path / "probes")
    config = tmp_path / "probes" / "config.json"
    config.write_text(config.read_text().replace("lens_pivotal.layer_probes/2", "something/9"))
    with pytest.raises(ValueError, match="not a lens_pivotal probe config"):
        LayerProbes.load(tmp_path / "probes")


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


@pytest.mark.parametrize(
    "settings, message",
    [({"solver": "sgd"}, "solver"), ({"class_weight": "auto"}, "class_weight"), ({"l2": -1.0}, "non-negative"),
     ({"val_fraction": 0.0}, "val_fraction"), ({"cv_folds": 1}, "cv_folds"), ({"dtype": "float16"}, "dtype")],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        ProbeSettings(**settings)


def test_predicting_with_wrong_shapes_or_unfitted(fitted):
    probes, (acts, _, _) = fitted
    with pytest.raises(ValueError, match="acts has 4 layers of width 48; these probes read 5 layers"):
        probes.predict_proba(acts[:4])
    unfitted = LayerProbes(probes.config)
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.predict_proba(acts)


def test_load_refuses_weights_of_another_shape(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    probes, _ = fitted
    probes.save(tmp_path / "probes")
    weights = tmp_path / "probes" / "probes.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "weight": tensors["weight"][:, :10].contiguous()}, weights)
    with pytest.raises(ValueError, match=r"probes.safetensors: 'weight' should be \(5, 48\), found \(5, 10\)"):
        LayerProbes.load(tmp_path / "probes")


def test_fit_input_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"acts must be a \[n_layers, n_rows, d_model\] tensor, got <class 'list'>"):
        LayerProbes(train_probes(*planted()[:2], settings=ProbeSettings(l2=1.0, n_bootstrap=0)).config).fit([[1.0]], [1])
    acts, labels, _ = planted(n_rows=40)
    two_groups = ["a"] * 20 + ["b"] * 20  # one held out, one left to train: nothing to cross-validate
    with pytest.raises(ValueError, match="needs at least 2 training groups; pass l2="):
        train_probes(acts, labels, groups=two_groups, settings=ProbeSettings(n_bootstrap=0))


def test_len_getitem_and_to_give_one_layers_probe(fitted):
    probes, (acts, labels, _) = fitted
    assert len(probes) == probes.n_layers == 5
    last = probes[-1]
    assert len(last) == 1 and last.config.hook_names == probes.config.hook_names[-1:]
    assert last.config.l2 == probes.config.l2[-1:] and last.config.permutation_p == probes.config.permutation_p[-1:]
    assert last.metrics.values["auroc"].tolist() == probes.metrics.values["auroc"][-1:].tolist()
    torch.testing.assert_close(last.predict_proba(acts[-1:]), probes.predict_proba(acts)[-1:])
    with pytest.raises(IndexError, match="block 5 is out of range: the model has 5 blocks"):
        probes[5]
    assert [one.config.hook_names for one in probes] == [[name] for name in probes.config.hook_names]
    assert probes.to("cpu") is probes and probes.weight.device.type == "cpu"


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


def test_probes_saved_in_the_first_flat_format_still_load(fitted, tmp_path):
    probes, (acts, _, _) = fitted
    probes.save(tmp_path / "probes")
    nested = json.loads((tmp_path / "probes" / "config.json").read_text())
    flat = {**nested["config"], **nested["results"], "format": "lens_pivotal.layer_probes/1"}
    (tmp_path / "probes" / "config.json").write_text(json.dumps(flat))
    loaded = LayerProbes.load(tmp_path / "probes")
    assert loaded.config == probes.config and torch.equal(loaded.predict_proba(acts), probes.predict_proba(acts))


def test_settings_are_typed_and_checked():
    acts, labels, groups = planted()
    with pytest.raises(ValueError, match="solver must be one of"):
        ProbeSettings(solver="sgd")
    with pytest.raises(TypeError, match="epochs must be an int, got 1.5"):
        ProbeSettings(epochs=1.5)
    with pytest.raises(TypeError, match="l2_grid must be a tuple"):
        ProbeSettings(l2_grid=[1.0])
    with pytest.raises(TypeError, match="settings must be a ProbeSettings"):
        train_probes(acts, labels, groups=groups, settings={"l2": 1.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'l2'"):
        train_probes(acts, labels, groups=groups, l2=1.0)


def test_bad_heldout_groups_are_named():
    acts, labels, groups = planted(n_rows=48)
    settings = ProbeSettings(l2=1.0, n_bootstrap=0)
    with pytest.raises(ValueError, match="heldout_groups is empty"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=[])
    with pytest.raises(ValueError, match="heldout_groups names 1 groups not in groups, e.g. 'nope'"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=["q0", "nope"])
    with pytest.raises(ValueError, match="must leave at least one group for training"):
        train_probes(acts, labels, groups=groups, settings=settings, heldout_groups=set(groups))


def test_fit_forgets_the_earlier_evaluation_and_matches_sklearn_on_the_new_labels():
    acts, labels, groups = planted(seed=1)
    refit = train_probes(acts, labels, groups=groups, settings=ProbeSettings(l2=1.0, standardize=False, n_bootstrap=0))
    assert refit.best_layer == PLANTED
    other = (torch.rand(len(labels), generator=torch.Generator().manual_seed(5)) < 0.5).float()
    refit.fit(acts, other, groups)
    for result in ("metrics", "best_layer", "best_heldout_layer"):
        with pytest.raises(RuntimeError, match="no held-out evaluation"):
            getattr(refit, result)
    with pytest.raises(RuntimeError, match="no held-out evaluation"):
        ProbeRecorder(refit)
    assert refit.config.permutation_p is None and refit.config.baseline_metrics is None
    assert refit.config.n_train == len(labels) and refit.config.heldout_groups == []
    reference = LogisticRegression(C=1 / (1.0 * len(labels)), class_weight="balanced", tol=1e-10, max_iter=10_000)
    reference.fit(acts[0].numpy(), other.numpy())
    assert np.abs(refit.predict_proba(acts)[0].numpy() - reference.predict_proba(acts[0].numpy())[:, 1]).max() < 2e-3


def test_layer_means_the_block_without_a_model():
    acts, labels, groups = planted()
    acts = acts[[0, PLANTED]]  # the label lives in the second slot, block 9
    probes = train_probes(acts, labels, groups=groups, layers=[5, 9], settings=ProbeSettings(l2=1.0, n_bootstrap=0))
    assert probes.config.hook_names == ["blocks.5.hook_resid_post", "blocks.9.hook_resid_post"]
    assert probes.best_layer == 9 and probes.layers == [5, 9] and probes.slot(9) == 1
    assert probes.slot("blocks.9.hook_resid_post") == 1 and probes[9].config.hook_names == ["blocks.9.hook_resid_post"]
    weight, offset = probes.residual_direction(9)
    by_hand = acts[1] @ weight + offset  # the probe of block 9 reads the second slot, written out
    torch.testing.assert_close(by_hand, probes.decision_function(acts)[1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"block 1 is not among the layers these probes read \(block 5, block 9\)"):
        probes[1]
    with pytest.raises(ValueError, match="without model=, layers must be non-negative"):
        train_probes(acts, labels, groups=groups, layers=[5, -1])
    with pytest.raises(ValueError, match="acts has 2 layers but layers=\\[5\\]"):
        train_probes(acts, labels, groups=groups, layers=[5])


def test_layer_means_the_block_with_a_model_and_the_embeddings_are_named_by_their_hook(tiny_qwen3_model):
    acts, labels, groups = planted(d_model=64)
    acts = acts[:3]
    probes = train_probes(acts, labels, groups=groups, model=tiny_qwen3_model, layers=[2, 0], embeddings=True,
                          settings=ProbeSettings(l2=1.0, n_bootstrap=0))
    assert probes.layers == ["blocks.0.hook_resid_pre", 2, 0] and probes.slot(-1) == 1
    assert probes.slot("blocks.0.hook_resid_pre") == 0 and probes.slot(0) == 2


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
