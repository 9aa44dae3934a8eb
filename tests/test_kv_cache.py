"""The KV-cache repair and load-time guard, and the user's own ``model.generate`` against an uncached HF loop."""

from __future__ import annotations

import copy
import functools
import gc
import io
import pickle
import sys
import types
import weakref

import pytest
import torch
from conftest import FAMILIES
from torch import nn
from transformer_lens.model_bridge import TransformerBridge

import lens_pivotal as lp
from lens_pivotal.kv_cache import (
    KVCacheError,
    attention_modules,
    check_kv_cache,
    kv_cache_error,
    kv_cache_tolerance,
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


# --- copies, pickling, padded batches, and what the load-time check must catch ---

STEPS = 6
# |Δ log-probability| allowed between the bridge's cached generate and the plain-HF uncached loop in float32 (measured
# ~2e-6). Log-probabilities, not logits: compatibility mode centres the unembedding, shifting each row of logits.
LOG_PROB_TOLERANCE = 1e-4
# The load-time check's absolute logit tolerance by dtype (float32 with IEEE matmuls)
TOLERANCES = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 0.25, torch.bfloat16: 2.0}


def reference_log_probs(reference, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """``[steps, vocab]`` next-token log-probabilities of the greedy continuation of ``ids`` (``[1, seq]``) by the
    plain HF model, one full uncached forward per step."""
    rows = []
    with torch.inference_mode():
        for _ in range(steps):
            rows.append(reference(ids, use_cache=False, logits_to_keep=1).logits[0, -1].log_softmax(-1))
            ids = torch.cat([ids, rows[-1].argmax().view(1, 1)], dim=1)
    return torch.stack(rows)


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded ``[batch, longest]`` tensor and its attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def assert_generates_like(model: TransformerBridge, reference) -> None:
    """``model.generate`` (KV-cached) on the left-padded batch of ``PROMPTS`` gives each row the log-probabilities the
    plain HF model gives that prompt alone, without padding or cache."""
    rows = [model.tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    ids, mask = left_padded(rows)
    with torch.inference_mode():
        output = model.generate(
            ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, stop_at_eos=False, verbose=False,
            output_logits=True, return_type="tokens",
        )  # fmt: skip
    cached = torch.stack(output.logits, dim=1).float().log_softmax(-1)
    for row, tokens in enumerate(rows):
        expected = reference_log_probs(reference, torch.tensor([tokens]), STEPS)
        error = (cached[row] - expected).abs().max().item()
        assert error <= LOG_PROB_TOLERANCE, f"{PROMPTS[row]!r}: |Δ log p| {error:.3g}"


@pytest.mark.parametrize("arch", [arch for arch in FAMILIES if arch != "embedded"])  # embedded: a minute on a CPU
def test_generate_on_a_left_padded_batch_equals_an_uncached_hf_loop(family_models, arch):
    assert_generates_like(*family_models(arch))


def test_a_deep_copy_continues_from_its_own_cache_and_does_not_hold_the_original(family_models):
    _, reference = family_models("qwen3")
    original = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu")
    copied = copy.deepcopy(original)
    assert_generates_like(copied, reference)
    assert_generates_like(original, reference)
    original_attention = [weakref.ref(module) for module in attention_modules(original)]
    del original
    gc.collect()
    # Nothing of the copy's repair refers to the original. (The copy still cannot generate once the original is gone:
    # TransformerLens 4.3 copies BlockBridge's capture hooks with their weak proxies to the original's attention.)
    assert all(ref() is None for ref in original_attention), "the copy keeps the original's attention modules alive"


def _findable(obj: type | types.FunctionType) -> bool:
    """Whether pickle finds ``obj`` again under its module and qualified name (how it stores classes and functions)."""
    found = sys.modules.get(obj.__module__)
    for name in obj.__qualname__.split("."):
        found = getattr(found, name, None)
    return found is obj


def unpicklable(model: nn.Module) -> set[str]:
    """The classes and functions in ``model`` that pickle cannot store; each is replaced by a placeholder so the walk
    goes on past it."""
    refused: set[str] = set()

    class RecordingPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, (type, types.FunctionType)) and not _findable(obj):
                refused.add(f"{obj.__module__}:{obj.__qualname__}")
                return str, ("placeholder",)
            return NotImplemented

    RecordingPickler(io.BytesIO()).dump(model)
    return refused


def test_the_repair_gives_pickle_nothing_new_to_refuse():
    model = bare_bridge()
    refused_before = unpicklable(model)
    repair_kv_cache(model)
    assert unpicklable(model) == refused_before
    # TransformerLens 4.3 bridges never pickle (local classes in AttentionBridge._setup_qkv_hook_reshaping; after a
    # forward pass also BlockBridge's and transformers' local hooks), so torch.save(model) cannot round-trip yet.
    assert refused_before, "bridges pickle now: make this a torch.save / torch.load round trip that generates"


def _n_cached(kwargs: dict, layer: int) -> int:
    """How many positions the KV cache handed to attention layer ``layer`` (under either name) already holds."""
    cache = next((kwargs[name] for name in ("cache", "past_key_values") if kwargs.get(name) is not None), None)
    return cache.get_seq_length(layer) if cache is not None else 0


def _on_cached_positions(model: TransformerBridge, change) -> None:
    """Let ``change(key, value, n_cached)`` rewrite the K/V each attention module attends to when its cache already
    held ``n_cached > 0`` positions (a continuation); passes that start from an empty cache are left alone."""
    for module in attention_modules(model):

        def changed(key, value, _update=module._update_kv_cache, _layer=module._layer_idx, **kwargs):
            n_cached = _n_cached(kwargs, _layer)
            key, value = _update(key, value, **kwargs)
            return change(key, value, n_cached) if n_cached else (key, value)

        object.__setattr__(module, "_update_kv_cache", changed)


def mixes_rows(model: TransformerBridge) -> None:
    """Simulate a cache that hands every row the first row's keys and values (right for a batch of one)."""
    _on_cached_positions(model, lambda key, value, n_cached: (key[:1].expand_as(key), value[:1].expand_as(value)))


def stores_bfloat16(model: TransformerBridge) -> None:
    """Simulate a cache that keeps its positions in bfloat16, as a quantized cache would, on a float32 model."""

    def rounded(states: torch.Tensor, n_cached: int) -> torch.Tensor:
        return torch.cat([states[..., :n_cached, :].bfloat16().to(states.dtype), states[..., n_cached:, :]], dim=-2)

    _on_cached_positions(model, lambda key, value, n_cached: (rounded(key, n_cached), rounded(value, n_cached)))


def ignores_padding(model: TransformerBridge) -> None:
    """Simulate attention that drops the attention mask once the cache holds the prompt (right without padding)."""
    for module in attention_modules(model):

        def unmasked(*args, _forward=module.forward, _layer=module._layer_idx, **kwargs):
            if _n_cached(kwargs, _layer):
                kwargs.pop("attention_mask", None)
            return _forward(*args, **kwargs)

        object.__setattr__(module, "forward", unmasked)


@pytest.mark.parametrize("break_cache", [mixes_rows, ignores_padding, stores_bfloat16])
def test_guard_catches_caches_wrong_only_in_batches_with_padding_or_in_low_digits(break_cache):
    # qwen2: its bfloat16-cache error (7e-4 of the largest logit) passed the former relative check
    model = lp.load_model(tiny_qwen_dir("qwen2"), device="cpu", check_kv_cache=False)
    break_cache(model)
    with pytest.raises(KVCacheError, match="KV-cached continuation is wrong"):
        check_kv_cache(model)


def test_guard_tolerance_is_absolute_and_follows_the_precision(monkeypatch):
    tolerances = {dtype: kv_cache_tolerance(nn.Linear(1, 1, dtype=dtype)) for dtype in TOLERANCES}
    assert tolerances == TOLERANCES
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # TF32 matmuls
    assert kv_cache_tolerance(nn.Linear(1, 1)) == TOLERANCES[torch.float16]
