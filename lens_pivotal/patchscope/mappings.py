"""The mapping ``f`` of a patchscope beyond the affine map of :mod:`lens_pivotal.lenses`: norm matching.

A mapping is any callable from ``[..., d_source]`` to ``[..., d_target]`` tensors; ``None`` means the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.lenses import AffineMap
from lens_pivotal.resid.cache import cache_resid_post


@dataclass
class NormMatch:
    """Rescale each vector to ``norm`` (e.g. the typical norm of the target layer), then apply ``then``.

    Useful when source and target layers (or models) have residual streams of very different scales.
    """

    norm: float
    then: AffineMap | None = None

    def __call__(self, vectors: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Scale every vector to ``self.norm`` (after ``then`` when given)."""
        mapped = self.then(vectors) if self.then is not None else vectors
        return mapped * (self.norm / mapped.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @classmethod
    def from_model(
        cls, model: TransformerBridge, layer: int, texts: Sequence[str], *, then: AffineMap | None = None
    ) -> NormMatch:
        """Match the mean ``resid_post`` norm of ``layer`` over the last token of ``texts``."""
        states = cache_resid_post(model, list(texts), [-1] * len(texts), layers=[layer], progress=False)[0]
        return cls(float(states.norm(dim=-1).mean()), then)
