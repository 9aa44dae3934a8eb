"""The LayerProbes estimator: fit as scikit-learn does, save/load, one layer at a time, blocks named consistently,
and every bad input's error (train_probes' evaluation is in test_probes_evaluation)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import lens_pivotal.probes.layer_probes as layer_probes_module
from lens_pivotal.probes import LayerProbes, ProbeRecorder, ProbeSettings, train_probes

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


def test_probes_saved_in_the_first_flat_format_still_load(fitted, tmp_path):
    probes, (acts, _, _) = fitted
    probes.save(tmp_path / "probes")
    nested = json.loads((tmp_path / "probes" / "config.json").read_text())
    flat = {**nested["config"], **nested["results"], "format": "lens_pivotal.layer_probes/1"}
    (tmp_path / "probes" / "config.json").write_text(json.dumps(flat))
    loaded = LayerProbes.load(tmp_path / "probes")
    assert loaded.config == probes.config and torch.equal(loaded.predict_proba(acts), probes.predict_proba(acts))


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


