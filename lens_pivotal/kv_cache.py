"""Keep KV-cached continuation correct on the bridge, whatever name the installed transformers gives the cache.

transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to ``cache``. TransformerLens 4.3's
attention bridges (which replace the HF attention modules inside ``model.original_model`` too) read only
``past_key_values`` / ``layer_past``, so with 5.24 they neither write nor read the cache: a cached forward
returns an empty cache, and every decode step of ``generate`` attends to itself alone.

:func:`repair_kv_cache` hands the cache to each attention bridge under the name it reads, one instance at a time
(nothing global is patched). :func:`check_kv_cache` verifies, in a few milliseconds, that a cached continuation
equals the uncached forward; :func:`lens_pivotal.load_model` runs both, so a future break raises instead of
printing wrong numbers.
"""

from __future__ import annotations

import copy
import functools
from importlib.metadata import version
from typing import Any, Callable

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import Cache

# Prefix and continuation of the check: short enough to cost milliseconds, long enough to use several positions.
_CHECK_PREFIX, _CHECK_CONTINUATION = 5, 3
# Logit tolerance of the check, relative to the largest logit (cached attention may use another kernel order).
_RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
_LOW_PRECISION_TOLERANCE = 5e-2
_REPAIRED = "_lens_pivotal_cache_repaired"


class KVCacheError(RuntimeError):
    """A KV-cached continuation of the model disagrees with its uncached forward pass."""


def stack_versions() -> str:
    """The installed transformers, TransformerLens and torch versions, as one line for error messages."""
    return ", ".join(f"{name} {version(name)}" for name in ("transformers", "transformer-lens", "torch"))


def _reads_renamed_cache(update: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(update)
    def update_kv_cache(key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
            kwargs["past_key_values"] = kwargs.get("cache")
        return update(key, value, **kwargs)

    return update_kv_cache


def repair_kv_cache(model: TransformerBridge) -> int:
    """Let every attention bridge of ``model`` find the KV cache under transformers' ``cache`` name too.

    Idempotent; returns the number of attention modules it changed (0 on a second call).
    """
    changed = 0
    for module in attention_modules(model):
        if getattr(module, _REPAIRED, False):
            continue
        # object.__setattr__ because bridge components forward attribute writes to the module they wrap
        object.__setattr__(module, "_update_kv_cache", _reads_renamed_cache(module._update_kv_cache))
        object.__setattr__(module, _REPAIRED, True)
        changed += 1
    return changed


def logit_tolerance(model: TransformerBridge) -> float:
    """How far two correct forward passes of ``model`` may differ, relative to the largest logit (by dtype)."""
    dtype = next(model.parameters()).dtype
    return _RELATIVE_TOLERANCE.get(dtype, _LOW_PRECISION_TOLERANCE)


@torch.inference_mode()
def kv_cache_error(model: TransformerBridge) -> float:
    """Largest |cached − uncached| next-token logit over a short continuation, relative to the largest logit.

    The prefix runs with ``return_type="logits_and_cache"`` and the continuation with ``past_key_values``:
    the bridge's own attention path, the one ``generate`` uses.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.d_vocab, (1, _CHECK_PREFIX + _CHECK_CONTINUATION), generator=generator).to(device)
    full = model(ids).float()
    _, cache = model(ids[:, :_CHECK_PREFIX], return_type="logits_and_cache")
    if cache is None:
        return float("inf")
    continued = model(ids[:, _CHECK_PREFIX:], past_key_values=cache).float()
    scale = full.abs().max().clamp_min(1e-6)
    return float((continued - full[:, _CHECK_PREFIX:]).abs().max() / scale)


def check_kv_cache(model: TransformerBridge) -> None:
    """Raise unless a KV-cached continuation on ``model`` equals its uncached forward (call after the repair).

    Raises:
        KVCacheError: they differ; the message names the installed versions and what to do.
    """
    error = kv_cache_error(model)
    if error <= logit_tolerance(model):
        return
    raise KVCacheError(
        f"KV-cached continuation is wrong on this model ({stack_versions()}): cached next-token logits differ from "
        f"the full forward pass by {error:.3g} of the largest logit (tolerance {logit_tolerance(model):.0e}). Generation "
        "and PatchScope results would be wrong. Install the tested versions (`pip install -c constraints.txt ...`, "
        "see the README's 'Tested versions'), or pass check_kv_cache=False to load_model to skip this check at "
        "your own risk, and report it."
    )


def repeated_cache(cache: Cache, n_rows: int) -> Cache:
    """A copy of a one-row KV cache (a prefix run once) with that row repeated ``n_rows`` times; the forward pass
    that continues from it extends the copy in place, never ``cache``."""
    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(n_rows)
    return repeated


def attention_modules(model: TransformerBridge) -> list[nn.Module]:
    """The modules :func:`repair_kv_cache` acts on (attention bridges with a KV-cache update)."""
    return [module for module in model.modules() if hasattr(type(module), "_update_kv_cache")]
