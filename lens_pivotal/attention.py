"""Run attention through Hugging Face's fused SDPA kernels while no attention hook needs the bridge's own.

TransformerLens' bridge re-implements attention step by step in eager mode so that hooks such as
``hook_pattern`` and ``hook_attn_scores`` can fire. Work that reads only the residual stream does not need
that: inside :func:`sdpa_attention` each block's attention calls the HF module it wraps (whose q/k/v/o
projections are still the bridge's hooked linears) with ``attn_implementation="sdpa"``. Hooks on the
residual stream, the MLPs and the norms fire as usual. If any hook is attached inside an attention
module, the bridge path is kept, so a user's attention hook is never silently skipped.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge


def _attention_modules(model: TransformerBridge) -> list[nn.Module]:
    return [block.attn for block in getattr(model, "blocks", []) if hasattr(block, "attn")]


def _has_hooks(module: nn.Module) -> bool:
    return any(
        isinstance(point, HookPoint) and (point._forward_hooks or point._backward_hooks or point._forward_pre_hooks)
        for point in module.modules()
    )


def sdpa_available(model: TransformerBridge) -> bool:
    """Whether :func:`sdpa_attention` would switch kernels: SDPA support and no hook inside any attention."""
    hf_model = getattr(model, "original_model", None)
    attentions = _attention_modules(model)
    return (
        bool(getattr(hf_model, "_supports_sdpa", False))
        and bool(attentions)
        and all(getattr(attn, "original_component", None) is not None for attn in attentions)
        and not any(_has_hooks(attn) for attn in attentions)
    )


@contextlib.contextmanager
def sdpa_attention(model: TransformerBridge) -> Iterator[bool]:
    """Inside the block, attention uses HF's SDPA kernels when :func:`sdpa_available`; yields whether it does.

    The switch is undone on exit, even after an exception.
    """
    if not sdpa_available(model):
        yield False
        return
    config = model.original_model.config
    previous = config._attn_implementation
    attentions = _attention_modules(model)
    config._attn_implementation = "sdpa"
    # object.__setattr__ because bridge components forward attribute writes to the module they wrap
    for attn in attentions:
        object.__setattr__(attn, "forward", attn.original_component.forward)
    try:
        yield True
    finally:
        config._attn_implementation = previous
        for attn in attentions:
            object.__delattr__(attn, "forward")
