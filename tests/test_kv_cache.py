"""The KV-cache repair and load-time guard, and the user's own ``model.generate`` against an uncached HF loop."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import FAMILIES
from transformer_lens.model_bridge import TransformerBridge

import lens_pivotal as lp
from lens_pivotal.kv_cache import (
    KVCacheError,
    attention_modules,
    check_kv_cache,
    kv_cache_error,
    repair_kv_cache,
    stack_versions,
)
from lens_pivotal.testing import reference_greedy_tokens, tiny_qwen_dir

PROMPTS = ["The capital city of France is Paris. The capital city of Germany is", "1, 2, 3, 4,"]


def bare_bridge() -> TransformerBridge:
    """A tiny Qwen3 booted straight through TransformerLens, without lens_pivotal's repair."""
    return TransformerBridge.boot_transformers(str(tiny_qwen_dir("qwen3")), device="cpu").eval()


def cache_passed_as(model: TransformerBridge, name: str) -> None:
    """Simulate a transformers that hands the attention modules their KV cache as ``name`` only."""
    for module in attention_modules(model):
        forward = module.forward

        @functools.wraps(forward)
        def renamed(*args, _forward=forward, **kwargs):
            cache = kwargs.pop("past_key_values", None) or kwargs.pop("cache", None)
            return _forward(*args, **kwargs, **({name: cache} if cache is not None else {}))

        object.__setattr__(module, "forward", renamed)


def dropped_cache(model: TransformerBridge) -> None:
    """Simulate a bridge that ignores the KV cache whatever its name (the 5.24 failure, unrepairable)."""
    for module in attention_modules(model):
        object.__setattr__(module, "_update_kv_cache", lambda key, value, **kwargs: (key, value))


def test_loaded_models_continue_from_the_cache_exactly(tiny_qwen3_model):
    assert kv_cache_error(tiny_qwen3_model) < 1e-5
    assert repair_kv_cache(tiny_qwen3_model) == 0, "load_model repaired it already; a second repair changes nothing"
    check_kv_cache(tiny_qwen3_model)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_repair_reads_the_cache_under_either_name(name):
    model = bare_bridge()
    cache_passed_as(model, name)
    if name == "cache":
        assert kv_cache_error(model) > 1e-2, "the simulated rename must break the unrepaired bridge"
    assert repair_kv_cache(model) == model.cfg.n_layers
    assert kv_cache_error(model) < 1e-5


def test_guard_raises_naming_the_versions_on_a_broken_cache():
    model = bare_bridge()
    dropped_cache(model)
    with pytest.raises(KVCacheError, match="KV-cached continuation is wrong") as error:
        check_kv_cache(model)
    assert stack_versions() in str(error.value) and "transformers " in stack_versions()


def test_load_model_runs_the_guard(monkeypatch):
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, key, value, **kwargs: (key, value))
    with pytest.raises(KVCacheError, match="check_kv_cache=False"):
        lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    unchecked = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu", check_kv_cache=False)
    assert kv_cache_error(unchecked) > 1e-2


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "embedded" else a for a in FAMILIES])
def test_users_own_generate_equals_an_uncached_hf_loop(family_models, arch):
    model, reference = family_models(arch)
    for prompt in PROMPTS:
        ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
        expected = reference_greedy_tokens(reference, ids, 8)
        with torch.inference_mode():
            cached = model.generate(ids, max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
        assert cached[:, ids.shape[1] :].tolist() == expected.tolist(), f"{arch}: {prompt!r}"
