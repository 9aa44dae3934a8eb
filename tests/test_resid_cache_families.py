"""cache_resid_post on the LayerNorm families (GPT-2, GPT-NeoX) against plain HF hidden states, and the convention they
follow: in compatibility mode ``resid_post`` is HF's state minus its mean over d_model, with ``compat=False`` HF's own.

The parity tests of tests/test_resid_cache.py, for the families its fixture does not cover yet (fold them into its
``model_and_reference`` parametrization once that file is free)."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYERNORM_FAMILIES, family_dir, hf_block_states, hf_resid_states, hf_token_ids

import lens_pivotal as lp

TEXTS = [
    "The capital of France is Paris.",
    "2 + 2 =",
    "A much longer text, so that padding matters: one, two, three, four, five, six.",
    "Hi",
]
POSITIONS = [[0, -1], -1, [3, 7, -2], 0]
SHARED = (
    "Question: Sam has three apples and buys four more apples at the market on a sunny day. "
    "How many apples does Sam have now? Think step by step before you answer. Answer:"
)
SHARED_TEXTS = [SHARED + " Seven.", SHARED + " He has 3 + 4 = 7 apples.", SHARED + " 7", "Unrelated short text."]
SHARED_POSITIONS = [[2, -1], [-3, 5, -1], [-1], [0, -1]]


def expected_rows(reference, texts, positions, states=hf_resid_states) -> torch.Tensor:
    """[n_layers + 1, n_rows, d_model] from one unpadded HF forward per text (``states``: our convention or HF's)."""
    rows = []
    for text, spec in zip(texts, positions):
        per_layer = states(reference, hf_token_ids(reference, text))
        for position in [spec] if isinstance(spec, int) else spec:
            rows.append(torch.stack([state[0, position] for state in per_layer]))
    return torch.stack(rows, dim=1)


@pytest.fixture(scope="module")
def raw_bridges():
    """``raw_bridges(arch)``: the family loaded without compatibility mode, once per module."""
    loaded = {}

    def load(arch: str):
        if arch not in loaded:
            loaded[arch] = lp.load_model(family_dir(arch), device="cpu", compat=False)
        return loaded[arch]

    return load


@pytest.mark.parametrize("arch", LAYERNORM_FAMILIES)
@pytest.mark.parametrize("fast_path", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_matches_centred_hf_hidden_states_for_mixed_lengths(family_models, arch, fast_path, padding_side):
    model, reference = family_models(arch)
    acts = lp.cache_resid_post(
        model, TEXTS, POSITIONS, embeddings=True, batch_size=3, padding_side=padding_side, fast_path=fast_path,
        progress=False,
    )  # fmt: skip
    expected = expected_rows(reference, TEXTS, POSITIONS)
    assert acts.shape == (model.cfg.n_layers + 1, 7, model.cfg.d_model)
    torch.testing.assert_close(acts, expected, atol=1e-4, rtol=0)
    assert (expected_rows(reference, TEXTS, POSITIONS, hf_block_states) - expected).abs().max() > 1e-2, "HF's differ"


@pytest.mark.parametrize("arch", LAYERNORM_FAMILIES)
@pytest.mark.parametrize("fast_path", [False, True])
def test_shared_prefixes_match_centred_hf_hidden_states(family_models, arch, fast_path):
    model, reference = family_models(arch)
    acts = lp.cache_resid_post(
        model, SHARED_TEXTS, SHARED_POSITIONS, embeddings=True, batch_size=2, padding_side="left",
        fast_path=fast_path, share_prefixes=True, progress=False,
    )  # fmt: skip
    torch.testing.assert_close(acts, expected_rows(reference, SHARED_TEXTS, SHARED_POSITIONS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", LAYERNORM_FAMILIES)
@pytest.mark.parametrize("fast_path", [False, True])
def test_without_compatibility_mode_the_stream_is_hfs_own(family_models, raw_bridges, arch, fast_path):
    _, reference = family_models(arch)
    acts = lp.cache_resid_post(raw_bridges(arch), TEXTS, POSITIONS, embeddings=True, fast_path=fast_path, progress=False)
    torch.testing.assert_close(acts, expected_rows(reference, TEXTS, POSITIONS, hf_block_states), atol=1e-4, rtol=0)
