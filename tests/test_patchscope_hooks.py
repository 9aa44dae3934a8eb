"""patch_hook / layered_patch_hooks: exact self-patching, plain HF with that block output replaced, padding, per-row
layers, prefill-only generation, composition with user hooks, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYERNORM_FAMILIES, hf_token_ids

import lens_pivotal as lp
from lens_pivotal.patchscope import layered_patch_hooks, patch_hook
from lens_pivotal.testing import reference_logits

PROMPT = "The capital of France is Paris, and the capital of Spain is"
SHORT = "Hello there"


def resid(model, tokens, layer, **kwargs):
    _, cache = model.run_with_cache(tokens, names_filter=lp.resid_post_hook(layer), **kwargs)
    return cache[lp.resid_post_hook(layer)]


@pytest.mark.parametrize("layer,position", [(0, 3), (1, -1), (2, 0)])
def test_patching_own_state_back_reproduces_logits_exactly(tiny_qwen3_model, layer, position):
    model = tiny_qwen3_model
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    state = resid(model, tokens, layer)[0, position]
    patched = model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(layer), patch_hook(state, position))])
    assert torch.equal(patched, clean)


def test_patch_changes_later_positions_only(tiny_qwen3_model):
    model = tiny_qwen3_model
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    vector = torch.randn(model.cfg.d_model) * 10
    patched = model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(1), patch_hook(vector, 4))])
    assert torch.equal(patched[0, :4], clean[0, :4])
    assert not torch.allclose(patched[0, 4:], clean[0, 4:])


@pytest.mark.parametrize("arch", ["qwen3", *LAYERNORM_FAMILIES])
def test_patched_logits_equal_hf_with_that_block_output_replaced(family_models, arch):
    """Our stream is centred on LayerNorm models and HF's is not; a patched vector (not centred) is followed by
    block outputs that differ by a multiple of the all-ones vector only, which no LayerNorm sees."""
    model, reference = family_models(arch)
    ids = hf_token_ids(reference, PROMPT)
    vector = 3 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.run_with_hooks(ids, fwd_hooks=[(lp.resid_post_hook(1), patch_hook(vector, 4))])[0]
    expected, clean = reference_logits(reference, ids, patch=(1, 4, vector))[0], reference_logits(reference, ids)[0]
    centred = expected - expected.mean(-1, keepdim=True)  # compatibility mode centres the unembedding
    torch.testing.assert_close(ours - ours.mean(-1, keepdim=True), centred, atol=1e-4, rtol=1e-4)
    assert (expected - clean)[4:].abs().max() > 1e-2, "the patch matters, so the comparison can fail"


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_negative_positions_resolve_per_row_under_padding(tiny_qwen3_model, padding_side):
    model = tiny_qwen3_model
    vectors = torch.randn(2, model.cfg.d_model) * 5
    expected = []
    for prompt, vector in zip([PROMPT, SHORT], vectors):
        tokens = model.to_tokens(prompt)
        hook = patch_hook(vector, -2)
        expected.append(model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(1), hook)])[0, -1])
    tokens = model.to_tokens([PROMPT, SHORT], padding_side=padding_side)
    mask = (tokens != model.tokenizer.pad_token_id).long()
    hook = patch_hook(vectors, -2, attention_mask=mask)
    logits = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(lp.resid_post_hook(1), hook)])
    last = mask.shape[1] - 1 if padding_side == "left" else mask.sum(1) - 1
    got = logits[torch.arange(2), torch.as_tensor(last).expand(2)]
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-4, rtol=1e-4)


def test_per_row_layers_in_one_batch_equal_separate_runs(tiny_qwen3_model):
    model = tiny_qwen3_model
    tokens = model.to_tokens(PROMPT)
    layers = [0, 2, 1, 2, 0]
    vectors = torch.randn(len(layers), model.cfg.d_model) * 5
    batched = model.run_with_hooks(
        tokens.expand(len(layers), -1), fwd_hooks=layered_patch_hooks(vectors, -1, layers)
    )[:, -1]
    for row, (layer, vector) in enumerate(zip(layers, vectors)):
        alone = model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(layer), patch_hook(vector, -1))])[0, -1]
        torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-4)


def manual_greedy(model, tokens, hook_name, hook, steps):
    """Patched prompt pass with the hook, then plain KV-cached decode steps without it."""
    with torch.inference_mode():
        with model.hooks(fwd_hooks=[(hook_name, hook)]):
            logits, cache = model(tokens, return_type="logits_and_cache")
        generated = tokens
        for _ in range(steps):
            next_token = logits[:, -1].argmax(-1, keepdim=True)
            generated = torch.cat([generated, next_token], dim=1)
            logits, cache = model(next_token, past_key_values=cache, return_type="logits_and_cache")
    return generated


def test_generation_patches_the_prompt_pass_only(tiny_qwen3_model):
    model = tiny_qwen3_model
    tokens = model.to_tokens(SHORT)
    name, vector = lp.resid_post_hook(1), torch.randn(model.cfg.d_model) * 20
    expected = manual_greedy(model, tokens, name, patch_hook(vector, -1), steps=6)
    calls = []

    def counting(hook_fn):
        def wrapped(tensor, hook):
            calls.append(tensor.shape[1])
            return hook_fn(tensor, hook)

        return wrapped

    with model.hooks(fwd_hooks=[(name, counting(patch_hook(vector, -1)))]):
        kv = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens", stop_at_eos=False)
    mask = torch.ones_like(tokens)
    with model.hooks(fwd_hooks=[(name, patch_hook(vector, -1, attention_mask=mask))]):
        no_kv = model.generate(
            tokens, max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens", stop_at_eos=False,
            use_past_kv_cache=False,
        )
    assert calls == [tokens.shape[1]] + [1] * 5, "the hook saw one prompt pass and five one-token decode steps"
    assert torch.equal(kv, expected)
    assert torch.equal(no_kv, expected)
    with model.hooks(fwd_hooks=[(name, patch_hook(vector, -1, prefill_only=False))]):
        every_step = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens", stop_at_eos=False)
    assert not torch.equal(every_step, expected), "patching decode steps too must change this generation"


def test_composes_with_an_unrelated_user_hook_and_cleans_up(tiny_qwen3_model):
    model = tiny_qwen3_model
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    vector = torch.randn(model.cfg.d_model) * 5
    ours = (lp.resid_post_hook(0), patch_hook(vector, 2))
    patched_alone = model.run_with_hooks(tokens, fwd_hooks=[ours])
    seen = {}

    def user_hook(tensor, hook):
        seen["resid_2"] = tensor.clone()
        return tensor

    with model.hooks(fwd_hooks=[ours, (lp.resid_post_hook(2), user_hook)]):
        together = model(tokens)
    assert torch.equal(together, patched_alone)
    assert not torch.allclose(seen["resid_2"], resid(model, tokens, 2)), "the user hook sees the patched run"
    assert torch.equal(model(tokens), clean), "no hook is left behind"


def test_bad_vectors_and_positions_raise_clear_errors(tiny_qwen3_model):
    model = tiny_qwen3_model
    tokens = model.to_tokens(SHORT)
    d_model = model.cfg.d_model
    with pytest.raises(ValueError, match="d_model"):
        model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(0), patch_hook(torch.zeros(d_model + 1), 0))])
    with pytest.raises(IndexError, match="position 99"):
        model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(0), patch_hook(torch.zeros(d_model), 99))])
    with pytest.raises(ValueError, match="batch rows"):
        model.run_with_hooks(tokens, fwd_hooks=[(lp.resid_post_hook(0), patch_hook(torch.zeros(3, d_model), 0))])
    with pytest.raises(ValueError, match=r"\[d_model\]"):
        patch_hook(torch.zeros(1, 2, d_model), 0)
    with pytest.raises(ValueError, match="position has 2 entries"):
        patch_hook(torch.zeros(3, d_model), [0, 1])
    with pytest.raises(TypeError, match="floating-point"):
        patch_hook(torch.zeros(d_model, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="layers has 1 entries"):
        layered_patch_hooks(torch.zeros(2, d_model), 0, [1])
