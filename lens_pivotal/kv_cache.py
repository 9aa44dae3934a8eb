"""Keep KV-cached continuation correct on the bridge, whatever name the installed transformers gives the cache.

transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to ``cache``. TransformerLens 4.3's
attention bridges (which replace the HF attention modules inside ``model.original_model`` too) read only
``past_key_values`` / ``layer_past``, so with 5.24 they neither write nor read the cache: a cached forward
returns an empty cache, and every decode step of ``generate`` attends to itself alone.

:func:`repair_kv_cache` hands the cache to each attention bridge under the name it reads, one instance at a time
(nothing global is patched), in a form that ``copy.deepcopy`` and pickling carry over to a copy.
:func:`check_kv_cache` verifies, in milliseconds, that a cached continuation of a left-padded batch equals the
uncached forward within an absolute logit tolerance; :func:`lens_pivotal.load_model` runs both, so a future break
raises instead of printing wrong numbers.
"""

from __future__ import annotations

import copy
import functools
from importlib.metadata import version
from typing import Any

import torch
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import Cache

# The check's batch: two rows, the second left-padded, so batching and the attention mask are covered too. Each row
# runs a prefix, then continues from its cache: short enough to cost milliseconds, long enough to use several positions.
_CHECK_PREFIX, _CHECK_CONTINUATION, _CHECK_PADDING = 5, 3, 2
# The check's absolute logit tolerance. In float32, cached attention multiplies other shapes (another summation order),
# which moved logits by 1e-6 on the tiny test models and 4e-5 on the embedded 30-layer SmolLM2; a cache that is not
# used moves them by 3 (tiny) to 20 (SmolLM2). In 16-bit dtypes the logits' own rounding dominates, so the tolerance is
# eight units in the last place of a logit of magnitude 32 (float16 0.25, bfloat16 2.0) where that is larger.
_FLOAT32_TOLERANCE = 1e-4
_ULPS, _LOGIT_MAGNITUDE = 8, 32
# The precision float32 matmuls really have under torch.set_float32_matmul_precision: "high" allows TF32 (10 mantissa
# bits), "medium" bfloat16 (7), so a float32 model is then checked as a float16 or bfloat16 one.
_FLOAT32_MATMUL_EPS = {"highest": torch.finfo(torch.float32).eps, "high": 2.0**-10, "medium": 2.0**-7}
# Logit tolerance relative to the largest logit, by dtype (for comparisons of whole distributions, as in unhooked).
_RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
_LOW_PRECISION_TOLERANCE = 5e-2


class KVCacheError(RuntimeError):
    """A KV-cached continuation of the model disagrees with its uncached forward pass."""


def stack_versions() -> str:
    """The installed transformers, TransformerLens and torch versions, as one line for error messages."""
    return ", ".join(f"{name} {version(name)}" for name in ("transformers", "transformer-lens", "torch"))


def _update_kv_cache_under_either_name(module: nn.Module, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> Any:
    """The class's ``_update_kv_cache`` of ``module``, also given the cache when transformers names it ``cache``."""
    if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
        kwargs["past_key_values"] = kwargs.get("cache")
    return type(module)._update_kv_cache(module, key, value, **kwargs)


def _is_repaired(module: nn.Module) -> bool:
    update = vars(module).get("_update_kv_cache")
    return isinstance(update, functools.partial) and update.func is _update_kv_cache_under_either_name


def repair_kv_cache(model: TransformerBridge) -> int:
    """Let every attention bridge of ``model`` find the KV cache under transformers' ``cache`` name too.

    Each module gets its own ``_update_kv_cache``, a ``functools.partial`` over a module-level function and the module
    itself, so ``copy.deepcopy`` points a copy's at the copy and pickling stores it by reference. Idempotent; returns
    the number of attention modules it changed (0 on a second call).
    """
    changed = 0
    for module in attention_modules(model):
        if _is_repaired(module):
            continue
        # object.__setattr__ because bridge components forward attribute writes to the module they wrap
        object.__setattr__(module, "_update_kv_cache", functools.partial(_update_kv_cache_under_either_name, module))
        changed += 1
    return changed


def _model_dtype(model: TransformerBridge) -> torch.dtype:
    return next(model.parameters()).dtype


def kv_cache_tolerance(model: TransformerBridge) -> float:
    """The largest absolute |cached − uncached| logit :func:`check_kv_cache` accepts on ``model``: 1e-4, or eight units
    in the last place of a logit of 32 in ``model``'s dtype where that is larger (float16 0.25, bfloat16 2.0)."""
    dtype = _model_dtype(model)
    if dtype == torch.float32:
        eps = _FLOAT32_MATMUL_EPS[torch.get_float32_matmul_precision()]
    else:
        eps = torch.finfo(dtype).eps
    return max(_FLOAT32_TOLERANCE, _ULPS * _LOGIT_MAGNITUDE * eps)


def logit_tolerance(model: TransformerBridge) -> float:
    """How far two correct forward passes of ``model`` may differ, relative to the largest logit (by dtype)."""
    return _RELATIVE_TOLERANCE.get(_model_dtype(model), _LOW_PRECISION_TOLERANCE)


def _check_batch(model: TransformerBridge) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids ``[2, prefix + continuation]`` and their attention mask, the second row left-padded."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.d_vocab, (2, _CHECK_PREFIX + _CHECK_CONTINUATION), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :_CHECK_PADDING] = 0
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def kv_cache_error(model: TransformerBridge) -> float:
    """Largest absolute |cached − uncached| next-token logit over a short continuation of a padded batch of two.

    The prefix runs with ``return_type="logits_and_cache"`` and the continuation with ``past_key_values``:
    the bridge's own attention path, the one ``generate`` uses.
    """
    ids, mask = _check_batch(model)
    full = model(ids, attention_mask=mask).float()
    prefix_ids, prefix_mask = ids[:, :_CHECK_PREFIX], mask[:, :_CHECK_PREFIX]
    _, cache = model(prefix_ids, attention_mask=prefix_mask, return_type="logits_and_cache")
    if cache is None:
        return float("inf")
    continued = model(ids[:, _CHECK_PREFIX:], attention_mask=mask, past_key_values=cache).float()
    return float((continued - full[:, _CHECK_PREFIX:]).abs().max())


def check_kv_cache(model: TransformerBridge) -> None:
    """Raise unless a KV-cached continuation on ``model`` equals its uncached forward (call after the repair).

    Raises:
        KVCacheError: they differ by more than :func:`kv_cache_tolerance`; the message names the installed versions
            and what to do.
    """
    error, tolerance = kv_cache_error(model), kv_cache_tolerance(model)
    if error <= tolerance:
        return
    raise KVCacheError(
        f"KV-cached continuation is wrong on this model ({stack_versions()}): cached next-token logits differ from "
        f"the full forward pass by {error:.3g} (tolerance {tolerance:.1g}). Generation and PatchScope results would "
        "be wrong. Install the tested versions (`pip install -c constraints.txt ...`, see the README's 'Tested "
        "versions'), or pass check_kv_cache=False to load_model to skip this check at your own risk, and report it."
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
