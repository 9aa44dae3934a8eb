"""hf_fast_path: swaps only hook-free modules, never skips a user's hook, and always switches back."""

from __future__ import annotations

import pytest
import torch

import lens_pivotal as lp
from lens_pivotal.resid.fastpath import hf_fast_path

TEXTS, POSITIONS = ["The capital of France is", "Hi there, how are you?"], [[0, -1], -1]


def swapped(model) -> set[str]:
    return {f"{index}.{name}" for index, block in enumerate(model.blocks) for name, part in block.named_children() if "forward" in vars(part)}


def test_switches_every_part_and_restores(tiny_qwen3_model):
    model = tiny_qwen3_model
    with hf_fast_path(model) as sdpa:
        assert sdpa and model.original_model.config._attn_implementation == "sdpa"
        assert swapped(model) == {f"{i}.{name}" for i in range(model.cfg.n_layers) for name in ("ln1", "ln2", "attn", "mlp")}
    assert model.original_model.config._attn_implementation == "eager" and not swapped(model)


def test_restores_after_an_exception_and_when_nested(tiny_qwen3_model):
    with pytest.raises(RuntimeError, match="boom"), hf_fast_path(tiny_qwen3_model):
        with hf_fast_path(tiny_qwen3_model) as inner:
            assert inner
        assert swapped(tiny_qwen3_model), "the inner exit must leave the outer switch in place"
        raise RuntimeError("boom")
    assert not swapped(tiny_qwen3_model)
    assert tiny_qwen3_model.original_model.config._attn_implementation == "eager"


def test_a_user_attention_hook_keeps_every_attention_on_the_bridge_and_fires(tiny_qwen3_model):
    model = tiny_qwen3_model
    patterns = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda pattern, hook: patterns.append(pattern.shape))]):
        with hf_fast_path(model) as sdpa:
            assert not sdpa and not any(name.endswith("attn") for name in swapped(model))
        lp.cache_resid_post(model, TEXTS, POSITIONS, layers=[1], progress=False)
    assert len(patterns) == 1 and patterns[0][1] == model.cfg.n_heads


def test_a_user_mlp_hook_keeps_only_that_mlp_on_the_bridge_and_fires(tiny_qwen3_model):
    model = tiny_qwen3_model
    seen = []
    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_out", lambda out, hook: seen.append(out.shape))]):
        with hf_fast_path(model):
            assert "1.mlp" not in swapped(model) and "0.mlp" in swapped(model)
        lp.cache_resid_post(model, TEXTS, POSITIONS, layers=[2], progress=False)
    assert len(seen) == 1


def test_fast_and_bridge_paths_give_the_same_rows(tiny_qwen3_model):
    fast = lp.cache_resid_post(tiny_qwen3_model, TEXTS, POSITIONS, padding_side="left", progress=False)
    bridge = lp.cache_resid_post(tiny_qwen3_model, TEXTS, POSITIONS, padding_side="left", fast_path=False, progress=False)
    torch.testing.assert_close(fast, bridge, atol=1e-5, rtol=0)
