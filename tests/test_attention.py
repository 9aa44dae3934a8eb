"""sdpa_attention: switches kernels only when no attention hook would be skipped, and always switches back."""

from __future__ import annotations

import pytest
import torch

import lens_pivotal as lp
from lens_pivotal.attention import sdpa_attention, sdpa_available


def test_switches_and_restores(tiny_qwen3_model):
    model = tiny_qwen3_model
    with sdpa_attention(model) as switched:
        assert switched and model.original_model.config._attn_implementation == "sdpa"
        assert "forward" in vars(model.blocks[0].attn)
    assert model.original_model.config._attn_implementation == "eager"
    assert "forward" not in vars(model.blocks[0].attn)


def test_restores_after_an_exception(tiny_qwen3_model):
    with pytest.raises(RuntimeError, match="boom"), sdpa_attention(tiny_qwen3_model):
        raise RuntimeError("boom")
    assert "forward" not in vars(tiny_qwen3_model.blocks[0].attn)
    assert tiny_qwen3_model.original_model.config._attn_implementation == "eager"


def test_a_user_attention_hook_keeps_the_bridge_path_and_fires(tiny_qwen3_model):
    model = tiny_qwen3_model
    patterns = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda pattern, hook: patterns.append(pattern.shape))]):
        assert not sdpa_available(model)
        lp.cache_resid_post(model, ["Hello world", "Hi"], [-1, 0], layers=[1], progress=False)
    assert len(patterns) == 1 and patterns[0][1] == model.cfg.n_heads
    assert sdpa_available(model)


def test_both_kernels_give_the_same_rows(tiny_qwen3_model):
    texts, positions = ["The capital of France is", "Hi there, how are you?"], [[0, -1], -1]
    fast = lp.cache_resid_post(tiny_qwen3_model, texts, positions, padding_side="left", progress=False)
    eager = lp.cache_resid_post(tiny_qwen3_model, texts, positions, padding_side="left", fast_attention=False, progress=False)
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
