"""Probe baselines: values against a plain Hugging Face model and hand-written counts, orientation on the training
problems, and a planted direction that beats them while a probe of noise does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM

import lens_pivotal as lp
from lens_pivotal.probes.baselines import BASELINE_L2, example_baselines, fit_baselines, token_log_odds
from lens_pivotal.testing import tiny_qwen_dir
from conftest import sklearn_group_folds


@pytest.fixture(scope="module")
def qwen3_examples(tiny_qwen3_model, synthetic_rows):
    return lp.probe_examples(tiny_qwen3_model, synthetic_rows, negatives_per_positive=2)


def test_values_equal_a_plain_hf_computation(tiny_qwen3_model, qwen3_examples):
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    examples = qwen3_examples
    baselines = example_baselines(tiny_qwen3_model, examples)
    for index in (0, 3, len(examples) - 1):
        ids = examples.token_ids[examples.text_index[index]]
        position = examples.positions[index]
        with torch.no_grad():
            probs = reference(torch.tensor([ids])).logits[0, position].double().softmax(-1)
        assert float(baselines["entropy"][index]) == pytest.approx(float(-(probs * probs.log()).sum()), abs=1e-4)
        assert float(baselines["top1_prob"][index]) == pytest.approx(float(probs.max()), abs=1e-5)
        query = examples.texts[index][: examples.texts[index].index("?") + 1]  # the synthetic answer follows it
        answer_start = len(tiny_qwen3_model.tokenizer(query, add_special_tokens=False)["input_ids"])
        assert float(baselines["position"][index]) == position + 1 - answer_start  # index of the predicted token
        assert int(baselines["token"][index]) == ids[position]
    with pytest.raises(ValueError, match=r"final_resid must be \[n_examples, d_model\]"):
        example_baselines(tiny_qwen3_model, examples, final_resid=torch.zeros(3, tiny_qwen3_model.cfg.d_model))
    acts = examples.cache(tiny_qwen3_model, progress=False)
    same_pass = example_baselines(tiny_qwen3_model, examples, final_resid=acts[-1])
    for name in ("entropy", "top1_prob"):
        torch.testing.assert_close(same_pass[name], baselines[name])


def test_token_log_odds_are_smoothed_training_counts():
    ids = torch.tensor([7, 7, 7, 9, 9, 11, 7, 11])
    labels = torch.tensor([1, 1, 0, 0, 0, 1, 1, 0])
    train = torch.tensor([0, 1, 2, 3, 4])  # rows 5-7 are held out: their labels never count
    odds = token_log_odds(ids, labels, train)
    assert float(odds[0]) == pytest.approx(math.log(3 / 2)) and float(odds[6]) == float(odds[0])
    assert float(odds[3]) == pytest.approx(math.log(1 / 3))
    assert float(odds[5]) == 0.0  # an id never seen in training is neutral


def test_orientation_is_learned_on_training_rows_only():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=generator) < 0.5).long()
    signal = labels.double() + 0.3 * torch.randn(400, generator=generator, dtype=torch.float64)
    train, heldout = torch.arange(300), torch.arange(300, 400)
    up, down = fit_baselines({"up": signal, "down": -signal}, labels, train)
    auroc = lp.probes.metrics.auroc
    ones = torch.ones(1, 100, dtype=torch.float64)
    assert float(auroc(up[heldout][None], labels[heldout].double(), ones)) > 0.95
    torch.testing.assert_close(up, down)  # the negated score is flipped back, from the training rows
    flipped_test = labels.clone()
    flipped_test[heldout] = 1 - flipped_test[heldout]  # test labels do not change the fit
    torch.testing.assert_close(fit_baselines({"up": signal}, flipped_test, train)[0], up)


def planted(n_problems: int = 40, per_problem: int = 10, d_model: int = 32, seed: int = 0):
    """Rows whose label shows in one residual direction, with entropy and top-1 baselines that carry weaker signals."""
    generator = torch.Generator().manual_seed(seed)
    n = n_problems * per_problem
    labels = (torch.rand(n, generator=generator) < 0.4).long()
    acts = torch.randn(2, n, d_model, generator=generator)
    acts[1, :, 0] += 2.5 * labels  # layer 1 holds the direction; layer 0 is pure noise
    baselines = {
        "entropy": labels + 1.5 * torch.randn(n, generator=generator),
        "top1_prob": -labels + 2.0 * torch.randn(n, generator=generator),
        "position": torch.rand(n, generator=generator),
        "token": torch.randint(0, 50, (n,), generator=generator),
    }
    groups = [f"p{index // per_problem}" for index in range(n)]
    return acts, labels, groups, baselines


def test_a_planted_direction_beats_the_baselines_and_noise_does_not():
    acts, labels, groups, baselines = planted()
    probes = lp.train_probes(acts, labels, groups=groups, baselines=baselines,
                             settings=lp.probes.ProbeSettings(n_bootstrap=300))
    versus = probes.versus_best_baseline
    assert versus["baseline"] == "entropy"
    assert versus["low"][1] > 0  # the planted layer beats the best baseline, interval above 0
    assert versus["high"][0] < 0  # the noise layer is worse than it
    metrics = probes.baseline_metrics
    assert set(metrics) == {"entropy", "top1_prob", "position", "token"}
    assert metrics["entropy"]["auroc_low"] <= metrics["entropy"]["auroc"] <= metrics["entropy"]["auroc_high"]
    assert abs(metrics["position"]["auroc"] - 0.5) < 0.15 and set(metrics["token"]) >= {"auprc", "f1", "f1_low"}


def sklearn_combined_auroc(features, y, train, heldout):
    """Held-out AUROC of scikit-learn's logistic regression on ``features`` standardised on the training rows."""
    features = (features - features[train].mean(0)) / features[train].std(0, ddof=1)
    combined = LogisticRegression(C=1 / (BASELINE_L2 * len(train)), tol=1e-10, max_iter=10_000)
    return roc_auc_score(y[heldout], combined.fit(features[train], y[train]).decision_function(features[heldout]))


def test_probe_plus_uncertainty_equals_stacked_sklearn_fits_and_adds_only_where_the_stream_does():
    acts, labels, groups, baselines = planted()
    settings = lp.probes.ProbeSettings(l2=1e-1, standardize=False, class_weight=None, n_bootstrap=300)
    probes = lp.train_probes(acts, labels, groups=groups, baselines=baselines, settings=settings)
    train, heldout = lp.probes.group_split(groups, test_fraction=0.2, seed=0)
    folds = sklearn_group_folds([groups[i] for i in train], labels[train].numpy(), settings.cv_folds, settings.seed)
    uncertainty, y = np.stack([baselines["entropy"].numpy(), baselines["top1_prob"].numpy()], axis=1), labels.numpy()
    combined = probes.with_uncertainty
    assert combined["features"] == ["entropy", "top1_prob"]
    assert combined["uncertainty_auroc"] == pytest.approx(sklearn_combined_auroc(uncertainty, y, train, heldout), abs=2e-3)
    for layer in range(2):
        x = acts[layer].numpy()
        stacked = np.zeros(len(y))  # out-of-fold logits on the training rows, the final probe's on the held-out ones
        for fold in np.unique(folds):
            fit = train[folds != fold]
            reference = LogisticRegression(C=1 / (settings.l2 * len(fit)), tol=1e-10, max_iter=10_000).fit(x[fit], y[fit])
            stacked[train[folds == fold]] = reference.decision_function(x[train[folds == fold]])
        final = LogisticRegression(C=1 / (settings.l2 * len(train)), tol=1e-10, max_iter=10_000).fit(x[train], y[train])
        stacked[heldout] = final.decision_function(x[heldout])
        expected = sklearn_combined_auroc(np.column_stack([stacked, uncertainty]), y, train, heldout)
        assert combined["auroc"][layer] == pytest.approx(expected, abs=2e-3)
    gain = combined["minus_uncertainty"]
    assert gain["value"][1] == pytest.approx(combined["auroc"][1] - combined["uncertainty_auroc"], abs=1e-6)
    assert gain["low"][1] > 0  # the planted layer adds to the model's uncertainty
    assert gain["low"][0] < 0 < gain["high"][0]  # pure noise adds nothing
    assert probes[1].with_uncertainty["auroc"] == [combined["auroc"][1]]


def test_baselines_are_saved_and_bad_ones_named(tmp_path):
    acts, labels, groups, baselines = planted(n_problems=12)
    probes = lp.train_probes(acts, labels, groups=groups, baselines=baselines,
                             settings=lp.probes.ProbeSettings(n_bootstrap=50))
    loaded = lp.LayerProbes.load(probes.save(tmp_path / "probes"))
    assert loaded.baseline_metrics == probes.baseline_metrics
    assert loaded.versus_best_baseline == probes.versus_best_baseline
    assert loaded.with_uncertainty == probes.with_uncertainty and loaded.config.cv_auroc == probes.config.cv_auroc
    with pytest.raises(ValueError, match=r"baselines\['entropy'\] must be a tensor of 120 values"):
        lp.train_probes(acts, labels, groups=groups, baselines={"entropy": torch.ones(7)})
