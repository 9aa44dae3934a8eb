"""Absolute token positions across the forward passes of one generation, as a hook sees them.

A hook sees one tensor per pass and no token indices. TransformerLens' ``generate`` makes a prompt pass, then either
one-position passes that continue it from the KV cache (``use_past_kv_cache=True``) or passes over the whole sequence
so far (``use_past_kv_cache=False``). :class:`SequencePositions` tells them apart: a one-position pass continues the
sequence; a longer pass that extends it, with the same residual at the prompt's last position (which, in a causal
model, depends on the whole prompt and nothing after it), recomputes it from position 0; any other pass starts a new
sequence, whose prompt is that pass.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class SequencePositions:
    """Where each pass a hook sees sits in its sequence: :meth:`advance` returns the absolute position of the pass'
    first row; :attr:`prompt_length` is the length of the sequence's first pass."""

    def __init__(self) -> None:
        self.length = 0
        self.prompt_length = 0
        self._anchor: Tensor | None = None

    def advance(self, resid: Float[Tensor, "batch pos d_model"]) -> int:
        """Place this pass (the activation the hook sees, before any change the hook makes) and return its start."""
        passed = resid.shape[1]
        if passed == 1 and self.length > 0:
            self.length += 1
            return self.length - 1
        if passed > self.length and self._continues(resid):
            self.length = passed
            return 0
        self.length = self.prompt_length = passed
        self._anchor = resid[:, passed - 1].detach().float().clone()
        return 0

    def reset(self) -> None:
        """Forget the sequence (the next pass starts a new one)."""
        self.length = self.prompt_length = 0
        self._anchor = None

    def _continues(self, resid: Tensor) -> bool:
        if self._anchor is None or resid.shape[0] != self._anchor.shape[0]:
            return False
        again = resid[:, self.prompt_length - 1].detach().float()
        scale = self._anchor.abs().max().clamp_min(1e-6)
        return bool(torch.allclose(again, self._anchor.to(again.device), rtol=1e-4, atol=1e-4 * float(scale)))
