"""The logit lens: decode a residual-stream state with the model's own final norm and unembedding."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge


def logit_lens(
    model: TransformerBridge, resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """Logits from ``ln_final`` then ``unembed`` applied to ``resid`` (any leading shape).

    Applied to ``blocks.{L-1}.hook_resid_post`` this gives the model's own logits: no special case is
    needed at the last layer, because TransformerLens' resid_post is taken before the final norm.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        return model.unembed(model.ln_final(resid.to(device=device, dtype=dtype)))
