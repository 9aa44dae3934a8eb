"""Run hook-free parts of each block through the Hugging Face modules the bridge wraps.

TransformerLens' bridge re-implements attention step by step in eager mode, and wraps MLPs and norms,
so that every internal hook (``hook_pattern``, ``mlp.hook_post``, ``ln1.hook_scale``, ...) can fire. Work
that reads only the residual stream does not need that. Inside :func:`hf_fast_path`:

- attention runs through HF's own module with ``attn_implementation="sdpa"`` (fused kernels), unless a
  hook is attached inside ANY attention module (the mask HF builds depends on that choice, so it is all
  or nothing);
- each MLP and each RMSNorm with no hook inside runs its HF module's forward.

The q/k/v/o and MLP projections stay the bridge's hooked linears and the residual-stream hooks fire as
usual, so results equal the bridge path up to float rounding (tested), and a user's hook inside a block
is never silently skipped: the module holding it keeps the bridge path.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn
from transformer_lens.model_bridge.generalized_components import JointQKVAttentionBridge
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

# Norm bridges are swapped only for RMSNorm: compatibility mode folds RMSNorm weights into the next
# matrices and sets the HF weight to one, so the HF forward is exact; LayerNorm folding also centres.
_SWAPPABLE_NORM_CLASSES = ("RMSNormalizationBridge",)


def _has_hooks(module: nn.Module) -> bool:
    return any(
        isinstance(point, HookPoint) and (point._forward_hooks or point._backward_hooks or point._forward_pre_hooks)
        for point in module.modules()
    )


def _wraps_hf(module: nn.Module | None) -> bool:
    return module is not None and getattr(module, "original_component", None) is not None


def _attentions(model: TransformerBridge) -> list[nn.Module]:
    return [block.attn for block in getattr(model, "blocks", []) if hasattr(block, "attn")]


def _sdpa_possible(model: TransformerBridge) -> bool:
    attentions = _attentions(model)
    return (
        bool(getattr(getattr(model, "original_model", None), "_supports_sdpa", False))
        and bool(attentions)
        and all(_wraps_hf(attn) for attn in attentions)
        and not any(_has_hooks(attn) for attn in attentions)
        # A fused q/k/v projection (GPT-2's c_attn, GPT-NeoX's query_key_value) is split by TransformerLens, which folds
        # only the split copies: HF's own module would run the raw weight.
        and not any(isinstance(attn, JointQKVAttentionBridge) for attn in attentions)
    )


def _swappable_parts(model: TransformerBridge) -> list[nn.Module]:
    parts = []
    for block in getattr(model, "blocks", []):
        norms = [getattr(block, name, None) for name in ("ln1", "ln2")]
        parts += [norm for norm in norms if type(norm).__name__ in _SWAPPABLE_NORM_CLASSES]
        parts.append(getattr(block, "mlp", None))
    return [part for part in parts if _wraps_hf(part) and not _has_hooks(part)]


def _active(model: TransformerBridge) -> bool:
    return any("forward" in vars(module) for block in getattr(model, "blocks", []) for module in block.children())


@contextlib.contextmanager
def hf_fast_path(model: TransformerBridge) -> Iterator[bool]:
    """Inside the block, hook-free attention, MLPs and RMSNorms run as HF modules; yields whether SDPA is on.

    Everything is switched back on exit, even after an exception; nested uses leave it to the outermost.
    """
    if _active(model):
        yield model.original_model.config._attn_implementation == "sdpa"
        return
    use_sdpa = _sdpa_possible(model)
    swapped = _swappable_parts(model) + (_attentions(model) if use_sdpa else [])
    config = model.original_model.config
    previous = config._attn_implementation
    if use_sdpa:
        config._attn_implementation = "sdpa"
    # object.__setattr__ because bridge components forward attribute writes to the module they wrap
    for module in swapped:
        object.__setattr__(module, "forward", module.original_component.forward)
    try:
        yield use_sdpa
    finally:
        config._attn_implementation = previous
        for module in swapped:
            object.__delattr__(module, "forward")
