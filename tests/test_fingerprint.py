"""weights_fingerprint: equal for equal weights, changed by any sampled change, blind only where it says it is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens_pivotal as lp
from lens_pivotal.fingerprint import SAMPLES_PER_TENSOR, sampled_indices, weights_fingerprint
from lens_pivotal.testing import tiny_qwen_dir


def two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(1000, 64), nn.LayerNorm(64))  # 64,000 weights: sampled; 64: hashed whole


def test_a_fresh_load_reproduces_it_and_scaling_one_blocks_mlp_out_weight_in_place_changes_it(tiny_qwen3_model):
    assert weights_fingerprint(two_layers()) == weights_fingerprint(two_layers())
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    assert weights_fingerprint(model) == weights_fingerprint(tiny_qwen3_model)
    with torch.no_grad():
        model.original_model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    assert weights_fingerprint(model) != weights_fingerprint(tiny_qwen3_model)


@pytest.mark.parametrize("flat_index", [0, 64_000 - 1, int(sampled_indices(64_000)[1234])])
def test_one_changed_sampled_element_of_a_large_matrix_changes_it(flat_index):
    model = two_layers()
    before = weights_fingerprint(model)
    with torch.no_grad():
        model[0].weight.view(-1)[flat_index] += 1e-3
    assert weights_fingerprint(model) != before


def test_every_element_of_a_small_tensor_counts_and_shape_and_dtype_count_too():
    model = two_layers()
    before = weights_fingerprint(model)
    with torch.no_grad():
        model[1].bias[37] += 1e-6
    assert weights_fingerprint(model) != before
    assert weights_fingerprint(two_layers().to(torch.bfloat16)) != weights_fingerprint(two_layers())
    assert weights_fingerprint(nn.Linear(4, 8)) != weights_fingerprint(nn.Linear(8, 4))


def test_the_documented_limit_a_change_only_at_unsampled_elements_goes_unseen():
    model = two_layers()
    before = weights_fingerprint(model)
    unsampled = sorted(set(range(64_000)) - set(sampled_indices(64_000).tolist()))[0]
    with torch.no_grad():
        model[0].weight.view(-1)[unsampled] += 1.0
    assert weights_fingerprint(model) == before


def test_samples_are_evenly_spaced_from_first_to_last():
    indices = sampled_indices(1_000_003)
    assert len(indices) == SAMPLES_PER_TENSOR and indices[0] == 0 and indices[-1] == 1_000_002
    gaps = indices.diff()
    assert gaps.max() - gaps.min() <= 1
    assert sampled_indices(100).tolist() == list(range(100))
    with pytest.raises(ValueError, match="samples must be at least 2"):
        weights_fingerprint(two_layers(), samples=1)
