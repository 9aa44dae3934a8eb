"""Steering vectors: mean differences by hand from the PTS rows' own prob_delta, probe directions that reproduce the
probe's logits, the sign split, save/load with the model check, and every bad input's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lens_pivotal as lp
from lens_pivotal.probes import ProbeSettings
from lens_pivotal.steering import SteeringVectors


@pytest.fixture(scope="module")
def cached(tiny_qwen3_model, synthetic_rows):
    examples = lp.probe_examples(tiny_qwen3_model, synthetic_rows, negatives_per_positive=2)
    return examples, examples.cache(tiny_qwen3_model, progress=False)


@pytest.mark.parametrize("sign", ["positive", "negative", "any"])
def test_mean_difference_by_hand_from_the_rows(tiny_qwen3_model, synthetic_rows, cached, sign):
    examples, acts = cached
    vectors = lp.steering_vectors(acts, examples, sign=sign, model=tiny_qwen3_model)
    deltas = np.array([0.0 if row is None else synthetic_rows[row].prob_delta for row in examples.source_rows])
    labels = np.array(examples.labels) == 1
    pivotal = labels & {"positive": deltas > 0, "negative": deltas < 0, "any": np.ones_like(labels)}[sign]
    expected = acts.numpy()[:, pivotal].mean(axis=1) - acts.numpy()[:, ~labels].mean(axis=1)
    assert np.allclose(vectors.vectors.numpy(), expected, atol=1e-5)
    assert 0 < vectors.config.n_pivotal < labels.sum() or sign == "any"
    assert vectors.config.hook_names == [f"blocks.{block}.hook_resid_post" for block in range(3)]
    norms = np.linalg.norm(acts.numpy(), axis=-1).mean(axis=1)
    assert np.allclose(vectors.config.residual_norm, norms, rtol=1e-5)


def test_probe_direction_reproduces_the_probe_logits(tiny_qwen3_model, cached):
    examples, acts = cached
    probes = lp.train_probes(acts, examples.labels, groups=examples.groups, model=tiny_qwen3_model,
                             settings=ProbeSettings(l2=1.0, n_bootstrap=0))
    vectors = lp.steering_vectors(acts, examples, method="probe", probes=probes, model=tiny_qwen3_model)
    logits = probes.decision_function(acts)
    for layer in range(3):
        projected = acts[layer] @ vectors.vectors[layer]
        torch.testing.assert_close(projected - projected[0], logits[layer] - logits[layer, 0], atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="use sign='any'"):
        lp.steering_vectors(acts, examples, method="probe", probes=probes, sign="positive")


def test_save_load_round_trip_and_model_check(tiny_qwen3_model, cached, tmp_path):
    examples, acts = cached
    vectors = lp.steering_vectors(acts, examples, model=tiny_qwen3_model)
    loaded = SteeringVectors.load(vectors.save(tmp_path / "vectors"), model=tiny_qwen3_model)
    assert torch.equal(loaded.vectors, vectors.vectors) and loaded.config == vectors.config
    assert torch.allclose(loaded.unit(-1).norm(), torch.tensor(1.0))
    from lens_pivotal.testing import tiny_qwen_dir

    other = lp.load_model(tiny_qwen_dir("qwen3", n_layers=2), device="cpu")
    with pytest.raises(ValueError, match=r"these vectors were made from .* has d_model 64 and 2 layers"):
        SteeringVectors.load(tmp_path / "vectors", model=other)
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        SteeringVectors.load(tmp_path)


def test_bad_inputs_are_named(cached):
    examples, acts = cached
    with pytest.raises(ValueError, match="method must be one of"):
        lp.steering_vectors(acts, examples, method="pca")
    with pytest.raises(ValueError, match="sign must be one of"):
        lp.steering_vectors(acts, examples, sign="up")
    with pytest.raises(ValueError, match=rf"acts must be \[n_layers, {len(examples)} examples, d_model\]"):
        lp.steering_vectors(acts[:, :5], examples)
    with pytest.raises(ValueError, match="needs probes="):
        lp.steering_vectors(acts, examples, method="probe")
    with pytest.raises(IndexError, match="block 7 is out of range: the model has 3 blocks"):
        lp.steering_vectors(acts, examples).unit(7)


def test_layers_name_blocks_with_or_without_a_model_and_the_hook_steers_that_block(tiny_qwen3_model, cached):
    examples, acts = cached
    labels = torch.tensor(examples.labels, dtype=torch.bool)
    for model in (None, tiny_qwen3_model):
        vectors = lp.steering_vectors(acts[[0, 2]], examples, sign="any", layers=[0, 2], model=model)
        assert vectors.config.hook_names == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
        hook = lp.steering_hook(vectors, 0.5, layer=2)
        by_hand = acts[2][labels].mean(0) - acts[2][~labels].mean(0)  # block 2's mean difference, written out
        expected = 0.5 * acts[2].norm(dim=-1).mean() * by_hand / by_hand.norm()
        assert hook.hook_name == "blocks.2.hook_resid_post"
        torch.testing.assert_close(hook.addition, expected, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match=r"block 1 is not among the layers these vectors read \(block 0, block 2\)"):
            lp.steering_hook(vectors, 0.5, layer=1)
    assert lp.steering_hook(torch.ones(64), 1.0, layer="blocks.0.hook_resid_pre", absolute=True).hook_name == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="non-negative block or a hook name"):
        lp.steering_hook(torch.ones(64), 1.0, layer=-1, absolute=True)
