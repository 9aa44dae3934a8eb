"""next_token_decoding and Patchscope: the KV-reuse path against full forwards, the paper's metric
definitions, partial batches, baselines, mappings and bad input (tiny random Qwen3)."""

from __future__ import annotations

import pytest
import torch
from conftest import family_params, hf_resid_states, hf_token_ids

import lens_pivotal as lp
from lens_pivotal.patchscope import (
    IDENTITY_PROMPT,
    AffineMap,
    NormMatch,
    Patchscope,
    decode_positions,
    next_token_decoding,
    random_identity_prompts,
    relation_prompts,
)
from lens_pivotal.testing import reference_logits, tiny_qwen_dir

PROMPTS = relation_prompts(7, seed=1)


def full_forward_reference(model, reference, prompts):
    """The PatchScope method written independently on plain HF: per layer and prompt, a full forward of the identity
    prompt with its last block output replaced by the prompt's own (in our convention), compared with the prompt's
    own next-token distribution."""
    target = hf_token_ids(reference, IDENTITY_PROMPT)
    n_layers = model.cfg.n_layers
    tops, hits, surprisals = [[] for _ in range(n_layers)], [[] for _ in range(n_layers)], [[] for _ in range(n_layers)]
    for prompt in prompts:
        tokens = hf_token_ids(reference, prompt)
        own = reference_logits(reference, tokens)[0, -1].log_softmax(-1)
        states = hf_resid_states(reference, tokens)
        for layer in range(n_layers):
            patch = (layer, target.shape[1] - 1, states[layer + 1][0, -1])
            top = int(reference_logits(reference, target, patch=patch)[0, -1].argmax())
            tops[layer].append(model.tokenizer.decode([top]))
            hits[layer].append(float(top == own.argmax()))
            surprisals[layer].append(-own[top].item())
    return tops, torch.tensor(hits), torch.tensor(surprisals)


@pytest.mark.parametrize("arch", family_params())
def test_kv_reuse_path_equals_full_forward_per_layer(family_models, arch):
    model, reference = family_models(arch)
    prompts = PROMPTS[:2] if arch == "embedded" else PROMPTS[:4]
    result = next_token_decoding(model, prompts, baselines=(), batch_size=5, progress=False)
    tops, hits, surprisals = full_forward_reference(model, reference, prompts)
    assert result.prompts == prompts and result.train_prompts == []
    assert result.top_tokens["patchscope"] == tops
    torch.testing.assert_close(result.precision_at_1["patchscope"], hits.mean(1))
    torch.testing.assert_close(result.surprisals["patchscope"], surprisals, atol=1e-4, rtol=1e-4)


def test_final_partial_batch_is_evaluated(tiny_qwen3_model):
    one_batch = next_token_decoding(tiny_qwen3_model, PROMPTS, baselines=(), batch_size=1000, progress=False)
    partial = next_token_decoding(tiny_qwen3_model, PROMPTS, baselines=(), batch_size=4, progress=False)  # 21 rows
    assert partial.hits["patchscope"].shape == (3, len(PROMPTS))
    assert partial.top_tokens == one_batch.top_tokens
    torch.testing.assert_close(partial.surprisals["patchscope"], one_batch.surprisals["patchscope"])


def test_last_layer_is_the_models_own_output_and_equals_the_logit_lens(tiny_qwen3_model):
    result = next_token_decoding(tiny_qwen3_model, PROMPTS, baselines=("logit_lens",), progress=False)
    assert result.precision_at_1["patchscope"][-1] == 1.0
    assert result.precision_at_1["logit_lens"][-1] == 1.0
    assert result.top_tokens["patchscope"][-1] == result.top_tokens["logit_lens"][-1] == result.model_top_tokens
    last = tiny_qwen3_model.cfg.n_layers - 1
    state = lp.cache_resid_post(tiny_qwen3_model, PROMPTS[:1], [-1], layers=[last], progress=False)[0, 0]
    patched = Patchscope(PROMPTS[0], last).inspect(tiny_qwen3_model).logits
    torch.testing.assert_close(patched, lp.logit_lens(tiny_qwen3_model, state).float(), atol=1e-4, rtol=1e-4)


def test_affine_baseline_uses_a_held_out_split(tiny_qwen3_model):
    prompts = relation_prompts(10, seed=2)
    result = next_token_decoding(tiny_qwen3_model, prompts, baselines=("affine",), train_fraction=0.4, progress=False)
    assert len(result.train_prompts) == 4 and len(result.prompts) == 6
    assert set(result.train_prompts).isdisjoint(result.prompts)
    assert set(result.train_prompts) | set(result.prompts) == set(prompts)
    assert result.hits["affine"].shape == result.hits["patchscope"].shape == (3, 6)
    assert len(result.affine_texts) == 256 and set(result.affine_texts).isdisjoint(result.prompts)
    assert result.precision_at_1["affine"][-1] == 1.0, "the last block's affine lens is the identity"
    own = next_token_decoding(tiny_qwen3_model, prompts, baselines=("affine",), affine_texts=prompts[:2], progress=False)
    assert own.affine_texts == [text for text in prompts[:2] if text not in own.prompts]


def test_fixed_target_layer_and_several_target_prompts(tiny_qwen3_model):
    model = tiny_qwen3_model
    fixed = next_token_decoding(model, PROMPTS, target_layers=0, baselines=(), progress=False)
    assert fixed.target_layers == [0, 0, 0]
    layer2_into_0 = Patchscope(PROMPTS[0], 2, target_layer=0).inspect(model, top_k=1).top_tokens[0][0]
    assert fixed.top_tokens["patchscope"][2][0] == layer2_into_0
    targets = random_identity_prompts(model, 3, seed=0)
    assert all(t.endswith("; ?") and " -> " in t for t in targets)
    several = next_token_decoding(model, PROMPTS, target_prompt=targets, baselines=(), progress=False)
    singles = [next_token_decoding(model, PROMPTS, target_prompt=t, baselines=(), progress=False) for t in targets]
    expected = torch.stack([s.hits["patchscope"] for s in singles]).mean(0)
    torch.testing.assert_close(several.hits["patchscope"], expected)


def test_decode_positions_grid(tiny_qwen3_model):
    grid = decode_positions(tiny_qwen3_model, "The capital of France", layers=[0, 2])
    assert grid.layers == [0, 2] and len(grid.tokens) == 4
    assert len(grid.top_tokens) == 2 and all(len(row) == 4 for row in grid.top_tokens)
    assert grid.probs.shape == (2, 4) and bool((grid.probs > 0).all())
    top = Patchscope("The capital of France", 2, source_position=1).inspect(tiny_qwen3_model, top_k=1).top_tokens[0]
    assert grid.top_tokens[1][1] == top[0]
    assert grid.probs[1, 1].item() == pytest.approx(top[1], rel=1e-4)


def test_norm_match_scales_to_the_target_norm(tiny_qwen3_model):
    match = NormMatch.from_model(tiny_qwen3_model, 1, PROMPTS)
    vectors = torch.randn(4, tiny_qwen3_model.cfg.d_model) * 100
    torch.testing.assert_close(match(vectors).norm(dim=-1), torch.full((4,), match.norm))
    assert 0 < match.norm < 1e4


def test_cross_model_patching_with_an_affine_map(tiny_qwen3_model):
    target_model = lp.load_model(tiny_qwen_dir("qwen2", d_model=96, n_heads=4, n_kv_heads=2), device="cpu")
    texts = relation_prompts(40, seed=3)
    mapping = AffineMap.from_models(tiny_qwen3_model, 1, target_model, 2, texts)
    assert mapping.weight.shape == (64, 96)
    config = Patchscope(PROMPTS[0], 1, target_layer=2, target_model=target_model, mapping=mapping, max_new_tokens=3)
    result = config.inspect(tiny_qwen3_model)
    assert result.logits.shape == (target_model.cfg.d_vocab,)
    assert isinstance(result.generation, str)
    with pytest.raises(ValueError, match="d_model"):
        Patchscope(PROMPTS[0], 1, target_model=target_model).inspect(tiny_qwen3_model)


def test_bad_input_errors(tiny_qwen3_model):
    model = tiny_qwen3_model
    with pytest.raises(IndexError, match="source_layer=3 is out of range"):
        Patchscope("Hello", 3).inspect(model)
    with pytest.raises(IndexError, match="target_layer=-9"):
        Patchscope("Hello", 0, target_layer=-9).inspect(model)
    with pytest.raises(IndexError, match="target_position=50"):
        Patchscope("Hello", 0, target_position=50).inspect(model)
    with pytest.raises(IndexError, match="position 7 is out of range"):
        Patchscope("Hello", 0, source_position=7).inspect(model)
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        next_token_decoding(model, PROMPTS, layers=[5], progress=False)
    with pytest.raises(ValueError, match="baselines"):
        next_token_decoding(model, PROMPTS, baselines=("tuned_lens",), progress=False)
    with pytest.raises(TypeError, match="list of strings"):
        next_token_decoding(model, "one prompt", progress=False)
    with pytest.raises(ValueError, match="prompts\\[1\\]"):
        next_token_decoding(model, ["ok", ""], progress=False)
    with pytest.raises(ValueError, match="needs prompts to split"):
        next_token_decoding(model, PROMPTS[:1], progress=False)
    with pytest.raises(ValueError, match="target_layers"):
        next_token_decoding(model, PROMPTS, target_layers=[0, 1], baselines=(), progress=False)
    with pytest.raises(ValueError, match="source_positions has 2"):
        next_token_decoding(model, PROMPTS, source_positions=[-1, -1], baselines=(), progress=False)
